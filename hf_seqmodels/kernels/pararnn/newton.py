"""Parallel-in-time solve of a nonlinear recurrence ``h_t = step(h_{t-1}, x_t)`` by Newton's method (ParaRNN).

All ``T`` equations ``h_t - step(h_{t-1}, x_t) = 0`` form one system. Starting from ``h_t = step(0, x_t)``, each
Newton iteration linearizes ``step`` at the current iterate and solves

    dh_t = J_t dh_{t-1} + r_t,   r_t = step(h_{t-1}, x_t) - h_t,   J_t = d step / d h_{t-1}   (dh_{-1} = 0)

with one parallel linear scan (``linear_scan`` for a diagonal Jacobian, ``block2_scan`` for 2x2 blocks), then sets
``h <- h + dh``. After ``k`` iterations the first ``k`` steps are exact, so ``max_iter >= T`` always converges; for
contractive cells a handful of iterations reach round-off.

The cell is described by two callables, both vectorized over every leading dim (they are called on whole
``[B, T, ...]`` tensors, and on ``[B, 1, ...]`` slices by the sequential solve):

    step(h_prev, x, *params) -> h        # h_prev, h: [B, T, D] ("diagonal") or [B, T, D, 2] ("block2")
    jac(h_prev, x, *params) -> J         # d h / d h_prev: [B, T, D] or [B, T, D, 2, 2], J[..., i, j] = dh_i/dh_prev_j

``x`` is one tensor ``[B, T, ...]`` (pack several inputs into it, e.g. precomputed input projections ``[B, T, 3, D]``)
and ``params`` a tuple of tensors the step uses (weights): pass them here rather than closing over them, so they get
gradients. ``jac=None`` derives the Jacobian with autograd from ``step`` (one extra backward pass per iteration for
"diagonal", two for "block2"); it is only right when the Jacobian really has the declared structure.

An empty sequence (T = 0) is solved by ``step(0, x)`` on the empty ``x``: the empty ``h`` (``h0`` is then the
state after it, unchanged), converged in 0 iterations.

Gradients (``newton_solve``) follow the adjoint method at the solution: one reverse scan
``lambda_t = dL/dh_t + J_{t+1}^T lambda_{t+1}`` and one batched vector-Jacobian product of ``step`` over all ``t``
for ``x`` and ``params``; ``dL/dh0 = J_0^T lambda_0``. No Newton iterate is kept for the backward.

Inside ``hf_seqmodels.context_parallel`` (``newton_solve`` only; no ``h0``, no packing) ``x`` is this rank's slice of
the sequence and the system is the whole sequence's: each iteration's previous states take the previous rank's last
state at the slice's first position (a halo of one position), the linear scan is the distributed one
(``linear_scan``/``block2_scan`` on a slice), and the residual is the maximum over the ranks, so every rank stops
after the same iteration. The fallback is the step-by-step solve passed from rank to rank
(``context_parallel.relay``). The adjoint backward runs the reversed distributed scan, its ``J_{t+1}`` at a slice's
last position the next rank's first Jacobian (a halo the other way).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from torch.autograd.function import once_differentiable

from .. import context_parallel
from .._varlen import check_cu_seqlens
from ..scan import block2_scan, linear_scan

STRUCTURES = ("diagonal", "block2")
ON_FAIL = ("fallback", "raise")
# Default convergence threshold on the relative residual, by state dtype.
# The half-precision floors are ~1.5 ulp of an O(1) state (fp16 ~1.5e-3, bf16 ~1.2e-2).
DEFAULT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}


class NewtonConvergenceError(RuntimeError):
    """``newton_solve(..., on_fail="raise")`` did not reach ``tol`` within ``max_iter`` iterations."""


@dataclasses.dataclass
class NewtonInfo:
    iterations: int  # Newton steps taken
    residual: float  # max |step(h_{t-1}, x_t) - h_t| / max(1, max |h|) at the returned parallel iterate
    converged: bool
    fallback: bool  # the returned states come from the sequential solve


def _shift(h, h0, packed=None):
    """[h0, h_0, ..., h_{T-2}]: the previous state of every step (packed sequences: each start sees its own h0)."""
    if packed is not None:
        prev = torch.cat((torch.zeros_like(h[:, :1]), h[:, :-1]), 1)
        starts = packed.starts(h.device)
        if h0 is None:
            return prev.index_fill(1, starts, 0)
        first = h0.index_select(0, packed.nonempty_index(h.device)).to(h.dtype).unsqueeze(0)
        return prev.index_copy(1, starts, first)
    if context_parallel.active():  # the sequence split over ranks: the previous slice's last state
        first = context_parallel.exchange_halo(h[:, -1:])
    else:
        first = torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1).to(h.dtype)
    return torch.cat((first, h[:, :-1]), 1)


def _call_step(step, h_prev, x, params):
    h = step(h_prev, x, *params)
    if not isinstance(h, torch.Tensor) or h.shape != h_prev.shape:
        got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(
            f"newton_solve: `step` must return a tensor shaped like h_prev {tuple(h_prev.shape)}, got {got}"
        )
    return h


def _autograd_jac(step, structure, h_prev, x, params):
    with torch.enable_grad():
        hp = h_prev.detach().requires_grad_()
        out = step(hp, x.detach(), *(p.detach() for p in params))
        if structure == "diagonal":
            return torch.autograd.grad(out, hp, torch.ones_like(out))[0]
        rows = [
            torch.autograd.grad(out[..., i], hp, torch.ones_like(out[..., i]), retain_graph=i == 0)[0] for i in range(2)
        ]
    return torch.stack(rows, -2)


def _jacobian(cfg, h_prev, x, params):
    if cfg.jac is None:
        return _autograd_jac(cfg.step, cfg.structure, h_prev, x, params)
    J = cfg.jac(h_prev, x, *params)
    want = tuple(h_prev.shape) + ((2,) if cfg.structure == "block2" else ())
    if not isinstance(J, torch.Tensor) or tuple(J.shape) != want:
        got = tuple(J.shape) if isinstance(J, torch.Tensor) else type(J).__name__
        raise ValueError(f"newton_solve: `jac` must return shape {want} for structure {cfg.structure!r}, got {got}")
    return J.to(h_prev.dtype)


def _scan(cfg, J, r, reverse=False):
    fn = linear_scan if cfg.structure == "diagonal" else block2_scan
    return fn(J, r, reverse=reverse, backend=cfg.backend, cu_seqlens=cfg.packed)


def _residual(h, f):
    both = torch.stack(((f - h).abs().max(), h.abs().max()))
    if context_parallel.active():  # the whole sequence's: every rank takes the same decision
        both = context_parallel.global_max(both)
    r, scale = both.tolist()  # one device sync
    return r / max(1.0, scale)


def _empty_solution(step, x, params, state_shape, dtype):
    """The solution of an empty sequence (T = 0): ``step`` on the empty inputs, ``[B, 0, ...]`` in its dtype."""
    zeros = torch.zeros((state_shape[0], 0, *state_shape[1:]), dtype=dtype, device=x.device)
    return _call_step(step, zeros, x, params)


def _sequential(step, x, params, h0, state_shape, dtype, packed=None):
    if x.shape[1] == 0:
        return _empty_solution(step, x, params, state_shape, dtype)
    if packed is not None:  # one sequence after another, each from its own initial state
        out = []
        for i, (s, e) in enumerate(zip(packed.offsets, packed.offsets[1:])):
            if e > s:
                hi = None if h0 is None else h0[i : i + 1]
                out.append(_sequential(step, x[:, s:e], params, hi, (1, *state_shape[1:]), dtype))
        return torch.cat(out, 1)
    h = torch.zeros(state_shape, dtype=dtype, device=x.device) if h0 is None else h0.to(dtype)
    out = []
    for t in range(x.shape[1]):
        h = _call_step(step, h.unsqueeze(1), x[:, t : t + 1], params).squeeze(1)
        out.append(h)
    return torch.stack(out, 1)


def check_convergence(op, iterations, residual, tol, max_iter, on_fail, sequential, stacklevel):
    """The outcome of a Newton solve: (NewtonInfo, None) when the relative residual reached ``tol``; otherwise raise
    NewtonConvergenceError (``on_fail="raise"``) or warn and return (info, ``sequential()``), the fallback's result."""
    info = NewtonInfo(
        iterations=iterations, residual=residual, converged=math.isfinite(residual) and residual <= tol, fallback=False
    )
    if info.converged:
        return info, None
    msg = (
        f"{op}: no convergence after {iterations} Newton iterations: relative residual {residual:.3e} "
        f"(tol {tol:.1e}, max_iter {max_iter})"
    )
    if on_fail == "raise":
        raise NewtonConvergenceError(msg)
    warnings.warn(msg + "; falling back to the sequential solve", RuntimeWarning, stacklevel=stacklevel + 1)
    info.fallback = True
    return info, sequential()


