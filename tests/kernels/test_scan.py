"""Linear scans (diagonal and 2x2 block): values and gradients against the fp64 loop references.

The PyTorch path runs at any size here; the Triton kernels run in the interpreter (TRITON_INTERPRET=1, set by
conftest) on small shapes with small tiles so that several tiles and unit blocks are crossed. Tests marked ``cuda``
compare Triton with the PyTorch path at larger shapes on a GPU.
"""

import pytest
import torch
from reference import block2_scan_loop, linear_scan_loop

from hf_seqmodels.kernels.scan import block2_scan, linear_scan, scan_triton

KINDS = {"diagonal": (linear_scan, linear_scan_loop), "block2": (block2_scan, block2_scan_loop)}
EXTREME = torch.tensor([0.0, 1.0, -1.0, 1.5, -1.5, 0.5, -0.3])


def make_inputs(kind, B, T, D, dtype=torch.float64, h0=True, extreme=False, device="cpu"):
    a_shape = (B, T, D) if kind == "diagonal" else (B, T, D, 2, 2)
    b_shape = (B, T, D) if kind == "diagonal" else (B, T, D, 2)
    if extreme:  # exact zeros, ones, negatives and |a| > 1
        a = EXTREME[torch.randint(len(EXTREME), a_shape)]
        if kind == "block2":  # scale so the 2x2 products stay moderate over T steps
            a = a * 0.7
    else:
        a = torch.randn(a_shape) * (0.6 if kind == "diagonal" else 0.45)
    b = torch.randn(b_shape)
    s0 = torch.randn(b_shape[:1] + b_shape[2:]) if h0 else None
    return [x.to(device=device, dtype=dtype) if x is not None else None for x in (a, b, s0)]


def values_and_grads(fn, a, b, s0, reverse, weight, **kw):
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in (a, b, s0)]
    h = fn(*leaves, reverse=reverse, **kw)
    (h.double() * weight).sum().backward()
    return [h.detach()] + [x.grad for x in leaves if x is not None]


def rel_err(got, ref):
    return float(((got.double() - ref.double()).abs() / (1 + ref.double().abs())).max())


def check_against_loop(kind, a, b, s0, reverse, tol, **kw):
    fn, loop = KINDS[kind]
    weight = torch.randn(b.shape, dtype=torch.float64, device=b.device)
    got = values_and_grads(fn, a, b, s0, reverse, weight, **kw)
    ref = values_and_grads(loop, a.double(), b.double(), None if s0 is None else s0.double(), reverse, weight)
    assert got[0].dtype == b.dtype
    names = ["h", "da", "db", "d_initial_state"]
    for name, g, r in zip(names, got, ref):
        assert g.shape == r.shape, name
        assert rel_err(g, r) < tol, (name, rel_err(g, r))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", [1, 2, 7, 33, 100])
def test_torch_fp64_matches_loop(kind, reverse, T):
    a, b, s0 = make_inputs(kind, 2, T, 5, h0=T != 2)
    check_against_loop(kind, a, b, s0, reverse, 1e-10, backend="torch")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reverse", [False, True])
def test_torch_extreme_gates(kind, reverse):
    a, b, s0 = make_inputs(kind, 2, 40, 6, extreme=True)
    check_against_loop(kind, a, b, s0, reverse, 1e-9, backend="torch")
    a32, b32, s32 = (x.float() for x in (a, b, s0))
    check_against_loop(kind, a32, b32, s32, reverse, 1e-4, backend="torch")


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_low_precision_accumulates_in_fp32(kind):
    a, b, s0 = make_inputs(kind, 2, 300, 4, dtype=torch.bfloat16)
    fn, loop = KINDS[kind]
    h = fn(a, b, s0, backend="torch")
    assert h.dtype == torch.bfloat16
    ref = loop(a, b, s0)  # the same bf16 inputs, fp64 arithmetic
    assert rel_err(h, ref) < 1e-2  # one bf16 rounding of the output, no error growth over 300 steps


