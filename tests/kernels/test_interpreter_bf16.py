"""The Triton interpreter treats bf16 as the GPU does (the fixes of kernels/triton_utils.py, installed by
``patch_interpreter()`` under TRITON_INTERPRET=1, as every kernel launch does): fp32 -> bf16 casts round to nearest
even (triton 3.6's interpreter truncates), and ``tl.dot`` multiplies bf16 operands (it multiplied their raw uint16
storage). So the bf16 tolerances the interpreter tests assert see the operand rounding of the hardware."""

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

import hf_seqmodels.kernels.triton_utils as tu  # noqa: E402

tu.patch_interpreter()  # these tests launch kernels of their own

pytestmark = pytest.mark.interpreter


@triton.jit
def _round_trip(x, y, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(y + o, tl.load(x + o).to(tl.bfloat16).to(tl.float32))


@triton.jit
def _dot(a, b, c, N: tl.constexpr):
    r = tl.arange(0, N)
    tile = r[:, None] * N + r[None, :]
    acc = tl.dot(tl.load(a + tile).to(tl.bfloat16), tl.load(b + tile).to(tl.bfloat16))
    tl.store(c + tile, acc)


@triton.jit
def _from_int(x, y, N: tl.constexpr):
    o = tl.arange(0, N)
    v = tl.load(x + o)
    tri = (o[:, None] >= o[None, :]).to(tl.bfloat16)  # a 0/1 mask as a dot operand
    tl.store(y + o, v.to(tl.bfloat16).to(tl.float32) + tl.sum(tri.to(tl.float32), axis=1))


def test_int_and_bool_to_bf16_are_values_not_bits():
    x = torch.arange(-8, 8, dtype=torch.int32) * 1001
    y = torch.empty(16)
    _from_int[(1,)](x, y, 16)
    assert torch.equal(y, x.bfloat16().float() + torch.arange(1, 17).float())


def test_fp32_to_bf16_rounds_to_nearest_even():
    # random values, ties both ways (1 + 2^-8 rounds down to even, 1 + 3 * 2^-8 up), the largest finite fp32 that
    # stays finite in bf16, infinities, signed zero, a subnormal
    special = torch.tensor(
        [1.00390625, 1.01171875, -1.00390625, 3.3895314e38, float("inf"), -float("inf"), -0.0, 1e-40]
    )
    x = torch.cat([torch.randn(1024 - len(special)) * 100, special])
    y = torch.empty_like(x)
    _round_trip[(1,)](x, y, 1024)
    assert torch.equal(y, x.bfloat16().float())
    nan = torch.full((16,), float("nan"))
    out = torch.empty_like(nan)
    _round_trip[(1,)](nan, out, 16)
    assert out.isnan().all()


def test_dot_of_bf16_operands_equals_the_rounded_fp32_product():
    a, b = torch.randn(32, 32), torch.randn(32, 32)
    c = torch.empty(32, 32)
    _dot[(1,)](a, b, c, 32)
    ref = a.bfloat16().double() @ b.bfloat16().double()
    assert float((c.double() - ref).abs().max()) < 1e-4
    assert float((c.double() - a.double() @ b.double()).abs().max()) > 1e-3  # the rounding is really there


def test_bf16_dot_operands_are_not_widened_under_the_interpreter():
    assert tu.dot_dtype(torch.bfloat16) == tl.bfloat16


def test_patch_interpreter_is_idempotent():
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    before = (builder.cast_impl, builder.create_dot, interpreter._patch_lang_tensor)
    tu.patch_interpreter()
    assert (builder.cast_impl, builder.create_dot, interpreter._patch_lang_tensor) == before  # installed once
