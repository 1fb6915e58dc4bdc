"""Small host-side helpers shared by the GLA Triton kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting


def _fix_interpreter_scalar_index() -> None:
    """Under TRITON_INTERPRET=1, triton 3.6 turns a runtime scalar used as a loop bound (``range(N)``) into an int
    with ``int(array_of_one_element)``, which numpy >= 2.4 refuses. Convert through ``.item()`` instead."""
    from triton.runtime import interpreter

    orig = getattr(interpreter, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_hf_seqmodels_fixed", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0].item()))

    patched._hf_seqmodels_fixed = True
    interpreter._patch_lang_tensor = patched


if triton_interpreting():
    _fix_interpreter_scalar_index()

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def check_triton_dtypes(op: str, *tensors) -> None:
    """The Triton kernels compute in fp32; fp64 is only served by the PyTorch path."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            raise ValueError(
                f"{op}: the Triton kernels compute in float32 and do not take float64 inputs; "
                "use backend='torch' (or HF_SEQMODELS_BACKEND=torch) for float64"
            )


def dot_dtype(dtype: torch.dtype):
    """Operand dtype for tl.dot: the input dtype (tensor cores), except bf16 under the interpreter, whose dot
    multiplies the raw uint16 storage of bf16 operands (triton 3.6), so it gets fp32 operands there."""
    if dtype == torch.bfloat16 and triton_interpreting():
        return tl.float32
    return _TL_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep (near) fp32 accuracy in tl.dot; half inputs run on tensor cores as they are.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def pow2_block(n: int, lo: int = 16, hi: int | None = None) -> int:
    """Power-of-2 tile covering ``n`` (at least ``lo``, the smallest tl.dot dimension; at most ``hi``)."""
    b = max(lo, triton.next_power_of_2(n))
    return b if hi is None else min(b, hi)
