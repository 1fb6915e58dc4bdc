"""Fused Triton Newton solve of the built-in ParaRNN cells (kernels/pararnn/fused_triton.py).

In the interpreter (tiny tiles, so several time tiles and unit blocks are crossed): fused == generic newton_solve ==
a plain fp64 loop of the layer's cell step, values and gradients for u, a and h0, with and without a padding mask;
the non-convergence paths; the hook that makes the built-in cells use the kernel; the GPU suite's ParaRNN check at
tiny sizes. Tests marked ``cuda`` repeat the comparison at larger shapes on a GPU.
"""

import os
import warnings

import pytest
import torch

from benchmarks.gpu import checks, timings
from hf_seqmodels.kernels.pararnn import NewtonConvergenceError, fused_triton, newton_solve, sequential_solve
from hf_seqmodels.kernels.pararnn.fused_triton import fused_newton_gru, fused_newton_lstm
from hf_seqmodels.kernels.scan import scan_triton
from hf_seqmodels.layers.pararnn import ParaGRUCell, ParaLSTMCell

F64 = torch.float64
CELLS = {
    "gru": dict(fn=fused_newton_gru, cls=ParaGRUCell, structure="diagonal", tail=(), n_a=3),
    "lstm": dict(fn=fused_newton_lstm, cls=ParaLSTMCell, structure="block2", tail=(2,), n_a=5),
}


@pytest.fixture
def interpreter(monkeypatch):
    """The Triton kernels on CPU tensors in the interpreter, with tiles of 4 steps x 4 units."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter runs where there is no GPU (conftest sets TRITON_INTERPRET=1)")
    monkeypatch.setattr(fused_triton, "MAX_BLOCK_T", {"gru": 4, "lstm": 4})
    monkeypatch.setattr(fused_triton, "MAX_BLOCK_D", 4)
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_T", {"diagonal": 4, "block2": 4})
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_D", 4)


def _layer_cell(cell):
    """A throwaway layer whose step/jacobian serve as the references (they read no weights from the module)."""
    return CELLS[cell]["cls"](1, 1)


def _step(cell):
    return _layer_cell(cell).step


def make_problem(cell, B, T, D, dtype=F64, h0=True, mask=False, a_scale=1.0, device="cpu"):
    spec = CELLS[cell]
    u = torch.randn(B, T, 3, D, dtype=F64)
    a = torch.randn(spec["n_a"], D, dtype=F64)
    a = a * (0.5 * a_scale / a.norm(dim=-1, keepdim=True))  # the paper's init: each row's norm 0.5
    s0 = torch.randn(B, D, *spec["tail"], dtype=F64) if h0 else None
    m = None
    if mask:
        m = torch.ones(B, T, dtype=F64)
        m[0, : T // 3] = 0  # left padding
        m[-1, T // 2] = 0  # a hole
    out = [x.to(device=device, dtype=dtype) if x is not None else None for x in (u, a, s0)]
    return out + [m.to(device) if m is not None else None]


def loop_reference(cell, u, a, h0, mask):
    """h_t = m_t * step(h_{t-1}, u_t) + (1 - m_t) * h_{t-1}, one step at a time (differentiable by autograd)."""
    step, tail = _step(cell), CELLS[cell]["tail"]
    h = torch.zeros(u.shape[0], u.shape[-1], *tail, dtype=u.dtype, device=u.device) if h0 is None else h0
    out = []
    for t in range(u.shape[1]):
        nxt = step(h, u[:, t], a)
        if mask is not None:
            m = mask[:, t].to(u.dtype).reshape(-1, *([1] * (h.dim() - 1)))
            nxt = m * nxt + (1 - m) * h
        h = nxt
        out.append(h)
    return torch.stack(out, 1)


def generic_newton(cell, u, a, h0, mask, **kw):
    """newton_solve with the layer's step and closed-form Jacobian (unmasked problems only)."""
    assert mask is None
    c = _layer_cell(cell)
    return newton_solve(c.step, c.jacobian, u, (a,), h0, state_size=u.shape[-1], structure=c.structure, **kw)


def values_and_grads(solve, inputs, weight):
    u, a, h0 = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs[:3]]
    h = solve(u, a, h0, inputs[3])
    (h.double() * weight).sum().backward()
    return [h.detach()] + [x.grad for x in (u, a, h0) if x is not None]


def max_err(got, ref):
    """Largest error of each tensor relative to its largest reference value (at least 1)."""
    return max(
        float((g.double() - r.double()).abs().max()) / max(1.0, float(r.abs().max()))
        for g, r in zip([x.detach() for x in got], [x.detach() for x in ref])
    )


def fused(cell, **kw):
    return lambda u, a, h0, mask: CELLS[cell]["fn"](u, a, h0, mask, backend="triton", **kw)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("B,T,D,h0,mask", [(2, 1, 4, True, False), (2, 13, 6, True, True), (1, 40, 3, False, False)])
