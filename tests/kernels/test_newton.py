"""Newton solver for diagonal / 2x2-block recurrences: parallel == sequential (values and gradients w.r.t. x, the
cell parameters and h0), convergence, and the non-convergence paths (warning + sequential fallback, or an error).

Two toy cells from the ParaRNN paper, written here independently of the package: a diagonal GRU (Jacobian
diagonal) and the CIFG LSTM with peepholes (state [c, h] per unit, 2x2 Jacobian blocks).
"""

import warnings

import pytest
import torch
from reference import recurrence_loop

from hf_seqmodels.kernels.pararnn import NewtonConvergenceError, adjoint_solve, newton_solve, sequential_solve
from hf_seqmodels.kernels.scan import scan_triton

E = 3  # input features


def gru_params(E, D, dtype=torch.float64, scale=0.5):
    """Input weights W [E, 3D], diagonals a [3, D] with each row's norm set to ``scale``, bias [3, D]."""
    W = torch.randn(E, 3 * D, dtype=dtype) / E**0.5
    a = torch.randn(3, D, dtype=dtype)
    a = a * (scale / a.norm(dim=-1, keepdim=True))
    return [W, a, 0.1 * torch.randn(3, D, dtype=dtype)]


def gru_step(h, x, W, a, bias):
    xz, xr, xc = (x @ W).unflatten(-1, (3, -1)).unbind(-2)
    z = torch.sigmoid(a[0] * h + xz + bias[0])
    r = torch.sigmoid(a[1] * h + xr + bias[1])
    c = torch.tanh(a[2] * (h * r) + xc + bias[2])
    return (1 - z) * h + z * c


def gru_jac(h, x, W, a, bias):
    xz, xr, xc = (x @ W).unflatten(-1, (3, -1)).unbind(-2)
    z = torch.sigmoid(a[0] * h + xz + bias[0])
    r = torch.sigmoid(a[1] * h + xr + bias[1])
    c = torch.tanh(a[2] * (h * r) + xc + bias[2])
    dz = z * (1 - z) * a[0]
    dr = r * (1 - r) * a[1]
    dc = (1 - c * c) * a[2] * (r + h * dr)
    return (1 - z) + dz * (c - h) + z * dc


def lstm_params(E, D, dtype=torch.float64, scale=0.5):
    """a rows: recurrent a_f, a_z, a_o, then the peepholes c_f, c_o."""
    W = torch.randn(E, 3 * D, dtype=dtype) / E**0.5
    a = torch.randn(5, D, dtype=dtype)
    a = a * (scale / a.norm(dim=-1, keepdim=True))
    return [W, a, 0.1 * torch.randn(3, D, dtype=dtype)]


def _lstm_gates(s, x, W, a, bias):
    c_prev, h_prev = s.unbind(-1)
    xf, xz, xo = (x @ W).unflatten(-1, (3, -1)).unbind(-2)
    f = torch.sigmoid(a[0] * h_prev + a[3] * c_prev + xf + bias[0])
    z = torch.tanh(a[1] * h_prev + xz + bias[1])
    c = f * c_prev + (1 - f) * z
    o = torch.sigmoid(a[2] * h_prev + a[4] * c + xo + bias[2])
    return c_prev, h_prev, f, z, c, o


def lstm_step(s, x, W, a, bias):
    *_, c, o = _lstm_gates(s, x, W, a, bias)
    return torch.stack((c, o * torch.tanh(c)), -1)


def lstm_jac(s, x, W, a, bias):
    c_prev, h_prev, f, z, c, o = _lstm_gates(s, x, W, a, bias)
    df_dc, df_dh = f * (1 - f) * a[3], f * (1 - f) * a[0]
    dz_dh = (1 - z * z) * a[1]
    dc_dc = f + (c_prev - z) * df_dc
    dc_dh = (c_prev - z) * df_dh + (1 - f) * dz_dh
    do = o * (1 - o)
    do_dc, do_dh = do * a[4] * dc_dc, do * (a[2] + a[4] * dc_dh)
    tc = torch.tanh(c)
    dh_dc = do_dc * tc + o * (1 - tc * tc) * dc_dc
    dh_dh = do_dh * tc + o * (1 - tc * tc) * dc_dh
    return torch.stack((torch.stack((dc_dc, dc_dh), -1), torch.stack((dh_dc, dh_dh), -1)), -2)


