"""Plain-loop fp64 references for the kernels: slow, obvious, independent of the implementations under test."""

import torch


def gla_loop(q, k, v, g, scale=None, initial_state=None):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t, token by token in fp64."""
    q, k, v, g = (x.double() for x in (q, k, v, g))
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=torch.float64) if initial_state is None else initial_state.double().clone()
    outs = []
    for t in range(T):
        S = torch.exp(g[:, t]).unsqueeze(-1) * S + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(outs, 1), S


def swa_loop(q, k, v, window, sinks=None, scale=None, key_mask=None):
    """Sliding-window softmax attention query by query in fp64 (differentiable). q [B, T, H, D]; k, v [B, L, Hkv, D]
    (queries align with the last T keys); the query at absolute position t sees keys j with t - window < j <= t and
    key_mask[b, j]; sinks [H] or [H, M] add exp(sink) to the denominator. A query seeing nothing outputs zeros."""
    q, k, v = (x.double() for x in (q, k, v))
    B, T, H, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    rows = []
    for b in range(B):
        heads = []
        for h in range(H):
            kv_h = h // (H // Hkv)
            sink = None if sinks is None else sinks.double()[h].reshape(-1)
            outs = []
            for i in range(T):
                t = L - T + i
                js = [j for j in range(max(0, t - window + 1), t + 1) if key_mask is None or bool(key_mask[b, j])]
                logits = [q[b, i, h] @ k[b, j, kv_h] * scale for j in js]
                if sink is not None:
                    logits += list(sink)
                if not js:
                    outs.append(torch.zeros(D, dtype=torch.float64))
                    continue
                p = torch.softmax(torch.stack(logits), 0)[: len(js)]
                outs.append((p[:, None] * v[b, js, kv_h]).sum(0))
            heads.append(torch.stack(outs))
        rows.append(torch.stack(heads, 1))
    return torch.stack(rows)


def linear_scan_loop(a, b, initial_state=None, reverse=False):
    """h_t = a_t * h_{t-1} + b_t over dim 1 of [B, T, D] (reverse: h_t = a_t * h_{t+1} + b_t), step by step in fp64."""
    a, b = a.double(), b.double()
    h = torch.zeros_like(b[:, 0]) if initial_state is None else initial_state.double()
    out = [None] * b.shape[1]
    for t in reversed(range(b.shape[1])) if reverse else range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[t] = h
    return torch.stack(out, 1)


def block2_scan_loop(A, b, initial_state=None, reverse=False):
    """h_t = A_t @ h_{t-1} + b_t with A [B, T, D, 2, 2], b [B, T, D, 2], step by step in fp64."""
    A, b = A.double(), b.double()
    h = torch.zeros_like(b[:, 0]) if initial_state is None else initial_state.double()
    out = [None] * b.shape[1]
    for t in reversed(range(b.shape[1])) if reverse else range(b.shape[1]):
        h = torch.einsum("bdij,bdj->bdi", A[:, t], h) + b[:, t]
        out[t] = h
    return torch.stack(out, 1)


def recurrence_loop(step, x, params, h0):
    """h_t = step(h_{t-1}, x_t, *params) one step at a time (step sees [B, 1, ...] slices); autograd flows through."""
    h, out = h0, []
    for t in range(x.shape[1]):
        h = step(h.unsqueeze(1), x[:, t : t + 1], *params).squeeze(1)
        out.append(h)
    return torch.stack(out, 1)


def mamba2_loop(u, w, n_groups, head_dim, d_state, d_conv, eps, time_step_limit=(0.0, float("inf"))):
    """Mamba-2 mixer token by token in fp64, from the weight tensors alone (transformers' names, in ``w``):
    in_proj -> (z, xBC, dt); causal depthwise conv + SiLU on xBC -> (x, B, C); dt = softplus(dt + dt_bias) clamped;
    S_t = exp(dt A) S_{t-1} + B_t^T (dt x_t) per head, y_t = C_t S_t + D x_t; y * silu(z), RMS per group, norm
    weight; out_proj. u [B, T, hidden]. Returns (out [B, T, hidden], final state [B, H, d_state, head_dim])."""
    u = u.double()
    w = {name: (t.double() if t is not None else None) for name, t in w.items()}
    Bsz, T, _ = u.shape
    H = w["A_log"].shape[0]
    d_inner, N, G = H * head_dim, d_state, n_groups
    conv_dim = d_inner + 2 * G * N
    proj = u @ w["in_proj.weight"].T
    if w.get("in_proj.bias") is not None:
        proj = proj + w["in_proj.bias"]
    z, xBC, dt_raw = proj[..., :d_inner], proj[..., d_inner : d_inner + conv_dim], proj[..., d_inner + conv_dim :]
    cw = w["conv1d.weight"][:, 0, :]  # [conv_dim, d_conv]
    conv_out = []
    for t in range(T):
        acc = torch.zeros(Bsz, conv_dim, dtype=torch.float64)
        if w.get("conv1d.bias") is not None:
            acc = acc + w["conv1d.bias"]
        for j in range(d_conv):  # tap j reads the input d_conv-1-j steps back
            s = t - (d_conv - 1) + j
            if s >= 0:
                acc = acc + cw[:, j] * xBC[:, s]
        conv_out.append(acc * torch.sigmoid(acc))
    xBC = torch.stack(conv_out, 1)
    x = xBC[..., :d_inner].reshape(Bsz, T, H, head_dim)
    Bm = xBC[..., d_inner : d_inner + G * N].reshape(Bsz, T, G, N)
    Cm = xBC[..., d_inner + G * N :].reshape(Bsz, T, G, N)
    dt = torch.log1p(torch.exp(dt_raw + w["dt_bias"])).clamp(time_step_limit[0], time_step_limit[1])
    A = -torch.exp(w["A_log"])
    per_group = H // G
    S = torch.zeros(Bsz, H, N, head_dim, dtype=torch.float64)
    ys = []
    for t in range(T):
        heads, new_S = [], []
        for h in range(H):
            grp = h // per_group
            decay = torch.exp(dt[:, t, h] * A[h])[:, None, None]
            Sh = decay * S[:, h] + Bm[:, t, grp][:, :, None] * (dt[:, t, h, None] * x[:, t, h])[:, None, :]
            new_S.append(Sh)
            heads.append(torch.einsum("bn,bnp->bp", Cm[:, t, grp], Sh) + w["D"][h] * x[:, t, h])
        S = torch.stack(new_S, 1)
        ys.append(torch.stack(heads, 1).reshape(Bsz, d_inner))
    y = torch.stack(ys, 1) * (z * torch.sigmoid(z))
    yg = y.reshape(Bsz, T, G, d_inner // G)
    yg = yg / torch.sqrt((yg * yg).mean(-1, keepdim=True) + eps)
    y = yg.reshape(Bsz, T, d_inner) * w["norm.weight"]
    out = y @ w["out_proj.weight"].T
    if w.get("out_proj.bias") is not None:
        out = out + w["out_proj.bias"]
    return out, S