def test_fused_matches_generic_newton_and_the_loop(interpreter, cell, B, T, D, h0, mask):
    inputs = make_problem(cell, B, T, D, h0=h0, mask=mask)
    weight = torch.randn(B, T, D, *CELLS[cell]["tail"], dtype=F64)
    got = values_and_grads(fused(cell, on_fail="raise"), inputs, weight)
    ref = values_and_grads(lambda *x: loop_reference(cell, *x), inputs, weight)
    assert len(got) == len(ref) == (4 if h0 else 3)
    assert max_err(got, ref) < 1e-10
    if mask:  # the generic solver through the fused op's PyTorch path (mask row appended, as the layer does)
        other = values_and_grads(lambda *x: CELLS[cell]["fn"](*x, backend="torch"), inputs, weight)
    else:
        other = values_and_grads(lambda *x: generic_newton(cell, *x), inputs, weight)
    assert max_err(other, ref) < 1e-10


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp32_and_bf16_inputs_compute_in_fp32(interpreter, cell, dtype):
    u, a, s0, mask = make_problem(cell, 2, 11, 4, dtype=dtype, mask=True)
    weight = torch.randn(2, 11, 4, *CELLS[cell]["tail"], dtype=F64)
    h, info = CELLS[cell]["fn"](u, a, s0, mask, backend="triton", return_info=True)
    assert h.dtype == dtype and info.converged and info.residual <= 1e-5  # default tol of the fp32 compute dtype
    # At the default tol the fp32 error is the stopping residual (<= 1e-5) amplified by the recurrence: up to ~9e-6
    # in 40 draws, so a 1e-5 bound failed a few percent of runs. With tol 1e-6 it is <= 1.2e-6 (fp32 arithmetic),
    # which a computation in a narrower dtype would exceed by orders of magnitude.
    tol = {"tol": 1e-6} if dtype == torch.float32 else {}
    got = values_and_grads(fused(cell, **tol), (u, a, s0, mask), weight)
    ref = values_and_grads(lambda *x: loop_reference(cell, *x), [x.double() for x in (u, a, s0, mask)], weight)
    assert [g.dtype for g in got] == [dtype] * 4
    assert max_err(got, ref) < (1e-5 if dtype == torch.float32 else 2e-2)  # bf16: rounding of the stored outputs


def bf16_half_ulp(x):
    """Half the spacing of bf16 numbers (8 significant bits) at |x|: 2^(e - 8) for |x| in [2^e, 2^(e + 1))."""
    _, e = torch.frexp(x.double().abs())
    return torch.ldexp(torch.ones_like(x, dtype=F64), e - 9)


@pytest.mark.parametrize("cell", list(CELLS))
def test_bf16_outputs_are_the_fp32_results_rounded_to_nearest_even(interpreter, cell):
    """The kernels compute in fp32 and round ``h`` and ``du`` to bf16 once, when storing. On a GPU that cast rounds to
    nearest even; triton 3.6's interpreter truncates unless kernels/triton_utils.py's fix is installed (each launch
    calls ``patch_interpreter()``), which these checks catch: truncation is off by up to a whole ulp in about half the
    entries."""
    B, T, D = 2, 13, 6
    u, a, s0, mask = make_problem(cell, B, T, D, dtype=torch.bfloat16, mask=True)
    fn = CELLS[cell]["fn"]
    h16, info = fn(u, a, s0, mask, backend="triton", on_fail="raise", return_info=True)
    h32 = fn(u.float(), a.float(), s0.float(), mask, backend="triton", on_fail="raise")
    assert h16.dtype == torch.bfloat16 and info.converged
    assert torch.equal(h16, h32.to(torch.bfloat16))  # the same fp32 solve, rounded to nearest even
    # against the fp64 loop on the same (bf16-valued) inputs: half an ulp of rounding plus the fp32 solve's error
    ref = loop_reference(cell, u.double(), a.double(), s0.double(), mask)
    bound = torch.maximum(bf16_half_ulp(ref), bf16_half_ulp(h16)) + 2e-5
    assert ((h16.double() - ref).abs() <= bound).all(), float(((h16.double() - ref).abs() - bound).max())
    # the adjoint kernel at this solution: du rounded once, the sums for da and dh0 kept in fp32
    gh = torch.randn(h16.shape).to(torch.bfloat16)
    m = mask.float()
    du16, da16, dh016 = fused_triton._fused_adjoint(cell, u, a, s0, m, h16, gh)
    du32, da32, dh032 = fused_triton._fused_adjoint(cell, u.float(), a.float(), s0.float(), m, h16.float(), gh.float())
    assert du16.dtype == torch.bfloat16 and torch.equal(du16, du32.to(torch.bfloat16))
    assert torch.equal(da16, da32.to(torch.bfloat16)) and torch.equal(dh016, dh032.to(torch.bfloat16))