@dataclasses.dataclass
class _Config:
    step: object
    jac: object
    structure: str
    state_shape: tuple  # [B, D] or [B, D, 2]
    tol: float | None
    max_iter: int
    on_fail: str
    backend: str | None
    info: NewtonInfo | None = None
    packed: object = None  # kernels._varlen.Packed for packed sequences
    solve: object = None  # adjoint_solve: the solver of the forward pass
    cp: tuple = ()  # context_parallel.current() of the forward: the backward exchanges over the same group


def _newton(cfg, x, h0, params):
    T = x.shape[1]
    dtype = torch.promote_types(x.dtype, h0.dtype) if h0 is not None else x.dtype
    zeros = torch.zeros((cfg.state_shape[0], T, *cfg.state_shape[1:]), dtype=dtype, device=x.device)
    h = _call_step(cfg.step, zeros, x, params)  # initial guess h_t = step(0, x_t)
    tol = cfg.tol if cfg.tol is not None else DEFAULT_TOL.get(h.dtype, 1e-5)
    it = 0
    while True:
        h_prev = _shift(h, h0, cfg.packed)
        f = _call_step(cfg.step, h_prev, x, params)
        res = _residual(h, f)
        if not math.isfinite(res) or res <= tol or it == cfg.max_iter:
            break
        h = h + _scan(cfg, _jacobian(cfg, h_prev, x, params), f - h)
        it += 1

    def sequential():
        if cfg.cp:  # rank after rank, each from the state the previous slice ended with
            zero = torch.zeros(cfg.state_shape, dtype=h.dtype, device=h.device)
            return context_parallel.relay(
                lambda h_in: _sequential(cfg.step, x, params, h_in, cfg.state_shape, h.dtype), zero
            )
        return _sequential(cfg.step, x, params, h0, cfg.state_shape, h.dtype, cfg.packed)

    info, h_sequential = check_convergence(
        "newton_solve",
        it,
        res,
        tol,
        cfg.max_iter,
        cfg.on_fail,
        sequential,
        stacklevel=2,
    )
    return (h if h_sequential is None else h_sequential), info