CELLS = {
    "gru": dict(step=gru_step, jac=gru_jac, params=gru_params, structure="diagonal", tail=()),
    "lstm": dict(step=lstm_step, jac=lstm_jac, params=lstm_params, structure="block2", tail=(2,)),
}


def make_problem(cell, B, T, D, dtype=torch.float64, h0=True, scale=0.5, device="cpu"):
    spec = CELLS[cell]
    x = torch.randn(B, T, E, dtype=dtype)
    params = spec["params"](E, D, dtype, scale)
    s0 = torch.randn(B, D, *spec["tail"], dtype=dtype) if h0 else None
    return [t.to(device) if t is not None else None for t in (x, *params, s0)]


def solve(cell, x, params, h0, how, **kw):
    spec = CELLS[cell]
    if how == "loop":  # the independent reference
        if h0 is None:
            h0 = torch.zeros(x.shape[0], params[1].shape[-1], *spec["tail"], dtype=x.dtype, device=x.device)
        return recurrence_loop(spec["step"], x, params, h0)
    D = params[1].shape[-1]
    if how == "sequential":
        return sequential_solve(spec["step"], x, params, h0, state_size=D, structure=spec["structure"])
    if how == "adjoint":  # the loop's forward (no graph), the adjoint backward
        with torch.no_grad():
            h = solve(cell, x, params, h0, "loop")
        return adjoint_solve(
            lambda: h, spec["step"], spec["jac"], x, params, h0, state_size=D, structure=spec["structure"]
        )
    jac = spec["jac"] if how == "newton" else None  # "newton_autograd_jac": Jacobian derived by autograd
    return newton_solve(spec["step"], jac, x, params, h0, state_size=D, structure=spec["structure"], **kw)


def values_and_grads(cell, inputs, how, weight, **kw):
    """Solve, backprop a random linear loss; returns [h, dx, dparams..., dh0] (skipping frozen inputs)."""
    x, *params, h0 = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
    h = solve(cell, x, params, h0, how, **kw)
    (h.double() * weight).sum().backward()
    return [h.detach()] + [t.grad for t in (x, *params, h0) if t is not None and t.requires_grad]


def max_err(got, ref):
    """Largest error of each tensor relative to its largest reference value (at least 1)."""
    return max(float((g.double() - r.double()).abs().max()) / max(1.0, float(r.abs().max())) for g, r in zip(got, ref))