@pytest.mark.parametrize("cell", list(CELLS))
def test_non_convergence_warns_and_falls_back_to_the_sequential_kernel(interpreter, cell):
    inputs = make_problem(cell, 2, 14, 5, a_scale=6.0)
    weight = torch.randn(2, 14, 5, *CELLS[cell]["tail"], dtype=F64)
    with pytest.warns(
        RuntimeWarning,
        match=r"after 1 Newton iterations: relative residual .*falling back to the "
        r"sequential solve",
    ):
        got = values_and_grads(fused(cell, max_iter=1, tol=1e-14), inputs, weight)
    ref = values_and_grads(lambda *x: loop_reference(cell, *x), inputs, weight)
    assert max_err(got, ref) < 1e-12  # fallback values, adjoint gradients at the sequential solution
    u, a, s0, _ = inputs
    with pytest.warns(RuntimeWarning):
        _, info = CELLS[cell]["fn"](u, a, s0, max_iter=1, tol=1e-14, backend="triton", return_info=True)
    assert info.fallback and not info.converged and info.iterations == 1 and info.residual > 1e-14
    with pytest.raises(
        NewtonConvergenceError,
        match=r"fused_newton_\w+: no convergence after 0 Newton iterations: "
        r"relative residual \d",
    ):
        CELLS[cell]["fn"](u, a, s0, max_iter=0, backend="triton", on_fail="raise")


@pytest.mark.parametrize("cell", list(CELLS))
def test_block_t_minus_one_iterations_converge_even_for_a_strongly_nonlinear_cell(interpreter, cell):
    """Each tile starts from the exact carried state and its initial guess makes step 0 exact: after k iterations
    its first k + 1 steps are exact, so 3 iterations solve tiles of 4 steps whatever the cell."""
    u, a, s0, _ = make_problem(cell, 1, 10, 3, a_scale=16.0)
    u = 3 * u
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, info = CELLS[cell]["fn"](u, a, s0, max_iter=3, tol=1e-12, backend="triton", return_info=True)
    assert info.converged and info.iterations <= 3
    ref = sequential_solve(_step(cell), u, (a,), s0, structure=CELLS[cell]["structure"])
    assert max_err([h], [ref]) < 1e-10
    with pytest.raises(NewtonConvergenceError):  # global sweeps need more here
        generic_newton(cell, u, a, s0, None, max_iter=3, tol=1e-12, on_fail="raise")


def test_non_finite_input_is_not_convergence(interpreter):
    u, a, s0, _ = make_problem("gru", 1, 9, 3)
    u[0, 5, 1, 0] = float("nan")
    with pytest.raises(NewtonConvergenceError, match="relative residual inf"):
        fused_newton_gru(u, a, s0, backend="triton", on_fail="raise")
    with pytest.warns(RuntimeWarning, match="falling back"):
        h = fused_newton_gru(u, a, s0, backend="triton")
    ref = loop_reference("gru", u, a, s0, None)
    assert torch.isnan(h[:, 5:, 0]).all() and torch.allclose(h[:, :5], ref[:, :5], rtol=0, atol=1e-13)


