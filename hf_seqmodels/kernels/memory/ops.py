"""Public gathered per-sample SwiGLU FFN: argument checks, then the Triton or PyTorch implementation.

``memory_ffn(x, w_gate, w_up, w_down, backend=None) -> y``

- ``x``: ``[B, T, d]`` activations (the MLP input of one layer).
- ``w_gate``, ``w_up``, ``w_down``: ``[B, S, d]`` per-sample weights (the fetched memory blocks of each sample,
  concatenated along ``S``). ``w_down`` uses the same ``[S, d]`` layout as the other two (the transpose of an
  ``nn.Linear(S, d).weight``).
- returns ``y [B, T, d] = (silu(x w_gate^T) * (x w_up^T)) w_down`` in ``x``'s dtype; fp16/bf16 accumulate in fp32,
  fp64 computes in fp64 (PyTorch path only).

Gradients flow to all four inputs through ``torch.autograd.Function``s with explicit backward passes. No tokens
(T = 0) give the empty ``y`` ``[B, 0, d]`` (and zero weight gradients), computed by the PyTorch implementation.
"""

from __future__ import annotations

import torch

from .._dispatch import check_contiguous, check_same_device, check_tensor, select_backend
from .torch_ffn import memory_ffn_torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_OP = "memory_ffn"


def _check_args(x, w_gate, w_up, w_down, backend):
    for name, t in (("x", x), ("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
        check_tensor(_OP, name, t, ndim=3)
        if t.dtype not in _DTYPES:
            raise ValueError(f"{_OP}: `{name}` must be float16, bfloat16, float32 or float64, got {t.dtype}")
    B, T, d = x.shape
    if w_gate.shape[0] != B or w_gate.shape[2] != d:
        raise ValueError(
            f"{_OP}: `w_gate` must be [B, S, d] with B={B} and d={d} as in `x` [B, T, d], got {tuple(w_gate.shape)}"
        )
    S = w_gate.shape[1]
    if S == 0:
        raise ValueError(f"{_OP}: `w_gate` has an empty inner dimension S (dim 1); nothing was fetched")
    for name, t in (("w_up", w_up), ("w_down", w_down)):
        if t.shape != w_gate.shape:
            raise ValueError(
                f"{_OP}: `{name}` must have the shape of `w_gate` [B, S, d] = {tuple(w_gate.shape)}, got "
                f"{tuple(t.shape)}"
            )
    if not (w_gate.dtype == w_up.dtype == w_down.dtype):
        raise ValueError(
            f"{_OP}: `w_gate`, `w_up`, `w_down` must share a dtype, got {w_gate.dtype}, {w_up.dtype}, {w_down.dtype}"
        )
    device = check_same_device(_OP, x=x, w_gate=w_gate, w_up=w_up, w_down=w_down)
    chosen = select_backend(_OP, device, backend)
    if T == 0:  # the empty result: no kernel launch on an empty grid
        chosen = "torch"
    if chosen == "triton":
        check_contiguous(_OP, x=x, w_gate=w_gate, w_up=w_up, w_down=w_down)
    return chosen


def memory_ffn(x, w_gate, w_up, w_down, backend=None):
    """Per-sample SwiGLU FFN with gathered weights; see the module docstring for shapes."""
    chosen = _check_args(x, w_gate, w_up, w_down, backend)
    if chosen == "triton":
        from .triton_ffn import memory_ffn_triton

        return memory_ffn_triton(x, w_gate, w_up, w_down)
    return memory_ffn_torch(x, w_gate, w_up, w_down)