@pytest.mark.parametrize("cell", list(CELLS))
def test_toy_jacobians_match_autograd(cell):
    spec = CELLS[cell]
    x, *params, _ = make_problem(cell, 2, 5, 4)
    hp = torch.randn(2, 5, 4, *spec["tail"], dtype=torch.float64, requires_grad=True)
    J = spec["jac"](hp.detach(), x, *params)
    for b, t, d in [(0, 0, 0), (1, 4, 3), (1, 2, 1)]:
        # the full Jacobian of one output unit w.r.t. every previous state: nonzero only at the same (b, t, d)
        full = torch.autograd.functional.jacobian(lambda v: spec["step"](v, x, *params)[b, t, d], hp)
        idx = (slice(None), b, t, d) if spec["tail"] else (b, t, d)
        torch.testing.assert_close(J[b, t, d], full[idx])
        full[idx] = 0
        assert float(full.abs().max()) == 0.0


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("how", ["newton", "newton_autograd_jac", "adjoint"])
@pytest.mark.parametrize("T,h0", [(1, True), (37, True), (64, False)])
def test_parallel_matches_sequential(cell, how, T, h0):
    inputs = make_problem(cell, 2, T, 4, h0=h0)
    for t in inputs:
        if t is not None:
            t.requires_grad_()
    inputs[3].requires_grad_(False)  # a frozen parameter (bias)
    weight = torch.randn(2, T, 4, *CELLS[cell]["tail"], dtype=torch.float64)
    got = values_and_grads(cell, inputs, how, weight)
    ref = values_and_grads(cell, inputs, "loop", weight)
    seq = values_and_grads(cell, inputs, "sequential", weight)
    assert len(got) == len(ref) == (5 if h0 else 4)
    assert max_err(got, ref) < 1e-10
    assert max_err(seq, ref) < 1e-13


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradient_of_x_only_and_of_params_only(cell):
    x, *params, s0 = make_problem(cell, 2, 20, 3)
    weight = torch.randn(2, 20, 3, *CELLS[cell]["tail"], dtype=torch.float64)
    ref = values_and_grads(cell, [x.requires_grad_(), *params, s0], "loop", weight)
    got = values_and_grads(cell, [x, *params, s0], "newton", weight)
    assert max_err(got, ref) < 1e-10
    x.requires_grad_(False)
    ref = values_and_grads(cell, [x, params[0].requires_grad_(), *params[1:], s0], "loop", weight)
    got = values_and_grads(cell, [x, *params, s0], "newton", weight)
    assert max_err(got, ref) < 1e-10


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_converges_in_a_few_iterations(cell, dtype):
    x, *params, s0 = make_problem(cell, 2, 1024, 8, dtype=dtype, scale=1.0)
    h, info = solve(cell, x, params, s0, "newton", return_info=True)  # default tol: 1e-12 (fp64), 1e-5 (fp32)
    assert info.converged and not info.fallback
    assert info.residual <= (1e-12 if dtype == torch.float64 else 1e-5)
    assert 1 <= info.iterations <= 6
    ref = solve(cell, x.double(), [p.double() for p in params], s0.double(), "loop")
    assert float((h.double() - ref).abs().max()) < (1e-10 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_converges_at_its_default_tol(cell, dtype):
    x, *params, s0 = make_problem(cell, 2, 256, 8, scale=1.0)
    h, info = solve(
        cell, x.to(dtype), [p.to(dtype) for p in params], s0.to(dtype), "newton", on_fail="raise", return_info=True
    )
    assert h.dtype == dtype and info.converged and info.iterations <= 4
    ref = solve(cell, x.to(dtype).double(), [p.to(dtype).double() for p in params], s0.to(dtype).double(), "loop")
    assert max_err([h], [ref]) < (1e-1 if dtype == torch.bfloat16 else 1.5e-2)  # a few ulp of the state


def test_max_iter_T_is_exact_even_for_an_expanding_cell():
    """After k Newton steps the first k states are exact, whatever the cell."""

    def step(h, x):
        return 2.5 * torch.sin(h) + x

    def jac(h, x):
        return 2.5 * torch.cos(h)

    x = torch.randn(2, 10, 3, dtype=torch.float64)
    h, info = newton_solve(step, jac, x, state_size=3, max_iter=10, tol=1e-9, on_fail="raise", return_info=True)
    ref = recurrence_loop(step, x, (), torch.zeros(2, 3, dtype=torch.float64))
    assert info.converged
    assert float((h - ref).abs().max()) < 1e-8


@pytest.mark.parametrize("cell", list(CELLS))
def test_non_convergence_warns_and_falls_back_to_sequential(cell):
    inputs = make_problem(cell, 2, 25, 4)
    for t in inputs:
        t.requires_grad_()
    weight = torch.randn(2, 25, 4, *CELLS[cell]["tail"], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"residual .*falling back to the sequential solve"):
        got = values_and_grads(cell, inputs, "newton", weight, max_iter=1, tol=1e-15)
    ref = values_and_grads(cell, inputs, "loop", weight)
    assert max_err(got, ref) < 1e-10  # fallback values, adjoint gradients at the sequential solution
    x, *params, s0 = (t.detach() for t in inputs)
    with pytest.warns(RuntimeWarning):
        _, info = solve(cell, x, params, s0, "newton", max_iter=1, tol=1e-15, return_info=True)
    assert info.fallback and not info.converged and info.iterations == 1 and info.residual > 1e-15


@pytest.mark.parametrize("cell", list(CELLS))
def test_non_convergence_raises_with_the_residual(cell):
    x, *params, s0 = make_problem(cell, 2, 25, 4)
    with pytest.raises(NewtonConvergenceError, match=r"after 1 Newton iterations: relative residual") as exc:
        solve(cell, x, params, s0, "newton", max_iter=1, tol=1e-15, on_fail="raise")
    residual = float(str(exc.value).split("relative residual ")[1].split()[0])
    assert 1e-15 < residual < 1.0


def test_non_finite_residual_is_not_convergence():
    x, *params, s0 = make_problem("gru", 1, 12, 3)
    x[0, 5, 0] = float("nan")
    with pytest.raises(NewtonConvergenceError, match="relative residual nan"):
        solve("gru", x, params, s0, "newton", on_fail="raise")
    with pytest.warns(RuntimeWarning, match="falling back"):
        h = solve("gru", x, params, s0, "newton")
    ref = solve("gru", x, params, s0, "loop")
    assert torch.isnan(h[:, 5:]).all() and torch.equal(h[:, :5], ref[:, :5])


def test_converged_solve_does_not_warn():
    x, *params, s0 = make_problem("lstm", 2, 30, 4, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve("lstm", x, params, s0, "newton")


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_T", {"diagonal": 4, "block2": 4})
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_D", 4)


@pytest.mark.parametrize("cell", list(CELLS))
def test_triton_scans_in_the_interpreter(small_tiles, cell):
    inputs = make_problem(cell, 1, 9, 3, dtype=torch.float32)
    for t in inputs:
        t.requires_grad_()
    weight = torch.randn(1, 9, 3, *CELLS[cell]["tail"], dtype=torch.float64)
    got = values_and_grads(cell, inputs, "newton", weight, backend="triton")
    ref = values_and_grads(cell, [t.double() for t in inputs], "loop", weight)
    assert max_err(got, ref) < 1e-4


def _args(**kw):
    x, *params, s0 = make_problem("gru", 2, 5, 4)
    args = dict(step=gru_step, jac=gru_jac, x=x, params=tuple(params), h0=s0)
    args.update(kw)
    return args


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(structure="full"), r"`structure` must be one of"),
        (dict(h0=None), r"pass `h0` or a positive int `state_size`"),
        (dict(h0=torch.zeros(2, 4, 2)), r"`h0` must be \[B, D\]"),
        (dict(h0=torch.zeros(3, 4, dtype=torch.float64)), r"`h0` has batch 3"),
        (dict(step=lambda h, x, *p: h[..., :2]), r"`step` must return a tensor shaped like h_prev"),
        (dict(jac=lambda h, x, *p: h.unsqueeze(-1)), r"`jac` must return shape \(2, 5, 4\)"),
        (dict(on_fail="ignore"), r"`on_fail` must be one of"),
        (dict(max_iter=-1), r"`max_iter` must be a non-negative int"),
        (dict(tol=0.0), r"`tol` must be a positive number"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        newton_solve(**_args(**kwargs))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(params=[torch.zeros(1), 1.0]), r"`params` must be a tuple of tensors"),
        (dict(step="gru"), r"`step` must be callable"),
        (dict(jac=1.0), r"`jac` must be None or callable"),
        (dict(max_iter=2.0), r"`max_iter` must be a non-negative int"),
        (dict(tol="small"), r"`tol` must be a positive number"),
        (dict(on_fail=None), r"`on_fail` must be a str"),
    ],
)
def test_argument_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        newton_solve(**_args(**kwargs))


@pytest.mark.cuda
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T", [1, 333, 2048])
def test_cuda_newton_matches_sequential(cell, T):
    inputs = make_problem(cell, 4, T, 96, dtype=torch.float32, device="cuda")
    for t in inputs:
        t.requires_grad_()
    weight = torch.randn(4, T, 96, *CELLS[cell]["tail"], dtype=torch.float64, device="cuda")
    got = values_and_grads(cell, inputs, "newton", weight, on_fail="raise")
    ref = values_and_grads(cell, [t.double() for t in inputs], "loop", weight)
    err = max_err(got, ref)
    assert err < 1e-4, err


def test_adjoint_solve_checks_what_solve_returns():
    x, *params, h0 = make_problem("gru", 2, 5, 4)
    with pytest.raises(ValueError, match=r"adjoint_solve: `solve\(\)` must return the states \(2, 5, 4\)"):
        adjoint_solve(lambda: torch.zeros(2, 4, 4), gru_step, gru_jac, x, params, h0, structure="diagonal")
    with pytest.raises(TypeError, match="`solve` must be callable"):
        adjoint_solve(None, gru_step, gru_jac, x, params, h0)