def _args(**kw):
    u, a, s0, _ = make_problem("gru", 2, 5, 4)
    args = dict(u=u, a=a, h0=s0)
    args.update(kw)
    return args


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(u=torch.randn(2, 5, 4)), r"`u` must have 4 dimensions"),
        (dict(u=torch.randn(2, 5, 2, 4, dtype=F64)), r"`u` must be \[B, T, 3, D\]"),
        (dict(a=torch.randn(5, 4, dtype=F64)), r"`a` must be \[3, D\]"),
        (dict(h0=torch.zeros(2, 4, 2, dtype=F64)), r"`h0` must have shape \(2, 4\)"),
        (dict(mask=torch.ones(2, 4)), r"`mask` must be a \[B, T\]"),
        (dict(max_iter=-1), r"`max_iter` must be a non-negative int"),
        (dict(tol=0.0), r"`tol` must be a positive number"),
        (dict(on_fail="ignore"), r"`on_fail` must be one of"),
        (dict(backend="cuda"), r"backend must be one of"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fused_newton_gru(**_args(**kwargs))


# -- the layer hook ------------------------------------------------------------------------------------------------
def _spy(monkeypatch, cls):
    calls = []
    solver = cls.fused_solver

    def spy(*args, **kwargs):
        calls.append(1)
        return solver(*args, **kwargs)

    monkeypatch.setattr(cls, "fused_solver", spy)
    return calls


@pytest.mark.parametrize("cell", list(CELLS))
def test_builtin_cells_use_the_fused_kernel_when_triton_is_selected(interpreter, monkeypatch, cell):
    cls = CELLS[cell]["cls"]
    calls = _spy(monkeypatch, cls)
    monkeypatch.setenv("HF_SEQMODELS_BACKEND", "triton")  # CPU tensors run the kernels in the interpreter
    layer = cls(5, 4).double()
    x = torch.randn(2, 12, 5, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 4, *CELLS[cell]["tail"], dtype=F64, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    w = torch.randn(2, 12, 4, dtype=F64)
    results = []
    for mode in ("parallel", "sequential"):
        out, states = layer(x, h0=h0, mask=mask, mode=mode)
        results.append([out] + list(torch.autograd.grad((out * w).sum(), [x, h0, *layer.parameters()])))
    assert len(calls) == 1
    assert max_err(*results) < 1e-10
    monkeypatch.setenv("HF_SEQMODELS_BACKEND", "torch")
    layer(x, h0=h0, mask=mask)
    assert len(calls) == 1


def test_a_subclass_that_changes_the_step_keeps_the_generic_solver(interpreter, monkeypatch):
    class Leakier(ParaGRUCell):
        def step(self, h, u, a):
            return 0.5 * super().step(h, u, a)

        def jacobian(self, h, u, a):
            return 0.5 * super().jacobian(h, u, a)

    calls = _spy(monkeypatch, ParaGRUCell)
    monkeypatch.setenv("HF_SEQMODELS_BACKEND", "triton")
    layer = Leakier(3, 4).double()
    x = torch.randn(1, 6, 3, dtype=F64)
    out, _ = layer(x)
    assert not calls
    torch.testing.assert_close(out, layer(x, mode="sequential")[0], rtol=1e-9, atol=1e-10)


# -- the GPU suite's ParaRNN sections, at tiny sizes on the CPU -----------------------------------------------------
def test_gpu_suite_pararnn_check_runs_in_the_interpreter(interpreter, capsys):
    rows, ok = checks.pararnn_check_rows(checks.PARARNN_TINY_CASES, device="cpu")
    assert ok, rows
    assert {r["cell"] for r in rows} == {"gru", "lstm"} and all(r["worst"] < 1e-3 for r in rows)


def test_gpu_suite_pararnn_bench_methods_run_in_the_interpreter(interpreter):
    for cell in ("gru", "lstm"):
        methods = timings.pararnn_methods(cell, B=1, T=6, H=4, dtype=torch.float32, device="cpu", backend="triton")
        assert set(methods) == {"fused", "generic", "cudnn", "loop"}
        for name, (fwd, fwd_bwd, leaves) in methods.items():
            fwd()
            if fwd_bwd is not None:
                fwd_bwd()
                assert all(x.grad is not None for x in leaves), name


# -- on a GPU ------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize(
    "B,T,D,mask,dtype",
    [
        (4, 1, 96, False, torch.float32),
        (3, 333, 80, True, torch.float32),
        (4, 2048, 256, False, torch.float32),
        (2, 1000, 64, True, F64),
        (2, 1500, 128, False, torch.bfloat16),
    ],
)
def test_cuda_fused_matches_the_torch_path(cell, B, T, D, mask, dtype):
    inputs = make_problem(cell, B, T, D, dtype=dtype, mask=mask, device="cuda")
    weight = torch.randn(B, T, D, *CELLS[cell]["tail"], dtype=F64, device="cuda")
    got = values_and_grads(lambda *x: CELLS[cell]["fn"](*x, on_fail="raise"), inputs, weight)
    ref = values_and_grads(
        lambda *x: CELLS[cell]["fn"](*x, backend="torch", on_fail="raise"),
        [x.double() if x is not None else None for x in inputs],
        weight,
    )
    err = max_err(got, ref)
    assert err < {torch.float32: 1e-4, F64: 1e-10, torch.bfloat16: 3e-2}[dtype], err


@pytest.mark.cuda
@pytest.mark.parametrize("cell", list(CELLS))
def test_cuda_cell_uses_the_fused_kernel_and_falls_back(monkeypatch, cell):
    cls = CELLS[cell]["cls"]
    calls = _spy(monkeypatch, cls)
    layer = cls(32, 64).cuda()
    x = torch.randn(2, 500, 32, device="cuda")
    mask = torch.ones(2, 500, device="cuda")
    mask[0, :100] = 0
    out, _ = layer(x, mask=mask)
    assert calls
    torch.testing.assert_close(out, layer(x, mask=mask, mode="sequential")[0], rtol=1e-4, atol=1e-4)
    with pytest.warns(RuntimeWarning, match="falling back"):
        fallback, _ = layer(x, mask=mask, max_iter=0)
    torch.testing.assert_close(fallback, out, rtol=1e-4, atol=1e-4)
