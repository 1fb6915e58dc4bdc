"""fp64 references for the GLA and Liger token mixers, recomputed from their weights with the papers' equations,
token by token. They read the modules' parameters and never call their forward passes, the kernels or helpers."""

import math

import torch
from reference_hnet import rotary_loop


def _silu(x):
    return x * torch.sigmoid(x)


def _causal_conv_silu(x, weight):
    """Depthwise causal convolution over time then SiLU: x [T, C], weight [C, 1, W]."""
    T, C = x.shape
    W = weight.shape[-1]
    out = torch.zeros_like(x)
    for t in range(T):
        for i in range(W):  # tap i multiplies x[t - (W - 1) + i]
            s = t - (W - 1) + i
            if s >= 0:
                out[t] += weight[:, 0, i] * x[s]
    return _silu(out)


def _gla_recurrence(q, k, v, g, scale):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t per head: q, k, g [T, H, K], v [T, H, V]."""
    T, H, K = q.shape
    S = torch.zeros(H, K, v.shape[-1], dtype=torch.float64)
    out = []
    for t in range(T):
        S = torch.exp(g[t])[..., None] * S + k[t][..., None] * v[t][:, None, :]
        out.append(torch.einsum("hk,hkv->hv", q[t] * scale, S))
    return torch.stack(out)


def gla_layer_loop(layer, x):
    """The GLA token mixer (Yang et al., 2023) on one row ``x [T, d]``: projections, optional short convolutions,
    the low-rank gate ``logsigmoid(W2 W1 x + b2) / normalizer``, the recurrence, the per-head RMSNorm gated by
    ``swish(x W_g)`` and the output projection."""
    x = x.double()
    T = x.shape[0]
    H, K, V = layer.num_heads, layer.head_k_dim, layer.head_v_dim
    w = lambda m: m.weight.double()  # noqa: E731
    q, k, v = x @ w(layer.q_proj).T, x @ w(layer.k_proj).T, x @ w(layer.v_proj).T
    if layer.use_short_conv:
        q = _causal_conv_silu(q, layer.q_conv.conv.weight.double())
        k = _causal_conv_silu(k, layer.k_conv.conv.weight.double())
        v = _causal_conv_silu(v, layer.v_conv.conv.weight.double())
    low, high = layer.gk_proj[0], layer.gk_proj[1]
    g = torch.nn.functional.logsigmoid((x @ w(low).T) @ w(high).T + high.bias.double()) / layer.gate_logit_normalizer
    o = _gla_recurrence(q.view(T, H, K), k.view(T, H, K), v.view(T, H, V), g.view(T, H, K), K**-0.5)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.g_norm.variance_epsilon) * layer.g_norm.weight.double()
    o = o * _silu((x @ w(layer.g_proj).T).view(T, H, V))
    return o.reshape(T, H * V) @ w(layer.o_proj).T


def liger_attention_loop(attn, x, rope_theta=10000.0):
    """Liger attention (Lan et al., 2025) on one row ``x [T, d]``: ``w * GLA(softmax(q), softmax(k), v, g) +
    (1 - w) * SWA(RoPE q, RoPE k, v)`` with ``g = logsigmoid(k) / normalizer`` from the pretrained key projection,
    grouped-query heads shared by both branches, window ``t - window < j <= t``."""
    x = x.double()
    T = x.shape[0]
    H, Hkv, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    w = lambda m: m.weight.double()  # noqa: E731
    b = lambda m: 0 if m.bias is None else m.bias.double()  # noqa: E731
    q = (x @ w(attn.q_proj).T + b(attn.q_proj)).view(T, H, D)
    k = (x @ w(attn.k_proj).T + b(attn.k_proj)).view(T, Hkv, D)
    v = (x @ w(attn.v_proj).T + b(attn.v_proj)).view(T, Hkv, D)
    group = H // Hkv
    kh, vh = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    out = 0
    if attn.gla_weight != 0:
        g = torch.nn.functional.logsigmoid(kh) / attn.gate_logit_normalizer
        scale = D**-0.5 if attn.gla_scale is None else attn.gla_scale
        out = attn.gla_weight * _gla_recurrence(q.softmax(-1), kh.softmax(-1), vh, g, scale)
    if attn.gla_weight != 1:
        pos = torch.arange(T)
        qr, kr = rotary_loop(q, pos, D, rope_theta), rotary_loop(kh, pos, D, rope_theta)
        swa = torch.zeros(T, H, D, dtype=torch.float64)
        for t in range(T):
            lo = max(0, t - attn.window_size + 1)
            for h in range(H):
                p = torch.softmax(torch.stack([qr[t, h] @ kr[j, h] / math.sqrt(D) for j in range(lo, t + 1)]), 0)
                swa[t, h] = sum(p[i] * vh[lo + i, h] for i in range(len(p)))
        out = out + (1 - attn.gla_weight) * swa
    return out.reshape(T, H * D) @ w(attn.o_proj).T + b(attn.o_proj)


def lizard_attention_loop(attn, x, rope_theta=10000.0):
    """Lizard attention on one row ``x [T, d]``: ``GLA(phi_q, phi_k, v, g) + window_weight[h] * SWA_sinks(RoPE q,
    RoPE k, v)`` with Hedgehog maps ``phi(x) = [softmax(x W_h), softmax(-x W_h)]``, one log gate per head and
    position ``logsigmoid(x W_g + b) / normalizer`` shared by the features, and sink logits adding ``exp(s)`` to the
    window's softmax denominator."""
    x = x.double()
    T = x.shape[0]
    H, Hkv, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    w = lambda m: m.weight.double()  # noqa: E731
    b = lambda m: 0 if m.bias is None else m.bias.double()  # noqa: E731
    q = (x @ w(attn.q_proj).T + b(attn.q_proj)).view(T, H, D)
    k = (x @ w(attn.k_proj).T + b(attn.k_proj)).view(T, Hkv, D)
    v = (x @ w(attn.v_proj).T + b(attn.v_proj)).view(T, Hkv, D)
    group = H // Hkv

    def hedgehog(z, W):
        proj = torch.einsum("thd,hdf->thf", z, W.double())
        return torch.cat([proj.softmax(-1), (-proj).softmax(-1)], -1)

    phi_q = hedgehog(q, attn.q_feature_map.weight)
    phi_k = hedgehog(k, attn.k_feature_map.weight).repeat_interleave(group, 1)
    vh = v.repeat_interleave(group, 1)
    g = torch.nn.functional.logsigmoid(x @ w(attn.decay_proj).T + b(attn.decay_proj)) / attn.gate_logit_normalizer
    g = g[..., None].expand(T, H, phi_q.shape[-1])
    scale = phi_q.shape[-1] ** -0.5 if attn.gla_scale is None else attn.gla_scale
    o_gla = _gla_recurrence(phi_q, phi_k, vh, g, scale)
    pos = torch.arange(T)
    qr, kr = rotary_loop(q, pos, D, rope_theta), rotary_loop(k.repeat_interleave(group, 1), pos, D, rope_theta)
    sinks = attn.sink_logits.double()
    o_win = torch.zeros(T, H, D, dtype=torch.float64)
    for t in range(T):
        lo = max(0, t - attn.window_size + 1)
        for h in range(H):
            logits = torch.stack([qr[t, h] @ kr[j, h] / math.sqrt(D) for j in range(lo, t + 1)])
            weights = torch.exp(logits) / (torch.exp(logits).sum() + torch.exp(sinks[h]).sum())
            o_win[t, h] = sum(weights[i] * vh[lo + i, h] for i in range(len(weights)))
    o = o_gla + attn.window_weight.double()[None, :, None] * o_win
    return o.reshape(T, H * D) @ w(attn.o_proj).T + b(attn.o_proj)


