"""Plain-loop fp64 references for the kernels: slow, obvious, independent of the implementations under test."""
import torch


def gla_loop(q, k, v, g, scale=None, initial_state=None):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t, token by token in fp64."""
    q, k, v, g = (x.double() for x in (q, k, v, g))
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
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
    scale = D ** -0.5 if scale is None else scale
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
