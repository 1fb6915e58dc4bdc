"""Sliding-window softmax attention with optional sink logits, in plain PyTorch (every device).

Blocked form: queries are cut into blocks of ``w`` (the window); the keys a block can see lie in its own key
block and the one before, so each block scores ``w x 2w`` pairs and the cost is linear in the sequence length.
The band mask keeps key ``j`` for query ``t`` when ``t - w < j <= t``. Backward is explicit: it recomputes the
scores from the saved log-normalizers (one fp32 number per query) instead of storing the probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _layout(q, k, window):
    B, T, H, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    nb = math.ceil(T / window)
    return B, T, H, D, L, Hkv, H // Hkv, nb


def _key_spans(x, T, window, nb, fill=0.0):
    """[B, L, ...] (queries aligned with the last T keys) -> [B, nb + 1, w, ...] key blocks in padded coordinates:
    block ``b`` and ``b + 1`` hold the keys query block ``b`` can see."""
    L = x.shape[1]
    start = L - T - window  # absolute index of the first key of padded block 0
    x = x[:, max(start, 0) :]
    pad_front, pad_back = max(-start, 0), nb * window - T
    if pad_front or pad_back:
        pad = [0, 0] * (x.dim() - 2) + [pad_front, pad_back]
        x = F.pad(x, pad, value=fill)
    return x.reshape(x.shape[0], nb + 1, window, *x.shape[2:])


def _scores(q, k, key_mask, window, scale, dt, seg=None):
    """Returns query blocks [B, Hkv, G, nb, w, D], key spans [B, Hkv, nb, 2w, D], masked scores [.., w, 2w]."""
    B, T, H, D, L, Hkv, G, nb = _layout(q, k, window)
    qb = F.pad(q.to(dt), (0, 0, 0, 0, 0, nb * window - T)).reshape(B, nb, window, Hkv, G, D)
    qb = qb.permute(0, 3, 4, 1, 2, 5)  # [B, Hkv, G, nb, w, D]
    kb = _key_spans(k.to(dt), T, window, nb).permute(0, 3, 1, 2, 4)  # [B, Hkv, nb + 1, w, D]
    kspan = torch.cat([kb[:, :, :-1], kb[:, :, 1:]], dim=-2)  # [B, Hkv, nb, 2w, D]
    valid = key_mask if key_mask is not None else torch.ones(B, L, dtype=torch.bool, device=q.device)
    vb = _key_spans(valid, T, window, nb, fill=False)  # [B, nb + 1, w]
    vspan = torch.cat([vb[:, :-1], vb[:, 1:]], dim=-1)  # [B, nb, 2w]
    i = torch.arange(window, device=q.device)[:, None]
    j = torch.arange(2 * window, device=q.device)[None, :]
    band = (j > i) & (j <= i + window)  # query i of the block sits at span index i + w
    allowed = band & vspan[:, None, None, :, None, :]  # [B, 1, 1, nb, w, 2w]
    if seg is not None:  # packed sequences (L == T): a query sees only keys of its own sequence
        qs = F.pad(seg, (0, nb * window - T), value=-1).reshape(B, nb, window)
        ks = _key_spans(seg, T, window, nb, fill=-2)
        kspan_seg = torch.cat([ks[:, :-1], ks[:, 1:]], dim=-1)  # [B, nb, 2w]
        allowed = allowed & (qs[..., :, None] == kspan_seg[..., None, :])[:, None, None]
    S = (qb * scale) @ kspan.unsqueeze(2).transpose(-1, -2)
    return qb, kspan, S.masked_fill(~allowed, float("-inf"))


def _value_spans(v, T, window, nb, dt):
    vb = _key_spans(v.to(dt), T, window, nb).permute(0, 3, 1, 2, 4)
    return torch.cat([vb[:, :, :-1], vb[:, :, 1:]], dim=-2)


def _from_blocks(x, T):
    """[B, Hkv, G, nb, w, D] -> [B, T, H, D]."""
    B, Hkv, G, nb, w, D = x.shape
    return x.permute(0, 3, 4, 1, 2, 5).reshape(B, nb * w, Hkv * G, D)[:, :T]


def _fold_spans(dspan, L, T, window):
    """Gradient w.r.t. key spans [B, Hkv, nb, 2w, D] -> gradient w.r.t. the keys [B, L, Hkv, D]."""
    B, Hkv, nb, _, D = dspan.shape
    dkb = dspan.new_zeros(B, Hkv, nb + 1, window, D)
    dkb[:, :, :-1] += dspan[..., :window, :]
    dkb[:, :, 1:] += dspan[..., window:, :]
    dk = dkb.reshape(B, Hkv, (nb + 1) * window, D).transpose(1, 2)  # padded coordinates
    start = L - T - window
    dk = dk[:, max(-start, 0) : (nb + 1) * window - (nb * window - T)]
    if start > 0:
        dk = F.pad(dk, (0, 0, 0, 0, start, 0))
    return dk


class SlidingWindowAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sinks, key_mask, window, scale, seg=None):
        from .._dispatch import compute_dtype

        dt = compute_dtype(q, k, v, sinks)
        B, T, H, D, L, Hkv, G, nb = _layout(q, k, window)
        _, _, S = _scores(q, k, key_mask, window, scale, dt, seg)
        m = S.amax(-1)
        if sinks is not None:
            sink = sinks.to(dt).reshape(1, Hkv, G, 1, 1)
            m = torch.maximum(m, sink)
        m = m.masked_fill(torch.isinf(m), 0.0)  # rows that see nothing: output 0, no NaN
        p = torch.exp(S - m.unsqueeze(-1))
        Z = p.sum(-1)
        if sinks is not None:
            Z = Z + torch.exp(sink - m)
        Z = Z.clamp_min(torch.finfo(dt).tiny)
        o = (p @ _value_spans(v, T, window, nb, dt).unsqueeze(2)) / Z.unsqueeze(-1)
        lse = m + torch.log(Z)
        ctx.save_for_backward(q, k, v, sinks, key_mask, o, lse)
        ctx.window, ctx.scale, ctx.seg = window, scale, seg
        return _from_blocks(o, T).to(q.dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, sinks, key_mask, o, lse = ctx.saved_tensors
        window, scale, dt = ctx.window, ctx.scale, o.dtype
        B, T, H, D, L, Hkv, G, nb = _layout(q, k, window)
        qb, kspan, S = _scores(q, k, key_mask, window, scale, dt, ctx.seg)
        vspan = _value_spans(v, T, window, nb, dt)
        p = torch.exp(S - lse.unsqueeze(-1))
        dob = F.pad(do.to(dt), (0, 0, 0, 0, 0, nb * window - T)).reshape(B, nb, window, Hkv, G, D)
        dob = dob.permute(0, 3, 4, 1, 2, 5)
        delta = (dob * o).sum(-1)  # [B, Hkv, G, nb, w]
        dvspan = torch.einsum("bhgnij,bhgnid->bhnjd", p, dob)
        dS = p * (dob @ vspan.unsqueeze(2).transpose(-1, -2) - delta.unsqueeze(-1))
        dq = (dS @ kspan.unsqueeze(2)) * scale
        dkspan = torch.einsum("bhgnij,bhgnid->bhnjd", dS, qb) * scale
        dk, dv = _fold_spans(dkspan, L, T, window), _fold_spans(dvspan, L, T, window)
        dsinks = None
        if sinks is not None and ctx.needs_input_grad[3]:
            p_sink = torch.exp(sinks.to(dt).reshape(1, Hkv, G, 1, 1) - lse)
            dsinks = -(p_sink * delta).sum((0, 3, 4)).reshape(H).to(sinks.dtype)
        return _from_blocks(dq, T).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dsinks, None, None, None, None


def sliding_window_attention_torch(q, k, v, window, sinks=None, scale=None, key_mask=None, seg=None):
    """``seg`` [B, T] (int, only when L == T): the packed sequence of each token; attention stays inside one."""
    return SlidingWindowAttentionFunction.apply(q, k, v, sinks, key_mask, window, scale, seg)


def sliding_window_decode_torch(q, k_cache, v_cache, cache_mask, sinks=None, scale=None):
    """One query per row against a window buffer: q [B, 1, H, D]; buffers [B, Hkv, W, D]; mask [B, W] (True =
    a key to attend to; the order of the buffer does not matter). Plain tensor ops (autograd by torch)."""
    from .._dispatch import compute_dtype

    dt = compute_dtype(q, k_cache, v_cache, sinks)
    B, _, H, D = q.shape
    Hkv = k_cache.shape[1]
    qg = q[:, 0].to(dt).reshape(B, Hkv, H // Hkv, D)
    S = (qg * scale) @ k_cache.to(dt).transpose(-1, -2)  # [B, Hkv, G, W]
    S = S.masked_fill(~cache_mask[:, None, None, :], float("-inf"))
    m = S.amax(-1, keepdim=True)
    if sinks is not None:
        sink = sinks.to(dt).reshape(1, Hkv, H // Hkv, 1)
        m = torch.maximum(m, sink)
    m = m.masked_fill(torch.isinf(m), 0.0)
    p = torch.exp(S - m)
    Z = p.sum(-1, keepdim=True)
    if sinks is not None:
        Z = Z + torch.exp(sink - m)
    o = (p @ v_cache.to(dt)) / Z.clamp_min(torch.finfo(dt).tiny)
    return o.reshape(B, 1, H, D).to(q.dtype)
