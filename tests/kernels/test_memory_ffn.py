"""Gathered per-sample SwiGLU FFN (memory banks): torch and Triton (interpreter) paths against a loop over samples.

The reference computes each sample separately with plain matmuls in fp64 and lets autograd differentiate it.
"""

import pytest
import torch
import torch.nn.functional as F

from hf_seqmodels.kernels.memory import memory_ffn
from hf_seqmodels.kernels.memory.torch_ffn import memory_ffn_torch


def loop_reference(x, wg, wu, wd):
    out = []
    for b in range(x.shape[0]):
        xb = x[b].double()
        h = F.silu(xb @ wg[b].double().T) * (xb @ wu[b].double().T)
        out.append(h @ wd[b].double())
    return torch.stack(out)


def make(B, T, S, d, dtype=torch.float64):
    x = torch.randn(B, T, d, dtype=dtype)
    w = [torch.randn(B, S, d, dtype=dtype) / d**0.5 for _ in range(3)]
    return [x, *w]


def values_and_grads(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    (y.double() * dy).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("B,T,S,d", [(3, 7, 5, 9), (2, 1, 21, 16), (1, 33, 70, 24), (4, 5, 1, 3)])
def test_torch_path_matches_loop_fp64(B, T, S, d):
    inputs = make(B, T, S, d)
    dy = torch.randn(B, T, d, dtype=torch.float64)
    y, grads = values_and_grads(lambda *a: memory_ffn(*a, backend="torch"), inputs, dy)
    ry, rgrads = values_and_grads(loop_reference, inputs, dy)
    assert y.dtype == torch.float64
    assert rel(y, ry) < 1e-12
    for name, g, r in zip(("dx", "dw_gate", "dw_up", "dw_down"), grads, rgrads):
        assert rel(g, r) < 1e-12, name


def test_torch_path_gradcheck():
    inputs = [t.requires_grad_() for t in make(2, 3, 4, 5)]
    assert torch.autograd.gradcheck(memory_ffn_torch, inputs)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_torch_path_low_precision(dtype, tol):
    inputs = make(2, 6, 19, 12, dtype=torch.float32)
    low = [t.to(dtype) for t in inputs]
    y = memory_ffn(*low, backend="torch")
    assert y.dtype == dtype
    assert rel(y, loop_reference(*low)) < tol


@pytest.mark.interpreter
@pytest.mark.parametrize("B,T,S,d", [(2, 1, 5, 7), (3, 19, 21, 20), (1, 70, 67, 40)])
def test_triton_interpreter_matches_loop(B, T, S, d):
    pytest.importorskip("triton")
    inputs = [t.float() for t in make(B, T, S, d)]
    dy = torch.randn(B, T, d, dtype=torch.float64)
    y, grads = values_and_grads(lambda *a: memory_ffn(*a, backend="triton"), inputs, dy)
    ry, rgrads = values_and_grads(loop_reference, [t.double() for t in inputs], dy.float().double())
    assert y.dtype == torch.float32
    assert rel(y, ry) < 1e-4, f"y {rel(y, ry):.2e}"
    for name, g, r in zip(("dx", "dw_gate", "dw_up", "dw_down"), grads, rgrads):
        assert g.dtype == torch.float32 and rel(g, r) < 1e-4, f"{name} {rel(g, r):.2e}"


@pytest.mark.interpreter
def test_triton_bf16_forward():
    pytest.importorskip("triton")
    inputs = [t.float().to(torch.bfloat16) for t in make(2, 9, 18, 17)]
    y = memory_ffn(*inputs, backend="triton")
    assert y.dtype == torch.bfloat16
    assert rel(y, loop_reference(*inputs)) < 3e-2


@pytest.mark.interpreter  # CPU tensors with backend="triton"
def test_triton_refuses_fp64():
    pytest.importorskip("triton")
    with pytest.raises(ValueError, match="float64"):
        memory_ffn(*make(1, 2, 3, 4), backend="triton")


def test_bad_arguments_name_the_argument():
    x, wg, wu, wd = make(2, 3, 4, 5)
    with pytest.raises(ValueError, match="`x` must have 3 dimensions"):
        memory_ffn(x[0], wg, wu, wd)
    with pytest.raises(ValueError, match="`w_gate` must be \\[B, S, d\\]"):
        memory_ffn(x, wg[:, :, :4], wu, wd)
    with pytest.raises(ValueError, match="`w_gate` must be \\[B, S, d\\]"):
        memory_ffn(x, wg[:1], wu, wd)
    with pytest.raises(ValueError, match="`w_down` must have the shape of `w_gate`"):
        memory_ffn(x, wg, wu, wd[:, :3])
    with pytest.raises(ValueError, match="`w_up`.*share a dtype|must share a dtype"):
        memory_ffn(x, wg, wu.float(), wd)
    with pytest.raises(ValueError, match="`w_down` must be a floating-point"):
        memory_ffn(x, wg, wu, wd.long())
    with pytest.raises(ValueError, match="empty inner dimension"):
        memory_ffn(x, wg[:, :0], wu[:, :0], wd[:, :0])
    with pytest.raises(ValueError, match="backend"):
        memory_ffn(x, wg, wu, wd, backend="cuda")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="`w_up` is on"):
            memory_ffn(x, wg, wu.cuda(), wd)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_triton_cuda_matches_torch(dtype, tol):
    inputs = [t.float().to(dtype).cuda() for t in make(8, 300, 336, 512)]
    dy = torch.randn(8, 300, 512, device="cuda", dtype=torch.float64)
    y, grads = values_and_grads(lambda *a: memory_ffn(*a, backend="triton"), inputs, dy)
    ry, rgrads = values_and_grads(lambda *a: memory_ffn(*a, backend="torch"), inputs, dy)
    assert rel(y, ry) < tol
    for g, r in zip(grads, rgrads):
        assert rel(g, r) < tol


# Compiled for sm_90 / sm_80 on the CPU (registers, spills, shared memory): tests/kernels/test_sm90_compile.py
# (case memory_ffn_bf16, the production shape B8 T2048 S336 d512, in the default set; fp32 in the exhaustive one).
