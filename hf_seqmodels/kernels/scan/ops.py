"""Public linear-scan ops: argument checks, then the Triton or PyTorch implementation.

``linear_scan``: ``h_t = a_t * h_{t-1} + b_t`` along dim 1 of ``[B, T, D]`` tensors.
``block2_scan``: ``h_t = A_t @ h_{t-1} + b_t`` with ``A`` ``[B, T, D, 2, 2]`` and ``b``, ``h`` ``[B, T, D, 2]``.
``reverse=True`` runs from the end: ``h_t = a_t h_{t+1} + b_t``. ``initial_state`` is the state before the first
step (``h_{-1}``, or ``h_T`` when reversed; zero if None). Any real ``a`` is fine (zero, negative, above one).
Accumulation is fp32 (fp64 for fp64 inputs); the output has the dtype of ``b``. Differentiable in ``a``, ``b`` and
``initial_state``; the backward is itself a scan in the opposite direction. An empty sequence (T = 0) gives the empty
``h`` (and a zero gradient for ``initial_state``), computed by the PyTorch implementation on any device.

Inside ``hf_seqmodels.context_parallel`` the input is this rank's slice of the sequence: the slice is scanned from a
zero state, the ranks exchange each slice's total map and final state for the state entering each slice
(``kernels/context_parallel.py``, ``exchange_scan_carry``), and each position adds the prefix product of its slice's
maps applied to that state. No ``initial_state`` or ``cu_seqlens`` there.
"""

from __future__ import annotations

import torch

from .. import context_parallel
from .._dispatch import check_same_device, check_tensor, compute_dtype, select_backend
from .._varlen import check_cu_seqlens
from .scan_torch import Block2, Diag, block2_scan_torch, linear_scan_torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_scan_args(op, a, b, initial_state, reverse, backend, a_tail, b_tail, a_name="a", cu_seqlens=None):
    check_tensor(op, a_name, a, ndim=3 + len(a_tail))
    check_tensor(op, "b", b, ndim=3 + len(b_tail))
    for name, x in ((a_name, a), ("b", b)):
        if x.dtype not in _DTYPES:
            raise ValueError(f"{op}: `{name}` must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: `{a_name}` and `b` must share a dtype, got {a.dtype} and {b.dtype}")
    lead = "[B, T, D" + "".join(f", {n}" for n in b_tail) + "]"
    if tuple(b.shape[3:]) != b_tail:
        raise ValueError(f"{op}: `b` must be {lead}, got shape {tuple(b.shape)}")
    want_a = tuple(b.shape[:3]) + a_tail
    if tuple(a.shape) != want_a:
        raise ValueError(
            f"{op}: `{a_name}` must have shape {want_a} to match `b` {tuple(b.shape)}, got {tuple(a.shape)}"
        )
    packed = check_cu_seqlens(op, cu_seqlens, b.shape[0], b.shape[1])
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, ndim=2 + len(b_tail))
        want = (b.shape[0] if packed is None else packed.N, b.shape[2]) + b_tail
        if tuple(initial_state.shape) != want:
            raise ValueError(f"{op}: `initial_state` must have shape {want}, got {tuple(initial_state.shape)}")
        if initial_state.dtype not in _DTYPES:
            raise ValueError(
                f"{op}: `initial_state` must be float16, bfloat16, float32 or float64, got {initial_state.dtype}"
            )
    if not isinstance(reverse, bool):
        raise TypeError(f"{op}: `reverse` must be a bool, got {type(reverse).__name__}")
    device = check_same_device(op, **{a_name: a, "b": b, "initial_state": initial_state})
    chosen = select_backend(op, device, backend)
    return ("torch" if b.shape[1] == 0 else chosen), packed  # T = 0: the empty result, no kernel launch


def _reset_packed(packed, a, b, initial_state, reverse, apply):
    """Packed sequences as one scan: the map at each sequence's first step (last, when reversed) forgets the
    carried state (``a = 0``) and takes that sequence's initial state into ``b`` instead (``b + a h0``)."""
    at = packed.ends(a.device) if reverse else packed.starts(a.device)
    keep = torch.ones(a.shape[1], dtype=a.dtype, device=a.device).index_fill(0, at, 0)
    a2 = a * keep.reshape(1, -1, *([1] * (a.dim() - 2)))
    if initial_state is None:
        return a2, b
    h0 = initial_state.index_select(0, packed.nonempty_index(a.device)).to(b.dtype)  # [N', D(, 2)]
    extra = apply(a[0, at], h0)  # a_first h0 per sequence
    return a2, b.index_add(1, at, extra.unsqueeze(0))


