"""Public linear-scan ops: argument checks, then the Triton or PyTorch implementation.

``linear_scan``: ``h_t = a_t * h_{t-1} + b_t`` along dim 1 of ``[B, T, D]`` tensors.
``block2_scan``: ``h_t = A_t @ h_{t-1} + b_t`` with ``A`` ``[B, T, D, 2, 2]`` and ``b``, ``h`` ``[B, T, D, 2]``.
``reverse=True`` runs from the end: ``h_t = a_t h_{t+1} + b_t``. ``initial_state`` is the state before the first
step (``h_{-1}``, or ``h_T`` when reversed; zero if None). Any real ``a`` is fine (zero, negative, above one).
Accumulation is fp32 (fp64 for fp64 inputs); the output has the dtype of ``b``. Differentiable in ``a``, ``b`` and
``initial_state``; the backward is itself a scan in the opposite direction.
"""
from __future__ import annotations

import torch

from .._dispatch import check_same_device, check_tensor, select_backend
from .scan_torch import block2_scan_torch, linear_scan_torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_scan_args(op, a, b, initial_state, reverse, backend, a_tail, b_tail, a_name="a"):
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
    if b.shape[1] == 0:
        raise ValueError(f"{op}: the sequence dimension (dim 1) of `b` is empty")
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, ndim=2 + len(b_tail))
        want = (b.shape[0], b.shape[2]) + b_tail
        if tuple(initial_state.shape) != want:
            raise ValueError(f"{op}: `initial_state` must have shape {want}, got {tuple(initial_state.shape)}")
        if initial_state.dtype not in _DTYPES:
            raise ValueError(
                f"{op}: `initial_state` must be float16, bfloat16, float32 or float64, got {initial_state.dtype}"
            )
    if not isinstance(reverse, bool):
        raise ValueError(f"{op}: `reverse` must be a bool, got {type(reverse).__name__}")
    device = check_same_device(op, **{a_name: a, "b": b, "initial_state": initial_state})
    return select_backend(op, device, backend)


def linear_scan(a, b, initial_state=None, reverse=False, backend=None):
    """Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` over dim 1 of ``[B, T, D]``; returns ``h``."""
    chosen = _check_scan_args("linear_scan", a, b, initial_state, reverse, backend, (), ())
    if chosen == "triton":
        from .scan_triton import linear_scan_triton

        return linear_scan_triton(a, b, initial_state, reverse)
    return linear_scan_torch(a, b, initial_state, reverse)


def block2_scan(A, b, initial_state=None, reverse=False, backend=None):
    """2x2 block-diagonal recurrence ``h_t = A_t @ h_{t-1} + b_t`` per (batch, unit); returns ``h`` [B, T, D, 2]."""
    chosen = _check_scan_args("block2_scan", A, b, initial_state, reverse, backend, (2, 2), (2,), a_name="A")
    if chosen == "triton":
        from .scan_triton import block2_scan_triton

        return block2_scan_triton(A, b, initial_state, reverse)
    return block2_scan_torch(A, b, initial_state, reverse)
