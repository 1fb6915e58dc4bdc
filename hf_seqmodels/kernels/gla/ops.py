"""Public gated-linear-attention ops: argument checks, then the Triton or PyTorch implementation.

Signatures follow fla: q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, g the log-space forget gate (<= 0) per key
dimension, or ``[B, T, H]``, one gate per head shared by all key dimensions (fla's ``chunk_simple_gla``; Mamba-2),
chosen by the gate's shape; state ``[B, H, K, V]`` in fp32, ``scale`` defaulting to ``K ** -0.5``. Both return
``(o, final_state)`` with ``final_state`` None unless ``output_final_state``.

An empty sequence (T = 0) is no error: ``o`` is ``[B, 0, H, V]`` and the final state is ``initial_state`` unchanged
(a copy in the state dtype; zeros when None), so a stream may be split anywhere, even into an empty piece. It is
computed by the PyTorch implementation on any device (there is nothing for a kernel to do).
"""

from __future__ import annotations

import sys
import warnings

import torch

from .. import context_parallel
from .._dispatch import (
    check_contiguous,
    check_same_device,
    check_tensor,
    debug_checks_enabled,
    select_backend,
)
from .._varlen import check_cu_seqlens
from .chunk_torch import chunk_gla_packed_torch, chunk_gla_torch, recurrent_gla_step_torch

_HALF = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_gla_args(op, q, k, v, g, scale, initial_state, backend, cu_seqlens=None):
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g)):
        check_tensor(op, name, x, ndim=None if name == "g" else 4)
        if name == "g" and g.dim() not in (3, 4):
            raise ValueError(
                f"{op}: `g` must have 4 dimensions [B, T, H, K] (a gate per key) or 3 [B, T, H] (a gate "
                f"per head), got shape {tuple(g.shape)}"
            )
        if x.dtype not in _HALF:
            raise ValueError(f"{op}: `{name}` must be float16, bfloat16, float32 or float64, got {x.dtype}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"{op}: `k` must have the shape of `q` [B, T, H, K] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if g.shape != q.shape and g.shape != q.shape[:3]:
        raise ValueError(
            f"{op}: `g` must be [B, T, H, K] = {tuple(q.shape)} (a gate per key) or [B, T, H] = {tuple(q.shape[:3])} "
            f"(a gate per head), as `q`; got {tuple(g.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: `v` must be [B, T, H, V] with B, T, H = {(B, T, H)} as in `q`, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{op}: `q`, `k`, `v` must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    packed = check_cu_seqlens(op, cu_seqlens, B, T)
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, ndim=4)
        want = (B if packed is None else packed.N, H, K, v.shape[-1])
        if tuple(initial_state.shape) != want:
            lead = "B" if packed is None else "N (one per packed sequence)"
            raise ValueError(
                f"{op}: `initial_state` must be [{lead}, H, K, V] = {want}, got {tuple(initial_state.shape)}"
            )
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"{op}: `scale` must be a Python number, got {type(scale).__name__}")
    device = check_same_device(op, q=q, k=k, v=v, g=g, initial_state=initial_state)
    chosen = select_backend(op, device, backend)
    if T == 0:  # the empty result (the initial state carried through): no kernel launch on an empty grid
        chosen = "torch"
    if chosen == "triton":
        check_contiguous(op, q=q, k=k, v=v, g=g, initial_state=initial_state)
    # The gate is checked where it costs no device synchronization (CPU), or under HF_SEQMODELS_DEBUG=1; never on
    # meta tensors or while torch.compile traces.
    tracing = torch.compiler.is_compiling() if hasattr(torch, "compiler") else False
    if (device.type == "cpu" or debug_checks_enabled()) and g.device.type != "meta" and not tracing and g.numel():
        gd = g.detach()
        if bool(torch.isnan(gd).any()):
            raise ValueError(f"{op}: `g` contains NaN (the log forget gate; NaN activations upstream?)")
        gmax, gmin = gd.max(), gd.min()
        if bool(gmax > 0):
            raise ValueError(f"{op}: `g` is a log-space forget gate and must be <= 0 everywhere (max is {float(gmax)})")
        if bool(torch.isinf(gmin)):
            raise ValueError(
                f"{op}: `g` contains -inf (a gate of exactly 0, e.g. log(0)); the chunked form needs finite log gates: "
                "clamp it (e.g. g.clamp(min=-1e4) resets the state just as well)"
            )
    return chosen, (K**-0.5 if scale is None else float(scale)), packed