class _NewtonFunction(torch.autograd.Function):
    """The recurrence solved by Newton's iterations, or by ``cfg.solve()`` when set (any exact solver, run without a
    graph: :func:`adjoint_solve`), differentiated by the adjoint method at its solution."""

    @staticmethod
    def forward(ctx, cfg, x, h0, *params):
        if cfg.solve is None:
            h, cfg.info = _newton(cfg, x, h0, params)
        else:
            with torch.no_grad():
                h = cfg.solve()
            want = (cfg.state_shape[0], x.shape[1], *cfg.state_shape[1:])
            if not isinstance(h, torch.Tensor) or tuple(h.shape) != want:
                got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
                raise ValueError(f"adjoint_solve: `solve()` must return the states {want}, got {got}")
        ctx.cfg = cfg
        ctx.save_for_backward(h, x, h0, *params)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, gh):
        with context_parallel.within(ctx.cfg.cp):
            return _adjoint_backward(ctx, gh)


def _adjoint_backward(ctx, gh):
    """The gradients of a solved recurrence at its solution ``h`` (saved with x, h0, params), by the adjoint method."""
    cfg = ctx.cfg
    h, x, h0, *params = ctx.saved_tensors
    need_x, need_h0, *need_p = ctx.needs_input_grad[1:]
    h_prev = _shift(h, h0, cfg.packed)
    J = _jacobian(cfg, h_prev, x, params)
    if cfg.structure == "block2":
        J = J.transpose(-1, -2)
    # J_{t+1}; past the slice's last position the next rank's first (zero past the sequence's end)
    last = context_parallel.exchange_halo(J[:, :1], reverse=True) if cfg.cp else torch.zeros_like(J[:, :1])
    J_next = torch.cat((J[:, 1:], last), 1)
    lam = _scan(cfg, J_next, gh.to(h.dtype), reverse=True)

    gx = gp = None
    wanted = [need_x] + need_p
    if any(wanted):
        with torch.enable_grad():
            xd = x.detach().requires_grad_(need_x)
            pd = [p.detach().requires_grad_(n) for p, n in zip(params, need_p)]
            out = cfg.step(h_prev, xd, *pd)
            inputs = [t for t in [xd, *pd] if t.requires_grad]
            grads = iter(torch.autograd.grad(out, inputs, lam, allow_unused=True))
        gx = next(grads) if need_x else None
        gp = [next(grads) if n else None for n in need_p]
    else:
        gp = [None] * len(params)
    gh0 = None
    if need_h0:
        if cfg.packed is None:
            J0, lam0 = J[:, 0], lam[:, 0]
        else:  # each sequence's h0 feeds its first step
            starts = cfg.packed.starts(h.device)
            J0, lam0 = J[0, starts], lam[0, starts]
        gh0 = J0 * lam0 if cfg.structure == "diagonal" else (J0 @ lam0.unsqueeze(-1)).squeeze(-1)
        if cfg.packed is not None:
            gh0 = cfg.packed.per_sequence(gh0)
        gh0 = gh0.to(h0.dtype)
    return None, gx, gh0, *gp


