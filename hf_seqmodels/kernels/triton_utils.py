"""Host-side helpers shared by every Triton kernel of ``hf_seqmodels.kernels`` (GLA, scans, fused Newton, memory
FFN), and :func:`patch_interpreter`, which makes triton's CPU interpreter (``TRITON_INTERPRET=1``) run them as the
GPU does: every ``torch.autograd.Function`` that launches kernels calls it first thing in ``forward`` (its
``backward`` launches only after a forward), and so does a test that launches kernels of its own."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dispatch import triton_interpreting


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


def _bf16_round_nearest_even(x):
    """fp32 numpy array -> bf16 bit patterns (uint16), rounded to nearest, ties to even, as the GPU's cvt.rn does."""
    import numpy as np

    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    out = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), ((bits >> 16) | 0x0040).astype(np.uint16), out)


def _fix_interpreter_bf16() -> None:
    """Under TRITON_INTERPRET=1, make bf16 behave as on the GPU (triton 3.6): fp32 -> bf16 casts round to nearest
    even (the interpreter truncates; other types go through fp32, as integers and booleans otherwise land in the raw
    bf16 storage), and ``tl.dot`` takes bf16 operands (it multiplied their raw uint16 storage), so
    the kernels give tl.dot the same bf16-rounded operands in the interpreter as on the hardware."""
    import numpy as np
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or getattr(builder, "_hf_seqmodels_bf16", False):
        return
    orig_cast, orig_dot = builder.cast_impl, builder.create_dot

    def as_fp32(x):  # bf16 -> fp32 is exact (subnormals included): the bits shifted up
        if x.dtype.scalar != tl.bfloat16:
            return x
        widened = (np.ascontiguousarray(x.data).astype(np.uint32) << 16).view(np.float32)
        return interpreter.TensorHandle(widened, tl.float32)

    def cast_impl(self, src, dst_type):
        if dst_type.scalar == tl.bfloat16 and src.dtype.scalar != tl.bfloat16:  # from fp32, or anything via fp32
            data = np.asarray(src.data).astype(np.float32)
            return interpreter.TensorHandle(_bf16_round_nearest_even(data), tl.bfloat16)
        if src.dtype.scalar == tl.bfloat16 and dst_type.scalar != tl.bfloat16:
            src = as_fp32(src)
            if dst_type.scalar == tl.float32:
                return src
        return orig_cast(self, src, dst_type)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return orig_dot(self, as_fp32(a), as_fp32(b), d, input_precision, max_num_imprecise_acc)

    builder.cast_impl, builder.create_dot = cast_impl, create_dot
    builder._hf_seqmodels_bf16 = True


def patch_interpreter() -> None:
    """Under ``TRITON_INTERPRET=1``, fix triton 3.6's interpreter where it departs from the GPU: a runtime scalar as
    a loop bound (:func:`_fix_interpreter_scalar_index`) and bf16 rounding and ``tl.dot`` operands
    (:func:`_fix_interpreter_bf16`). Does nothing otherwise (compiled kernels); idempotent (each fix is installed
    once per process), so it is cheap to call before every launch."""
    if triton_interpreting():
        _fix_interpreter_scalar_index()
        _fix_interpreter_bf16()


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
    """Operand dtype for tl.dot: the input dtype (tensor cores). Under the interpreter too: bf16 operands are
    rounded to nearest even and multiplied as on the GPU (:func:`_fix_interpreter_bf16`)."""
    return _TL_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep (near) fp32 accuracy in tl.dot; half inputs run on tensor cores as they are.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def pow2_block(n: int, lo: int = 16, hi: int | None = None) -> int:
    """Power-of-2 tile covering ``n`` (at least ``lo``, the smallest tl.dot dimension; at most ``hi``)."""
    b = max(lo, triton.next_power_of_2(n))
    return b if hi is None else min(b, hi)