def _packed_gla(fn, packed, q, k, v, g, scale, initial_state, output_final_state):
    """Run ``fn`` (a [B, T] implementation) on packed sequences: each sequence in its own row of a zero-padded batch
    (padding at the end: zero keys and no decay, so the final state is the state after the sequence's last token).
    The Triton kernels take this route (N x longest-sequence tokens of work); the torch path packs chunk-aligned."""
    qp, kp, vp, gp = (packed.to_padded(x) for x in (q, k, v, g))
    o, final = fn(qp, kp, vp, gp, scale, initial_state, output_final_state)
    return packed.from_padded(o), final


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, backend=None, cu_seqlens=None):
    """Chunkwise-parallel gated linear attention (training and prefill). Returns ``(o, final_state)``.

    ``cu_seqlens`` (1-D int offsets ``[0, l1, l1+l2, ..., T]``, batch 1): packed sequences, the state restarts at
    each start; ``initial_state`` and the final state are then ``[N, H, K, V]``, one per sequence.
    """
    chosen, scale, packed = _check_gla_args("chunk_gla", q, k, v, g, scale, initial_state, backend, cu_seqlens)
    T, H = q.shape[1], q.shape[2]
    # as fla: shorter than the head count usually means a head-first tensor (our own layers know their layout)
    if 1 < T < H and not sys._getframe(1).f_globals.get("__name__", "").startswith("hf_seqmodels."):
        warnings.warn(
            f"chunk_gla: got T={T} < H={H}: the layout is [B, T, H, K] (time before heads); a head-first "
            "[B, H, T, K] input would be computed silently wrong. Transpose it if so.",
            stacklevel=2,
        )
    if chosen == "triton":
        from .chunk_scalar_triton import chunk_scalar_gla_triton
        from .chunk_triton import chunk_gla_triton

        fn = chunk_scalar_gla_triton if g.dim() == 3 else chunk_gla_triton
    else:
        fn = chunk_gla_torch
    if context_parallel.active():
        return _context_parallel_gla(fn, q, k, v, g, scale, initial_state, output_final_state, packed)
    if packed is not None:
        if chosen == "torch":  # chunk-aligned packing: no padding beyond each sequence's last chunk
            return chunk_gla_packed_torch(q, k, v, g, scale, initial_state, output_final_state, packed)
        return _packed_gla(fn, packed, q, k, v, g, scale, initial_state, output_final_state)
    return fn(q, k, v, g, scale, initial_state, output_final_state)


def _context_parallel_gla(fn, q, k, v, g, scale, initial_state, output_final_state, packed):
    """chunk_gla on this rank's slice of the sequence (see kernels/context_parallel.py). The state is linear in the
    initial state: with ``G`` the slice's cumulative log-gate, the output from initial state ``h`` is the output from
    a zero start plus ``scale * (q * exp(G)) h``, and the final state ``exp(G_last) h + S``. The slice runs once from
    a zero start; the ranks exchange ``(S, G_last)`` for ``h``."""
    if packed is not None or initial_state is not None:
        raise ValueError(
            "chunk_gla under context_parallel: `cu_seqlens` and `initial_state` are not supported (the state enters "
            "from the previous rank's slice)"
        )
    if q.shape[1] == 0:
        raise ValueError("chunk_gla under context_parallel: this rank's slice is empty; give every rank >= 1 position")
    o, S = fn(q, k, v, g, scale, None, True)
    G = g.to(S.dtype).cumsum(1)
    h = context_parallel.exchange_gla_state(S, G[:, -1])
    decay = torch.exp(G) if G.dim() == 4 else torch.exp(G)[..., None]
    o = o + torch.einsum("bthk,bhkv->bthv", q.to(S.dtype) * decay * scale, h).to(o.dtype)
    if not output_final_state:
        return o, None
    last = torch.exp(G[:, -1])
    return o, (last[..., None] if last.dim() == 3 else last[..., None, None]) * h + S


def fused_recurrent_gla(
    q, k, v, g, scale=None, initial_state=None, output_final_state=False, backend=None, cu_seqlens=None
):
    """Token-by-token gated linear attention (decoding). Same signature and result as :func:`chunk_gla`."""
    chosen, scale, packed = _check_gla_args(
        "fused_recurrent_gla", q, k, v, g, scale, initial_state, backend, cu_seqlens
    )
    context_parallel.refuse("fused_recurrent_gla", "it decodes token by token; run chunk_gla on slices instead")
    if packed is not None:
        if chosen == "torch":  # the torch path computes the recurrence in chunked form
            return chunk_gla_packed_torch(q, k, v, g, scale, initial_state, output_final_state, packed)

        def fn(*args):
            return fused_recurrent_gla(*args, backend=chosen)

        return _packed_gla(fn, packed, q, k, v, g, scale, initial_state, output_final_state)
    if chosen == "triton":
        from .recurrent_triton import fused_recurrent_gla_triton

        return fused_recurrent_gla_triton(q, k, v, g, scale, initial_state, output_final_state)
    if q.shape[1] == 1:
        return recurrent_gla_step_torch(q, k, v, g, scale, initial_state, output_final_state)
    # On the CPU the chunked form computes the same recurrence, vectorized over time.
    return chunk_gla_torch(q, k, v, g, scale, initial_state, output_final_state)