def test_torch_zero_gate_cuts_history():
    a, b, s0 = make_inputs("diagonal", 1, 9, 3)
    a[:, 4] = 0.0
    h = linear_scan(a, b, s0, backend="torch")
    b2 = b.clone()
    b2[:, :4] = torch.randn_like(b2[:, :4])  # changing inputs before the zero gate changes nothing after it
    h2 = linear_scan(a, b2, torch.randn_like(s0), backend="torch")
    torch.testing.assert_close(h[:, 4:], h2[:, 4:], rtol=0, atol=0)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 steps x 4 units so small interpreter shapes cross several tiles and unit blocks."""
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_T", {"diagonal": 4, "block2": 4})
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_D", 4)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,h0", [(1, True), (6, False), (11, True)])
def test_triton_interpreter_matches_loop(small_tiles, kind, reverse, T, h0):
    a, b, s0 = make_inputs(kind, 2, T, 5, dtype=torch.float32, h0=h0)
    check_against_loop(kind, a, b, s0, reverse, 1e-5, backend="triton")


@pytest.mark.parametrize("kind", list(KINDS))
def test_triton_interpreter_fp64_extreme_gates(small_tiles, kind):
    a, b, s0 = make_inputs(kind, 1, 9, 3, extreme=True)
    check_against_loop(kind, a, b, s0, True, 1e-12, backend="triton")
    check_against_loop(kind, a, b, s0, False, 1e-12, backend="triton")


@pytest.mark.parametrize("kind", list(KINDS))
def test_triton_interpreter_bf16_inputs(small_tiles, kind):
    a, b, s0 = make_inputs(kind, 1, 9, 3, dtype=torch.bfloat16)
    fn, loop = KINDS[kind]
    h = fn(a, b, s0.float(), backend="triton")
    assert h.dtype == torch.bfloat16
    assert rel_err(h, loop(a, b, s0.float())) < 1e-2


def test_non_contiguous_inputs(small_tiles):
    a, b, s0 = make_inputs("diagonal", 3, 6, 2, dtype=torch.float32)
    at, bt = a.transpose(0, 1).contiguous().transpose(0, 1), b[:, :, None, :].expand(3, 6, 2, 2)[:, :, 0]
    ref = linear_scan_loop(at, bt, s0)
    for backend in ("torch", "triton"):
        assert rel_err(linear_scan(at, bt, s0, backend=backend), ref) < 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=torch.randn(2, 3)), r"`a` must have 3 dimensions"),
        (dict(b=torch.randn(2, 4, 3)), r"`a` must have shape \(2, 4, 3\)"),
        (dict(a=torch.randn(2, 5, 3, dtype=torch.float64)), r"`a` and `b` must share a dtype"),
        (
            dict(a=torch.ones(2, 5, 3, dtype=torch.long), b=torch.ones(2, 5, 3, dtype=torch.long)),
            r"`a` must be a floating",
        ),
        (dict(initial_state=torch.randn(2, 4)), r"`initial_state` must have shape \(2, 3\)"),
        (dict(initial_state=torch.randn(2, 3, device="meta")), r"`initial_state` is on meta"),
        (dict(backend="cuda"), r"backend must be one of"),
    ],
)
def test_linear_scan_argument_errors(kwargs, match):
    args = dict(a=torch.randn(2, 5, 3), b=torch.randn(2, 5, 3), initial_state=None, reverse=False, backend=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        linear_scan(**args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reverse=1), r"`reverse` must be a bool"),
        (dict(a=[[1.0]]), r"`a` must be a torch.Tensor"),
    ],
)
def test_linear_scan_argument_type_errors(kwargs, match):
    args = dict(a=torch.randn(2, 5, 3), b=torch.randn(2, 5, 3), initial_state=None, reverse=False, backend=None)
    args.update(kwargs)
    with pytest.raises(TypeError, match=match):
        linear_scan(**args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(A=torch.randn(2, 5, 3, 2)), r"`A` must have 5 dimensions"),
        (dict(A=torch.randn(2, 5, 3, 2, 3)), r"`A` must have shape \(2, 5, 3, 2, 2\)"),
        (dict(b=torch.randn(2, 5, 3, 3)), r"`b` must be \[B, T, D, 2\]"),
        (dict(initial_state=torch.randn(2, 3)), r"`initial_state` must have 3 dimensions"),
    ],
)
def test_block2_scan_argument_errors(kwargs, match):
    args = dict(A=torch.randn(2, 5, 3, 2, 2), b=torch.randn(2, 5, 3, 2), initial_state=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        block2_scan(**args)


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        linear_scan(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 200, 2048])
def test_cuda_triton_matches_torch(kind, reverse, dtype, T):
    a, b, s0 = make_inputs(kind, 3, T, 70, dtype=dtype, extreme=T == 200, device="cuda")
    s0 = s0.float()
    fn, _ = KINDS[kind]
    weight = torch.randn(b.shape, dtype=torch.float64, device="cuda")
    got = values_and_grads(fn, a, b, s0, reverse, weight, backend="triton")
    ref = values_and_grads(fn, a, b, s0, reverse, weight, backend="torch")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for g, r in zip(got, ref):
        assert rel_err(g, r) < tol


@pytest.mark.cuda
@pytest.mark.parametrize("kind", list(KINDS))
def test_cuda_fp64_matches_loop(kind):
    a, b, s0 = make_inputs(kind, 2, 130, 33, extreme=True, device="cuda")
    check_against_loop(kind, a, b, s0, False, 1e-10, backend="triton")
    check_against_loop(kind, a, b, s0, True, 1e-10, backend="torch")


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_double_backward(kind):
    a, b, s0 = (x.requires_grad_() for x in make_inputs(kind, 2, 9, 3))
    fn, _ = KINDS[kind]
    for reverse in (False, True):
        assert torch.autograd.gradgradcheck(lambda *args: fn(*args, reverse=reverse, backend="torch"), (a, b, s0))


def test_triton_offsets_past_int32_are_refused_by_name():
    """The Triton scans index within a sequence with 32-bit offsets: a sequence too large for them is an error naming
    the shape, not a wrong answer (checked on meta tensors: no memory)."""
    from hf_seqmodels.kernels.scan.scan_triton import ScanTritonFunction, check_offsets

    check_offsets("diagonal", 2**21, 2**10 - 1)  # just below the limit
    with pytest.raises(
        ValueError, match=r"linear_scan: the Triton path supports T \* D \* 1 < 2\*\*31.*T=2097152, D=1024"
    ):
        check_offsets("diagonal", 2**21, 2**10)
    with pytest.raises(ValueError, match=r"block2_scan: .*T \* D \* 4 < 2\*\*31"):
        ScanTritonFunction.apply(
            "block2",
            torch.empty(1, 2**20, 2**9, 2, 2, device="meta"),
            torch.empty(1, 2**20, 2**9, 2, device="meta"),
            None,
            False,
        )
