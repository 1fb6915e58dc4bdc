"""Public sliding-window attention ops: argument checks, then the implementation.

Layout follows fla / flash-attn: q ``[B, T, H, D]``, k and v ``[B, L, Hkv, D]`` with ``L >= T`` and ``H`` a
multiple of ``Hkv`` (grouped-query attention, no expanded copies). Queries align with the LAST ``T`` keys (the
first ``L - T`` keys are a prefix, e.g. the window carried over from earlier tokens).

Window: ``window = w`` is the number of keys a query sees, itself included: query at absolute position ``t`` attends
keys ``j`` with ``t - w < j <= t`` (so ``w = 1`` is the token alone, and ``w >= L`` is full causal attention).

Sinks: optional learned logits per head, ``[H]`` or ``[H, M]``; each adds ``exp(sink)`` to the softmax denominator
with a zero value ("attend to nothing"). ``[H, M]`` is reduced by a log-sum-exp over ``M``.

Only a PyTorch implementation exists for now; it runs on every device (CUDA included). No queries (T = 0) give the
empty output ``[B, 0, H, D]``.
"""

from __future__ import annotations

import torch

from .._dispatch import check_same_device, check_tensor
from .._varlen import check_cu_seqlens
from .swa_torch import sliding_window_attention_torch, sliding_window_decode_torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_window(where: str, window, name: str = "window") -> None:
    """The one check of a sliding window size (this op, ``LinearizedLlamaConfig.window_size``, ``linearize``): a
    positive int, the number of keys a query sees, itself included. TypeError for a non-int, ValueError for <= 0."""
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(
            f"{where}: {name} must be a positive int (keys a query sees, itself included), got "
            f"{type(window).__name__} {window!r}"
        )
    if window <= 0:
        raise ValueError(f"{where}: {name} must be a positive int (keys a query sees, itself included), got {window!r}")


def _check_common(op, q, k, v, sinks, scale):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, x, ndim=4)
        if x.dtype not in _FLOATS:
            raise ValueError(f"{op}: `{name}` must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{op}: `q`, `k`, `v` must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    H, D = q.shape[2], q.shape[3]
    if sinks is not None:
        check_tensor(op, "sinks", sinks)
        if sinks.dim() not in (1, 2) or sinks.shape[0] != H:
            raise ValueError(f"{op}: `sinks` must be [H] or [H, M] with H = {H} query heads, got {tuple(sinks.shape)}")
        if sinks.dim() == 2:
            sinks = torch.logsumexp(sinks, dim=-1)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"{op}: `scale` must be a Python number, got {type(scale).__name__}")
    return sinks, (D**-0.5 if scale is None else float(scale))


def sliding_window_attention(q, k, v, window: int, sinks=None, scale=None, key_mask=None, cu_seqlens=None):
    """Causal sliding-window attention (training and prefill). Returns ``o`` ``[B, T, H, D]``.

    ``cu_seqlens`` (1-D int offsets ``[0, l1, ..., T]``, batch 1, no key prefix: ``L == T``): packed sequences; no
    query attends across a sequence boundary.

    ``key_mask`` ``[B, L]`` (bool, True = attend) drops padding keys. A query that sees no valid key (and no sink)
    outputs zeros.
    """
    op = "sliding_window_attention"
    sinks, scale = _check_common(op, q, k, v, sinks, scale)
    check_window(op, window, "`window`")
    B, T, H, D = q.shape
    if v.shape != k.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"{op}: `k` and `v` must both be [B, L, Hkv, D] with B = {B} and D = {D} as in `q`, got k "
            f"{tuple(k.shape)}, v {tuple(v.shape)}"
        )
    L, Hkv = k.shape[1], k.shape[2]
    if L < T:
        raise ValueError(
            f"{op}: `k` must have at least as many tokens as `q` (queries align with the last keys), got L={L} < T={T}"
        )
    if H % Hkv:
        raise ValueError(f"{op}: query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    if key_mask is not None:
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, L):
            raise ValueError(
                f"{op}: `key_mask` must be a bool tensor [B, L] = {(B, L)}, got {key_mask.dtype} "
                f"{tuple(key_mask.shape)}"
            )
    check_same_device(op, q=q, k=k, v=v, sinks=sinks, key_mask=key_mask)
    packed = check_cu_seqlens(op, cu_seqlens, B, T)
    seg = None
    if packed is not None:
        if L != T:
            raise ValueError(
                f"{op}: with `cu_seqlens` the keys must be the queries' own tokens (L == T), got L={L}, T={T}"
            )
        seg = packed.seq_ids(q.device).unsqueeze(0)
        window = min(window, packed.max_len)
    # a query never sees more than the L keys there are: the same result, with O(T x min(window, L)) memory
    return sliding_window_attention_torch(q, k, v, max(1, min(window, L)), sinks, scale, key_mask, seg)


def sliding_window_decode(q, k_cache, v_cache, cache_mask, sinks=None, scale=None):
    """One decoding step against a window buffer (see :mod:`.ring`). q ``[B, 1, H, D]``; k_cache, v_cache
    ``[B, Hkv, W, D]`` already holding the current token; cache_mask ``[B, W]`` bool. Returns ``[B, 1, H, D]``."""
    op = "sliding_window_decode"
    sinks, scale = _check_common(op, q, k_cache, v_cache, sinks, scale)
    B, T, H, D = q.shape
    if T != 1:
        raise ValueError(f"{op}: `q` must hold one token [B, 1, H, D], got {tuple(q.shape)}")
    if k_cache.shape[0] != B or k_cache.shape[3] != D or v_cache.shape != k_cache.shape or H % k_cache.shape[1]:
        raise ValueError(
            f"{op}: `k_cache`/`v_cache` must be [B, Hkv, W, D] with B = {B}, D = {D} and Hkv dividing H = {H}, got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if cache_mask.dtype != torch.bool or tuple(cache_mask.shape) != (B, k_cache.shape[2]):
        raise ValueError(
            f"{op}: `cache_mask` must be a bool tensor [B, W] = {(B, k_cache.shape[2])}, got {tuple(cache_mask.shape)}"
        )
    check_same_device(op, q=q, k_cache=k_cache, v_cache=v_cache, cache_mask=cache_mask, sinks=sinks)
    return sliding_window_decode_torch(q, k_cache, v_cache, cache_mask, sinks, scale)