def check_on_fail(op: str, on_fail, name: str = "on_fail") -> None:
    """The one check of an ``on_fail`` setting (``newton_solve``, the fused solvers, ``ParaRNNConfig``)."""
    if not isinstance(on_fail, str):
        raise TypeError(f"{op}: `{name}` must be a str, one of {ON_FAIL}, got {type(on_fail).__name__}")
    if on_fail not in ON_FAIL:
        raise ValueError(f"{op}: `{name}` must be one of {ON_FAIL}, got {on_fail!r}")


def check_newton_options(op: str, tol, max_iter, on_fail, prefix: str = "") -> None:
    """The one check of the Newton settings ``tol`` (a number > 0 or None), ``max_iter`` (an int >= 0) and
    ``on_fail``; ``prefix`` names them as a caller's fields (``"newton_"``: ``newton_tol``, ...)."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"{op}: `{prefix}max_iter` must be a non-negative int, got {type(max_iter).__name__}")
    if max_iter < 0:
        raise ValueError(f"{op}: `{prefix}max_iter` must be a non-negative int, got {max_iter!r}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)):
            raise TypeError(f"{op}: `{prefix}tol` must be a positive number or None, got {type(tol).__name__}")
        if not tol > 0:
            raise ValueError(f"{op}: `{prefix}tol` must be a positive number or None, got {tol!r}")
    check_on_fail(op, on_fail, prefix + "on_fail")


def _check_solve_args(op, step, jac, x, params, h0, state_size, structure, packed=None):
    if not callable(step):
        raise TypeError(f"{op}: `step` must be callable step(h_prev, x, *params) -> h")
    if jac is not None and not callable(jac):
        raise TypeError(f"{op}: `jac` must be None or callable jac(h_prev, x, *params) -> J")
    if structure not in STRUCTURES:
        raise ValueError(f"{op}: `structure` must be one of {STRUCTURES}, got {structure!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: `x` must be a floating-point tensor [B, T, ...], got {type(x).__name__}")
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"{op}: `x` must be a floating-point tensor [B, T, ...], got {x.dtype} {tuple(x.shape)}")
    if not isinstance(params, (tuple, list)) or not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError(f"{op}: `params` must be a tuple of tensors")
    tail = () if structure == "diagonal" else (2,)
    if h0 is not None:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"{op}: `h0` must be a tensor or None, got {type(h0).__name__}")
        if h0.dim() != 2 + len(tail) or tuple(h0.shape[2:]) != tail:
            want = "[B, D]" if structure == "diagonal" else "[B, D, 2]"
            raise ValueError(f"{op}: `h0` must be {want} for structure {structure!r}, got {getattr(h0, 'shape', h0)}")
        if packed is not None and h0.shape[0] != packed.N:
            raise ValueError(f"{op}: `h0` must hold one state per packed sequence ({packed.N}), got {h0.shape[0]}")
        if packed is None and h0.shape[0] != x.shape[0]:
            raise ValueError(f"{op}: `h0` has batch {h0.shape[0]} but `x` has batch {x.shape[0]}")
        if state_size is not None and h0.shape[1] != state_size:
            raise ValueError(f"{op}: `h0` has {h0.shape[1]} units but `state_size` is {state_size}")
        if h0.device != x.device:
            raise ValueError(f"{op}: `h0` is on {h0.device} but `x` is on {x.device}")
        return (x.shape[0], *h0.shape[1:])
    if state_size is not None and (isinstance(state_size, bool) or not isinstance(state_size, int)):
        raise TypeError(
            f"{op}: pass `h0` or a positive int `state_size` (the number of units D), got {type(state_size).__name__}"
        )
    if state_size is None or state_size <= 0:
        raise ValueError(f"{op}: pass `h0` or a positive int `state_size` (the number of units D), got {state_size!r}")
    return (x.shape[0], state_size, *tail)


def newton_solve(
    step,
    jac,
    x,
    params=(),
    h0=None,
    *,
    state_size=None,
    structure="diagonal",
    tol=None,
    max_iter=10,
    on_fail="fallback",
    backend=None,
    return_info=False,
    cu_seqlens=None,
):
    """Solve ``h_t = step(h_{t-1}, x_t, *params)`` for all ``t`` at once with Newton's method.

    Args:
        step, jac: the cell and its Jacobian w.r.t. ``h_prev`` (see the module docstring); ``jac=None`` uses autograd.
        x: ``[B, T, ...]`` inputs; ``params``: tuple of tensors passed to ``step``/``jac`` after ``x``.
        h0: initial state ``[B, D]`` ("diagonal") or ``[B, D, 2]`` ("block2"); None means zeros, then ``state_size``
            (D) is required.
        tol: threshold on ``max|step(h_{t-1}, x_t) - h_t| / max(1, max|h|)``; default by state dtype (fp64 1e-12,
            fp32 1e-5, fp16 5e-3, bf16 4e-2). The state dtype is that of ``step``'s output; in mixed precision
            pass fp32 ``x``/``h0`` to solve in fp32 (the scans accumulate in fp32 anyway).
        max_iter: most Newton iterations (each: one ``step``, one ``jac``, one scan); the residual is checked
            before every iteration and after the last one.
        on_fail: when the residual is above ``tol`` after ``max_iter`` iterations or not finite: ``"fallback"``
            warns (RuntimeWarning) and returns the sequential solve; ``"raise"`` raises NewtonConvergenceError.
        backend: scan backend (None/"auto", "torch", "triton").
        return_info: also return a :class:`NewtonInfo`.
        cu_seqlens: offsets ``[0, l1, l1 + l2, ..., T]`` of packed sequences (batch 1): each is solved from its own
            initial state (``h0`` ``[N, D(, 2)]`` or zeros); no state flows across a boundary.

    Returns ``h`` ``[B, T, D]`` / ``[B, T, D, 2]`` (dtype of ``step``'s output), differentiable w.r.t. ``x``,
    ``params`` and ``h0`` through the adjoint backward.
    """
    op = "newton_solve"
    packed = (
        check_cu_seqlens(op, cu_seqlens, x.shape[0], x.shape[1])
        if isinstance(x, torch.Tensor) and x.dim() >= 2
        else None
    )
    state_shape = _check_solve_args(op, step, jac, x, params, h0, state_size, structure, packed)
    check_newton_options(op, tol, max_iter, on_fail)
    if context_parallel.active() and (h0 is not None or packed is not None or x.shape[1] == 0):
        raise ValueError(
            f"{op} under context_parallel: no `h0` or `cu_seqlens` (the state enters from the previous rank's slice) "
            "and no empty slice (give every rank >= 1 position)"
        )
    if x.shape[1] == 0:
        dtype = torch.promote_types(x.dtype, h0.dtype) if h0 is not None else x.dtype
        h = _empty_solution(step, x, tuple(params), state_shape, dtype)
        info = NewtonInfo(iterations=0, residual=0.0, converged=True, fallback=False)
        return (h, info) if return_info else h
    cfg = _Config(step, jac, structure, state_shape, tol, max_iter, on_fail, backend, packed=packed)
    cfg.cp = context_parallel.current()
    h = _NewtonFunction.apply(cfg, x, h0, *params)
    return (h, cfg.info) if return_info else h


def sequential_solve(step, x, params=(), h0=None, *, state_size=None, structure="diagonal", cu_seqlens=None):
    """The same recurrence, one step at a time (``step`` on ``[B, 1, ...]`` slices): the slow reference and the
    Newton fallback. Differentiable by plain autograd through the loop. ``cu_seqlens``: as in :func:`newton_solve`."""
    op = "sequential_solve"
    context_parallel.refuse(op, "it solves step by step; newton_solve runs on slices")
    packed = (
        check_cu_seqlens(op, cu_seqlens, x.shape[0], x.shape[1])
        if isinstance(x, torch.Tensor) and x.dim() >= 2
        else None
    )
    state_shape = _check_solve_args(op, step, None, x, params, h0, state_size, structure, packed)
    dtype = torch.promote_types(x.dtype, h0.dtype) if h0 is not None else x.dtype
    return _sequential(step, x, tuple(params), h0, state_shape, dtype, packed)


def adjoint_solve(solve, step, jac, x, params=(), h0=None, *, state_size=None, structure="diagonal"):
    """The states of ``h_t = step(h_{t-1}, x_t, *params)`` computed by ``solve()``, differentiable w.r.t. ``x``,
    ``params`` and ``h0`` by the adjoint method (the backward of :func:`newton_solve`: one reverse scan and one
    batched vector-Jacobian product of ``step``).

    ``solve`` is called without arguments and without autograd; it must return the exact solution ``[B, T, D]`` /
    ``[B, T, D, 2]`` (e.g. a step-by-step loop of the same cell: on a CPU the loop's forward is cheaper than Newton's
    iterations, and the adjoint backward is cheaper than autograd through the loop). ``step``, ``jac``, ``x``,
    ``params``, ``h0``, ``state_size``, ``structure``: as in :func:`newton_solve`; ``step`` and ``jac`` serve the
    backward only. No sequence packing (``cu_seqlens``)."""
    op = "adjoint_solve"
    context_parallel.refuse(op, "its solve() sees one slice; newton_solve runs on slices")
    if not callable(solve):
        raise TypeError(f"{op}: `solve` must be callable solve() -> states")
    state_shape = _check_solve_args(op, step, jac, x, params, h0, state_size, structure)
    if x.shape[1] == 0:
        dtype = torch.promote_types(x.dtype, h0.dtype) if h0 is not None else x.dtype
        return _empty_solution(step, x, tuple(params), state_shape, dtype)
    cfg = _Config(step, jac, structure, state_shape, None, 0, "raise", None, solve=solve)
    return _NewtonFunction.apply(cfg, x, h0, *params)