def _context_parallel_scan(op, kind, fn, a, b, initial_state, reverse, packed):
    """The scan on this rank's slice of the sequence (``fn(a, b, h0, reverse)``: the chosen implementation). The
    state is affine in the state entering the slice: ``h_t = local_t + P_t h_in`` with ``local`` the scan from a zero
    state and ``P_t`` the product of the slice's maps up to ``t`` (from ``t`` to the end when reversed); ``P`` at the
    slice's end is its total map. ``P`` is a cumulative product for elementwise maps; for 2x2 blocks its two columns
    are the slice's homogeneous scans (``b = 0``) from the unit vectors."""
    if packed is not None or initial_state is not None:
        raise ValueError(
            f"{op} under context_parallel: `cu_seqlens` and `initial_state` are not supported (the state enters "
            "from the neighbouring rank's slice)"
        )
    if b.shape[1] == 0:
        raise ValueError(f"{op} under context_parallel: this rank's slice is empty; give every rank >= 1 position")
    dt = compute_dtype(a, b)
    local = fn(a, b, None, reverse).to(dt)
    a = a.to(dt)
    if kind is Diag:
        P = a.flip(1).cumprod(1).flip(1) if reverse else a.cumprod(1)
    else:
        eye = torch.eye(2, dtype=dt, device=b.device).expand(b.shape[0], b.shape[2], 2, 2)
        zeros = torch.zeros_like(local)
        P = torch.stack([fn(a, zeros, eye[..., j], reverse) for j in (0, 1)], -1)
    end = 0 if reverse else -1
    h_in = context_parallel.exchange_scan_carry(P[:, end], local[:, end], kind, reverse)
    return (local + kind.apply(P, h_in.unsqueeze(1))).to(b.dtype)


def linear_scan(a, b, initial_state=None, reverse=False, backend=None, cu_seqlens=None):
    """Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` over dim 1 of ``[B, T, D]``; returns ``h``.

    ``cu_seqlens`` (1-D int offsets ``[0, l1, ..., T]``, batch 1): packed sequences, each scanned on its own
    (``initial_state`` is then ``[N, D]``, one per sequence: ``h_{-1}``, or ``h_T`` of each sequence when reversed).
    """
    chosen, packed = _check_scan_args(
        "linear_scan", a, b, initial_state, reverse, backend, (), (), cu_seqlens=cu_seqlens
    )
    fn = linear_scan_torch
    if chosen == "triton":
        from .scan_triton import linear_scan_triton as fn
    if context_parallel.active():
        return _context_parallel_scan("linear_scan", Diag, fn, a, b, initial_state, reverse, packed)
    if packed is not None:
        a, b = _reset_packed(packed, a, b, initial_state, reverse, lambda a0, h0: a0 * h0)
        initial_state = None
    return fn(a, b, initial_state, reverse)


def block2_scan(A, b, initial_state=None, reverse=False, backend=None, cu_seqlens=None):
    """2x2 block-diagonal recurrence ``h_t = A_t @ h_{t-1} + b_t`` per (batch, unit); returns ``h`` [B, T, D, 2].
    ``cu_seqlens``: packed sequences, as in :func:`linear_scan` (``initial_state`` ``[N, D, 2]``)."""
    chosen, packed = _check_scan_args(
        "block2_scan", A, b, initial_state, reverse, backend, (2, 2), (2,), a_name="A", cu_seqlens=cu_seqlens
    )
    fn = block2_scan_torch
    if chosen == "triton":
        from .scan_triton import block2_scan_triton as fn
    if context_parallel.active():
        return _context_parallel_scan("block2_scan", Block2, fn, A, b, initial_state, reverse, packed)
    if packed is not None:
        A, b = _reset_packed(packed, A, b, initial_state, reverse, lambda a0, h0: (a0 @ h0.unsqueeze(-1)).squeeze(-1))
        initial_state = None
    return fn(A, b, initial_state, reverse)
