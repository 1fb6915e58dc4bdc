"""fp64 references for H-Net's layers, written from the paper's equations, row by row.

They read the weights of the modules under test but never call their forward passes or the helpers those use
(routing, down/upsampling, EMA, rotary): the sub-networks of a stage (encoder, main network, decoder stacks) are
the only modules called, as black boxes, on one unpadded row at a time.
"""

import math

import torch


def rotary_loop(x, positions, rotary_dim, theta=10000.0):
    """GPT-NeoX-style rotary embedding on the first ``rotary_dim`` channels: x ``[T, H, D]``, positions ``[T]``."""
    if rotary_dim == 0:
        return x
    half = rotary_dim // 2
    out = x.clone()
    for t in range(x.shape[0]):
        for i in range(half):
            freq = theta ** (-2 * i / rotary_dim)
            angle = float(positions[t]) * freq
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[t, :, i], x[t, :, i + half]
            out[t, :, i] = a * c - b * s
            out[t, :, i + half] = b * c + a * s
    return out


def attention_loop(attn, x, window=None):
    """Causal softmax attention of one row ``x [T, d]`` (no padding) from ``attn``'s weights, query by query."""
    W = {n: getattr(attn, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    x = x.double()
    T, d = x.shape
    H = attn.num_heads
    D = d // H
    q = (x @ W["q_proj"].T).view(T, H, D)
    k = (x @ W["k_proj"].T).view(T, H, D)
    v = (x @ W["v_proj"].T).view(T, H, D)
    pos = torch.arange(T)
    theta = float(attn.rotary_emb.config.rope_parameters["rope_theta"]) if attn.rotary_emb is not None else 10000.0
    q, k = rotary_loop(q, pos, attn.rotary_dim, theta), rotary_loop(k, pos, attn.rotary_dim, theta)
    out = torch.zeros(T, H, D, dtype=torch.float64)
    for t in range(T):
        lo = 0 if window is None else max(0, t - window + 1)
        for h in range(H):
            logits = torch.stack([q[t, h] @ k[j, h] / math.sqrt(D) for j in range(lo, t + 1)])
            w = torch.softmax(logits, 0)
            out[t, h] = sum(w[i] * v[lo + i, h] for i in range(len(w)))
    return out.reshape(T, d) @ W["o_proj"].T


def hnet_stage_loop(stage, x):
    """One H-Net stage on one row ``x [T, d_parent]`` (fp64), following the paper:
    pad the width, encoder, p_t = (1 - cos(Wq xh_{t-1}, Wk xh_t)) / 2 (p_0 = 1), b_t = p_t > 0.5, chunks = the
    boundary tokens, inner network (recursively), zbar_j = P_j z_j + (1 - P_j) zbar_{j-1} with P = clamp(p, 1e-4,
    1 - 1e-4), token t gets zbar of the last chunk started at or before t, times 1 (the straight-through estimator is
    1 in the forward pass), plus residual_proj(xh_t); decoder; slice the width back."""
    T, width = x.shape
    h = x.double()
    if stage.pad_dimension is not None:
        h = torch.cat([h, stage.pad_dimension.double().expand(T, -1)], -1)
    if stage.is_innermost:
        return stage.main_network(h[None], None, None)[0][:, :width]
    xh = stage.encoder(h[None], None, None)[0]
    Wq, Wk = stage.routing_module.q_proj_layer.weight.double(), stage.routing_module.k_proj_layer.weight.double()
    p = [1.0]
    for t in range(1, T):
        a, b = Wq @ xh[t - 1], Wk @ xh[t]
        cos = float(a @ b / (a.norm() * b.norm()))
        p.append(min(1.0, max(0.0, (1 - cos) / 2)))
    starts = [t for t in range(T) if p[t] > 0.5]
    z = hnet_stage_loop(stage.main_network, xh[starts])
    zbar, prev = [], torch.zeros(xh.shape[-1], dtype=torch.float64)
    for j, t in enumerate(starts):
        P = min(1 - 1e-4, max(1e-4, p[t]))
        prev = P * z[j] + (1 - P) * prev
        zbar.append(prev)
    Wr, br = stage.residual_proj.weight.double(), stage.residual_proj.bias.double()
    rows, j = [], -1
    for t in range(T):
        if p[t] > 0.5:
            j += 1
        rows.append(zbar[j] + Wr @ xh[t] + br)
    out = stage.decoder(torch.stack(rows)[None], None, None)[0]
    return out[:, :width]


def boundary_probs_loop(stage, x):
    """The routing probabilities of a stage's input row ``x [T, d_parent]`` (as in :func:`hnet_stage_loop`)."""
    T = x.shape[0]
    h = x.double()
    if stage.pad_dimension is not None:
        h = torch.cat([h, stage.pad_dimension.double().expand(T, -1)], -1)
    xh = stage.encoder(h[None], None, None)[0]
    Wq, Wk = stage.routing_module.q_proj_layer.weight.double(), stage.routing_module.k_proj_layer.weight.double()
    p = [1.0]
    for t in range(1, T):
        a, b = Wq @ xh[t - 1], Wk @ xh[t]
        p.append(min(1.0, max(0.0, (1 - float(a @ b / (a.norm() * b.norm()))) / 2)))
    return torch.tensor(p, dtype=torch.float64)
