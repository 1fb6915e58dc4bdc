"""Backend selection and argument checks shared by every op in ``hf_seqmodels.kernels``.

Every op has a Triton implementation (CUDA tensors) and a PyTorch implementation (any device). ``auto`` picks
Triton for CUDA tensors when Triton imports, PyTorch otherwise. ``HF_SEQMODELS_BACKEND=torch|triton`` forces one.
Forcing Triton on CPU tensors is only valid under ``TRITON_INTERPRET=1`` (the Triton interpreter).
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def debug_checks_enabled() -> bool:
    return os.environ.get("HF_SEQMODELS_DEBUG", "0") == "1"


def select_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """Return ``"torch"`` or ``"triton"`` for an op whose tensors live on ``device``."""
    choice = (backend or os.environ.get("HF_SEQMODELS_BACKEND", "auto")).lower()
    if choice not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} (argument or HF_SEQMODELS_BACKEND), got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if choice == "triton":
        if not triton_available():
            raise ValueError(f"{op}: backend 'triton' was requested but triton is not installed")
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"{op}: backend 'triton' needs CUDA tensors (got device {device}); set TRITON_INTERPRET=1 to run "
                "the Triton kernels in the interpreter on the CPU, or use backend 'torch'"
            )
    return choice


def check_tensor(op: str, name: str, x, ndim: int | None = None, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{op}: `{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{op}: `{name}` must be a floating-point tensor, got dtype {x.dtype}")


def check_same_device(op: str, **tensors) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(
                f"{op}: `{name}` is on {dev} but `{first_name}` is on {first}; all inputs must share a device"
            )
    return first


def check_contiguous(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(
                f"{op}: `{name}` must be contiguous for the Triton kernel (got strides {tuple(t.stride())} for shape "
                f"{tuple(t.shape)}); call `.contiguous()` on it first"
            )


def compute_dtype(*tensors) -> torch.dtype:
    """fp64 inputs compute in fp64 (reference checks, gradcheck); everything else accumulates in fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