def _sig(x):
    return 1 / (1 + torch.exp(-x))


def paragru_loop(cell, x):
    """ParaGRU (ParaRNN paper) step by step from the cell's weights, ``x [T, d]``: ``in_proj`` rows are the input
    terms of (z, r, c), ``a`` rows the diagonals (a_z, a_r, a_c). Returns the states ``[T, D]``."""
    W, bias, a = cell.in_proj.weight.double(), cell.in_proj.bias.double(), cell.a.double()
    D = cell.state_size
    h, out = torch.zeros(D, dtype=torch.float64), []
    for t in range(x.shape[0]):
        u = W @ x[t].double() + bias
        z = _sig(a[0] * h + u[:D])
        r = _sig(a[1] * h + u[D : 2 * D])
        c = torch.tanh(a[2] * (h * r) + u[2 * D :])
        h = (1 - z) * h + z * c
        out.append(h)
    return torch.stack(out)


def paralstm_loop(cell, x):
    """ParaLSTM (coupled input-forget gate, peepholes) step by step: ``in_proj`` rows the input terms of (f, z, o),
    ``a`` rows (a_f, a_z, a_o, p_f, p_o). Returns the states ``[T, D, 2]`` as ``[c, h]``."""
    W, bias, a = cell.in_proj.weight.double(), cell.in_proj.bias.double(), cell.a.double()
    D = cell.state_size
    c, h, out = torch.zeros(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64), []
    for t in range(x.shape[0]):
        u = W @ x[t].double() + bias
        f = _sig(a[0] * h + u[:D] + a[3] * c)
        z = torch.tanh(a[1] * h + u[D : 2 * D])
        c = f * c + (1 - f) * z
        o = _sig(a[2] * h + u[2 * D :] + a[4] * c)
        h = o * torch.tanh(c)
        out.append(torch.stack([c, h], -1))
    return torch.stack(out)
