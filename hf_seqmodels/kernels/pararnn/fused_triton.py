"""Fused Newton solve for the built-in ParaRNN cells: ParaGRU (diagonal Jacobian) and ParaLSTM (2x2 blocks).

``fused_newton_gru(u, a, h0, mask)`` / ``fused_newton_lstm(...)`` solve the same recurrence as
``newton_solve(cell.step, cell.jacobian, u, (a,), h0)`` for ``ParaGRUCell`` / ``ParaLSTMCell`` (``u``: the input
projections ``[B, T, 3, D]``, gate rows z, r, c (GRU) or f, z, o (LSTM); ``a``: the diagonals ``[3, D]`` (GRU:
a_z, a_r, a_c) or ``[5, D]`` (LSTM: a_f, a_z, a_o, p_f, p_o); state ``[B, T, D]`` or ``[B, T, D, 2]`` = (c, h)).
``mask`` ``[B, T]`` (1 = token, 0 = padding) keeps the previous state at padded steps, as the cells' mask does.

Forward (one kernel, no intermediate tensors): a program owns one batch row and ``BLOCK_D`` units for the whole
sequence and walks it in tiles of ``BLOCK_T`` steps, the state carried between tiles in registers. Each tile is
solved by Newton's method from the exact state carried in:

    s = [carry, h_0, ..., h_{BT-2}]          (the tile shifted by one step: tl.gather)
    f = step(s, u), J = d step / d s, r = f - h
    h <- h + scan(J, r)                      (tl.associative_scan over the tile; dh_{-1} = 0: the carry is exact)

starting from ``h_t = step(carry, u_t)``, until ``max|r| <= tol * max(1, max|h|)`` (max over the program's units so
far) or ``max_iter`` iterations. Tiles are sequential within a program anyway, so iterating per tile costs no more
steps than global Newton sweeps, reads ``u`` and writes ``h`` once, and starts every tile from an exact boundary:
after ``k`` iterations its first ``k + 1`` steps are exact (``max_iter >= BLOCK_T - 1`` always converges). Each program
writes its max residual, max ``|h|`` and iteration count; the host reads them with one sync, and on failure warns
and falls back to the sequential solve (the same kernel with tiles of one step and no iteration: ``h_t =
step(h_{t-1}, u_t)``) or raises, with ``newton_solve``'s messages and :class:`NewtonConvergenceError`.
``NewtonInfo.iterations`` is the largest count over tiles.

Backward (one kernel, the adjoint at the solution): tiles from the end, ``lambda_t = gh_t + J_{t+1}^T lambda_{t+1}``
by tl.associative_scan with the carry in registers (``J_{t+1}`` recomputed at ``(h_t, u_{t+1})``), then the
closed-form vector-Jacobian products of ``step`` at ``(h_{t-1}, u_t)`` give ``du_t`` and per-program sums for ``da``
(``[B, n, D]``, summed over the batch on the host); ``dh0 = J_0^T lambda_0``.

Both kernels are the shared tile walk (``scan/tiles.py``) with a tile function here and the cell as a constexpr jit
function: each cell's elementwise maths (step, Jacobian, vector-Jacobian product) is written once, in ``_gru_cell`` /
``_lstm_cell``; the 1 (GRU) or 2 (LSTM) state components are tuples.

Everything is computed in fp32 (fp64 when an input is fp64) whatever the input dtype; ``h`` has the promoted dtype
of ``u``, ``a`` and ``h0`` (as the cells' step gives it), and the default ``tol`` is that of the compute dtype
(``DEFAULT_TOL``: fp32 1e-5, fp64 1e-12). The PyTorch backend (CPU tensors, ``HF_SEQMODELS_BACKEND=torch``) is
``newton_solve`` with the same closed forms (and its defaults: tol by state dtype, max_iter counting global sweeps).
An empty sequence (T = 0) takes that backend too, on any device: ``newton_solve``'s empty solution; so does a slice
under ``hf_seqmodels.context_parallel`` (``newton_solve``'s distributed iterations; the kernels have no exchange).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .. import context_parallel
from .._dispatch import check_same_device, check_tensor, compute_dtype, select_backend
from ..scan.tiles import (
    COMPONENTS,
    apply_carry,
    initial_state,
    last_rows,
    load_rows,
    load_state,
    previous_state,
    program_units,
    scan_tile,
    store_rows,
    store_state,
    tile_walk,
    zeros,
)
from ..triton_utils import patch_interpreter
from .cells import CELLS as TORCH_CELLS
from .newton import DEFAULT_TOL, check_convergence, check_newton_options, newton_solve

CELLS = ("gru", "lstm")
NUM_DIAGONALS = {name: n for name, (*_, n) in TORCH_CELLS.items()}
N_COMPONENTS = {name: COMPONENTS[structure] for name, (_, _, structure, _) in TORCH_CELLS.items()}
# Largest tiles (the interpreter pays per tile element; tests shrink them to cross several tiles and unit blocks).
MAX_BLOCK_T = {"gru": 64, "lstm": 32}
MAX_BLOCK_D = 32
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


# -- cell maths, once per cell (elementwise, any shape) -------------------------------------------------------------
# ``CELL(s, u, a, lam, VJP)``: previous state ``s`` (tuple of N), gate input projections ``u`` (3 rows), diagonal
# weights ``a`` (3 or 5 rows). VJP=False: ``(step(s), d step / d s)`` (N, and N * N row-major, ``J[i][j] = d out_i /
# d s_j``). VJP=True: the gradients of ``lam . step(s)`` w.r.t. the 3 gate pre-activations (= du rows) and, per weight
# row, the term whose sum over time is that row's gradient. The PyTorch closed forms are in ``cells.py``.
# sigmoid(x) = 1 / (1 + exp(-x)) and tanh(x) = 1 - 2 / (exp(2x) + 1) are written out: every nested jit call costs a
# few milliseconds in the interpreter.
@triton.jit
def _gru_cell(s, u, a, lam, VJP: tl.constexpr):
    """ParaGRU (state: h; rows z, r, c)."""
    h = s[0]
    z = 1.0 / (1.0 + tl.exp(-(a[0] * h + u[0])))
    r = 1.0 / (1.0 + tl.exp(-(a[1] * h + u[1])))
    c = 1.0 - 2.0 / (tl.exp(2.0 * (a[2] * (h * r) + u[2])) + 1.0)
    if VJP:
        gz = lam[0] * (c - h) * z * (1.0 - z)
        gc = lam[0] * z * (1.0 - c * c)
        gr = gc * a[2] * h * r * (1.0 - r)
        return (gz, gr, gc), (gz * h, gr * h, gc * h * r)
    else:
        dr = r * (1.0 - r) * a[1]
        J = (1.0 - z) + (c - h) * z * (1.0 - z) * a[0] + z * (1.0 - c * c) * a[2] * (r + h * dr)
        return ((1.0 - z) * h + z * c,), (J,)


@triton.jit
def _lstm_cell(s, u, a, lam, VJP: tl.constexpr):
    """ParaLSTM (state: c, h; rows f, z, o; weights a_f, a_z, a_o, p_f, p_o)."""
    sc = s[0]
    sh = s[1]
    f = 1.0 / (1.0 + tl.exp(-(a[0] * sh + u[0] + a[3] * sc)))
    z = 1.0 - 2.0 / (tl.exp(2.0 * (a[1] * sh + u[1])) + 1.0)
    c = f * sc + (1.0 - f) * z
    o = 1.0 / (1.0 + tl.exp(-(a[2] * sh + u[2] + a[4] * c)))
    tc = 1.0 - 2.0 / (tl.exp(2.0 * c) + 1.0)
    if VJP:
        go = lam[1] * tc * o * (1.0 - o)
        gc = lam[0] + lam[1] * o * (1.0 - tc * tc) + go * a[4]
        gf = gc * (sc - z) * f * (1.0 - f)
        gz = gc * (1.0 - f) * (1.0 - z * z)
        return (gf, gz, go), (gf * sh, gz * sh, go * sh, gf * sc, go * c)
    else:
        df = f * (1.0 - f)
        j00 = f + (sc - z) * df * a[3]
        j01 = (sc - z) * df * a[0] + (1.0 - f) * (1.0 - z * z) * a[1]
        do = o * (1.0 - o) * tc
        dtc = o * (1.0 - tc * tc)
        return (c, o * tc), (j00, j01, (do * a[4] + dtc) * j00, do * (a[2] + a[4] * j01) + dtc * j01)


@triton.jit
def _step(CELL: tl.constexpr, s, u, a, mk, HAS_MASK: tl.constexpr):
    """``CELL``'s step and Jacobian; padded steps (``mk`` 0) keep the previous state (identity Jacobian)."""
    f, J = CELL(s, u, a, None, False)
    if HAS_MASK:
        n: tl.constexpr = len(s)
        fm = ()
        for i in tl.static_range(n):
            fm = fm + (mk * f[i] + (1.0 - mk) * s[i],)
        Jm = ()
        for k in tl.static_range(n * n):
            if k % (n + 1) == 0:
                Jm = Jm + (mk * J[k] + (1.0 - mk),)
            else:
                Jm = Jm + (mk * J[k],)
        return fm, Jm
    else:
        return f, J


# -- the tiles: Newton solve (forward) and adjoint (backward), for any cell ------------------------------------------
@triton.jit
def _newton_eval(CELL: tl.constexpr, h, carry, u, a, mk, valid, HAS_MASK: tl.constexpr):
    """Jacobian and residual of the tile iterate ``h`` (step 0 follows ``carry``), max |r| (NaN counts as inf: it
    must never look converged) and max |h| over the valid entries."""
    rows = tl.arange(0, h[0].shape[0])
    first = (rows == 0)[:, None]
    prev = tl.maximum(rows - 1, 0)[:, None] + tl.zeros(h[0].shape, dtype=tl.int32)
    s = ()
    for i in tl.static_range(len(h)):
        s = s + (tl.where(first, carry[i][None, :], tl.gather(h[i], prev, 0)),)  # [carry, h_0, ..., h_{BT-2}]
    f, J = _step(CELL, s, u, a, mk, HAS_MASK)
    r = ()
    for i in tl.static_range(len(h)):
        r = r + (f[i] - h[i],)
    ra = tl.where(r[0] == r[0], tl.abs(r[0]), float("inf"))
    for i in tl.static_range(1, len(h)):
        ra = tl.maximum(ra, tl.where(r[i] == r[i], tl.abs(r[i]), float("inf")))
    res = tl.max(tl.where(valid, ra, 0.0))
    ha = tl.abs(h[0])
    for i in tl.static_range(1, len(h)):
        ha = tl.maximum(ha, tl.abs(h[i]))
    return J, r, res, tl.max(tl.where(valid, ha, 0.0))


@triton.jit
def _newton_tile(OPTS: tl.constexpr, ctx, carry, stats, pid_b, t, offs_d, valid, T, D):
    """One tile solved by Newton's method from the exact carried state (see the module docstring); with
    ``NEWTON=False`` just ``step(carry, u_t)``: with tiles of one step, the sequential solve."""
    U, M, H, a, tol, max_iter = ctx
    CELL: tl.constexpr = OPTS[0]
    HAS_MASK: tl.constexpr = OPTS[1]
    NEWTON: tl.constexpr = OPTS[2]
    ACC: tl.constexpr = carry[0].dtype
    bt = pid_b * T + t
    u = load_rows(U, bt[:, None] * (3 * D) + offs_d[None, :], D, 3, valid, ACC)
    mk = 1.0
    if HAS_MASK:
        mk = tl.load(M + bt, mask=t < T, other=0.0).to(ACC)[:, None]
    s = ()
    for i in tl.static_range(len(carry)):
        s = s + (carry[i][None, :] + tl.zeros(valid.shape, dtype=ACC),)
    h, _ = _step(CELL, s, u, a, mk, HAS_MASK)  # initial guess: h_t = step(carry, u_t)
    if NEWTON:
        res_max, h_max, it_max = stats
        J, r, res, hm = _newton_eval(CELL, h, carry, u, a, mk, valid, HAS_MASK)
        limit = tol * tl.maximum(tl.maximum(h_max, hm), 1.0)
        it = tl.zeros([], dtype=tl.int32)
        while (res > limit) & (res < float("inf")) & (it < max_iter):
            dh = scan_tile(J, r)
            hn = ()
            for i in tl.static_range(len(h)):
                hn = hn + (h[i] + dh[len(J) + i],)
            h = hn
            J, r, res, hm = _newton_eval(CELL, h, carry, u, a, mk, valid, HAS_MASK)
            limit = tol * tl.maximum(tl.maximum(h_max, hm), 1.0)
            it += 1
        stats = (tl.maximum(res_max, res), tl.maximum(h_max, hm), tl.maximum(it_max, it))
    store_state(H, bt[:, None] * D + offs_d[None, :], h, valid)
    return last_rows(h), stats


@triton.jit
def _adjoint_tile(OPTS: tl.constexpr, ctx, carry, stats, pid_b, t, offs_d, valid, T, D):
    """``lambda_t = gh_t + J_{t+1}^T lambda_{t+1}`` over one tile (walking backwards; ``carry``: lambda of the step
    after it), then the vector-Jacobian products of step ``t`` at ``(h_{t-1}, u_t)``: ``du_t`` stored, the weight
    gradient terms summed into ``stats``."""
    U, M, H, GH, GU, h0, a = ctx
    CELL: tl.constexpr = OPTS[0]
    HAS_MASK: tl.constexpr = OPTS[1]
    ACC: tl.constexpr = carry[0].dtype
    N: tl.constexpr = len(carry)
    bt = pid_b * T + t
    unit = bt[:, None] * D + offs_d[None, :]
    uoff = bt[:, None] * (3 * D) + offs_d[None, :]
    has_next = valid & (t + 1 < T)[:, None]
    # transposed Jacobian of step t+1, taken at its previous state h_t; rows before t = 0: identity (carry lambda_0)
    mn = 1.0
    if HAS_MASK:
        mn = tl.load(M + bt + 1, mask=(t >= 0) & (t + 1 < T), other=0.0).to(ACC)[:, None]
    ht = load_state(H, unit, valid, N, ACC)
    _, Jn = _step(CELL, ht, load_rows(U + 3 * D, uoff, D, 3, has_next, ACC), a, mn, HAS_MASK)
    coef = ()
    for k in tl.static_range(N * N):
        if k % (N + 1) == 0:
            coef = coef + (tl.where(has_next, Jn[k], tl.where(valid, 0.0, 1.0)),)
        else:
            coef = coef + (tl.where(has_next, Jn[(k % N) * N + k // N], 0.0),)
    lam = apply_carry(scan_tile(coef, load_state(GH, unit, valid, N, ACC)), carry)
    carry = last_rows(lam)
    # vector-Jacobian products of step t at (h_{t-1}, u_t)
    sp = previous_state(H, unit, t, 1, valid, h0, T, D, ACC)
    lt = lam
    if HAS_MASK:
        mt = tl.load(M + bt, mask=t >= 0, other=0.0).to(ACC)[:, None]
        lt = ()
        for i in tl.static_range(N):
            lt = lt + (lam[i] * mt,)
    du, terms = CELL(sp, load_rows(U, uoff, D, 3, valid, ACC), a, lt, True)
    store_rows(GU, uoff, D, du, valid)
    sums = ()
    for k in tl.static_range(len(terms)):
        sums = sums + (stats[k] + tl.sum(tl.where(valid, terms[k], 0.0), 0),)
    return carry, sums


@triton.jit
def _newton_kernel(
    U,
    A,
    H0,
    M,
    H,
    STATS,
    T,
    D,
    tol,
    max_iter,
    CELL: tl.constexpr,
    N: tl.constexpr,
    NA: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    NEWTON: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b, offs_d, mask_d = program_units(D, BLOCK_D)
    a = load_rows(A, offs_d[None, :], D, NA, mask_d[None, :], ACC)
    carry = initial_state(H0, pid_b, offs_d, mask_d, D, N, HAS_H0, ACC)
    # this program's largest final residual, |h| and iteration count
    stats = (tl.zeros([], dtype=ACC), tl.zeros([], dtype=ACC), tl.zeros([], dtype=tl.int32))
    _, stats = tile_walk(
        _newton_tile,
        (CELL, HAS_MASK, NEWTON),
        (U, M, H, a, tol, max_iter),
        carry,
        stats,
        pid_b,
        offs_d,
        mask_d,
        T,
        D,
        False,
        BLOCK_T,
    )
    if NEWTON:
        out = STATS + (pid_b * tl.num_programs(0) + tl.program_id(0)) * 3
        tl.store(out, stats[0])
        tl.store(out + 1, stats[1])
        tl.store(out + 2, stats[2].to(ACC))


@triton.jit
def _adjoint_kernel(
    U,
    A,
    H0,
    M,
    H,
    GH,
    GU,
    GA,
    GH0,
    T,
    D,
    CELL: tl.constexpr,
    N: tl.constexpr,
    NA: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b, offs_d, mask_d = program_units(D, BLOCK_D)
    a = load_rows(A, offs_d[None, :], D, NA, mask_d[None, :], ACC)
    h0 = initial_state(H0, pid_b, offs_d, mask_d, D, N, HAS_H0, ACC)
    lam, sums = tile_walk(
        _adjoint_tile,
        (CELL, HAS_MASK),
        (U, M, H, GH, GU, h0, a),
        zeros(N, BLOCK_D, ACC),
        zeros(NA, BLOCK_D, ACC),
        pid_b,
        offs_d,
        mask_d,
        T,
        D,
        True,
        BLOCK_T,
    )
    store_rows(GA, pid_b * NA * D + offs_d, D, sums, mask_d)
    if HAS_H0:  # dh0 = J_0^T lambda_0
        m0 = 1.0
        if HAS_MASK:
            m0 = tl.load(M + pid_b * T).to(ACC)
        s0 = ()
        for i in tl.static_range(N):
            s0 = s0 + (h0[i][None, :],)
        u0 = load_rows(U, pid_b * T * 3 * D + offs_d[None, :], D, 3, mask_d[None, :], ACC)
        _, J0 = _step(CELL, s0, u0, a, m0, HAS_MASK)
        g = ()
        for j in tl.static_range(N):
            x = J0[j] * lam[0][None, :]
            for i in tl.static_range(1, N):
                x = x + J0[i * N + j] * lam[i][None, :]
            g = g + (x,)
        store_state(GH0, pid_b * D + offs_d[None, :], g, mask_d[None, :])


# -- host side ------------------------------------------------------------------------------------------------------
_CELL_FNS = {"gru": _gru_cell, "lstm": _lstm_cell}


def _constexprs(cell, acc, h0, mask):
    return dict(
        CELL=_CELL_FNS[cell],
        N=N_COMPONENTS[cell],
        NA=NUM_DIAGONALS[cell],
        HAS_H0=h0 is not None,
        HAS_MASK=mask is not None,
        ACC=_TL_ACC[acc],
    )


def _blocks(cell, T, D):
    return min(MAX_BLOCK_T[cell], triton.next_power_of_2(T)), min(MAX_BLOCK_D, triton.next_power_of_2(D))


def _state_shape(cell, B, T, D):
    return (B, T, D) if cell == "gru" else (B, T, D, 2)


class _Config:
    def __init__(self, op, cell, tol, max_iter, on_fail):
        self.op, self.cell, self.tol, self.max_iter, self.on_fail = op, cell, tol, max_iter, on_fail
        self.info = None


def _fused_forward(cfg, u, a, h0, mask):
    B, T, _, D = u.shape
    acc = compute_dtype(u, a, h0)
    out_dtype = torch.promote_types(u.dtype, a.dtype)
    if h0 is not None:
        out_dtype = torch.promote_types(out_dtype, h0.dtype)
    tol = cfg.tol if cfg.tol is not None else DEFAULT_TOL[acc]
    h = torch.empty(_state_shape(cfg.cell, B, T, D), dtype=out_dtype, device=u.device)
    block_t, block_d = _blocks(cfg.cell, T, D)
    grid = (triton.cdiv(D, block_d), B)
    stats = torch.empty(B, grid[0], 3, dtype=acc, device=u.device)  # per program: residual, max |h|, iterations
    common = dict(_constexprs(cfg.cell, acc, h0, mask), BLOCK_D=block_d)
    args = (u, a, h if h0 is None else h0, h if mask is None else mask, h, stats, T, D, float(tol), cfg.max_iter)
    _newton_kernel[grid](*args, NEWTON=True, BLOCK_T=block_t, **common)
    res_abs, scale, iters = stats.amax(dim=(0, 1)).tolist()  # the one device sync
    res = res_abs / max(1.0, scale)
    info, _ = check_convergence(
        cfg.op,
        int(iters),
        res,
        tol,
        cfg.max_iter,
        cfg.on_fail,
        lambda: _newton_kernel[grid](*args, NEWTON=False, BLOCK_T=1, **common),
        stacklevel=4,
    )  # the sequential solve overwrites h in place
    return h, info


def _fused_adjoint(cell, u, a, h0, mask, h, gh):
    B, T, _, D = u.shape
    acc = compute_dtype(u, a, h0)
    gu = torch.empty_like(u)
    ga = torch.empty(B, NUM_DIAGONALS[cell], D, dtype=acc, device=u.device)  # per batch row, summed below
    gh0 = torch.empty(h0.shape, dtype=acc, device=u.device) if h0 is not None else None
    block_t, block_d = _blocks(cell, T, D)
    grid = (triton.cdiv(D, block_d), B)
    dummy = h
    _adjoint_kernel[grid](
        u,
        a,
        dummy if h0 is None else h0,
        dummy if mask is None else mask,
        h,
        gh.contiguous(),
        gu,
        ga,
        dummy if gh0 is None else gh0,
        T,
        D,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        **_constexprs(cell, acc, h0, mask),
    )
    return gu, ga.sum(0).to(a.dtype), None if gh0 is None else gh0.to(h0.dtype)


class _FusedNewtonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, u, a, h0, mask):
        patch_interpreter()
        h, cfg.info = _fused_forward(cfg, u, a, h0, mask)
        ctx.cell = cfg.cell
        ctx.save_for_backward(u, a, h0, mask, h)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, gh):
        u, a, h0, mask, h = ctx.saved_tensors
        gu, ga, gh0 = _fused_adjoint(ctx.cell, u, a, h0, mask, h, gh)
        need_u, need_a, need_h0 = ctx.needs_input_grad[1:4]
        return None, gu if need_u else None, ga if need_a else None, gh0 if need_h0 else None, None


# -- PyTorch path: newton_solve with the closed forms of .cells ----------------------------------------------------
_TORCH_CELLS = {name: (step, jac, structure) for name, (step, jac, structure, _) in TORCH_CELLS.items()}


def _masked(fn, block2, jacobian):
    """Padded steps (mask in row 3 of ``u``) keep the previous state: identity Jacobian there."""

    def wrapped(h, u, a):
        m = u[..., 3, :]
        out = fn(h, u, a)
        if block2:
            m = m[..., None, None] if jacobian else m[..., None]
        other = h
        if jacobian:
            other = torch.eye(2, dtype=out.dtype, device=out.device) if block2 else torch.ones_like(out)
        return m * out + (1 - m) * other

    return wrapped


def _torch_solve(cfg, u, a, h0, mask, backend):
    step, jac, structure = _TORCH_CELLS[cfg.cell]
    if mask is not None:
        u = torch.cat([u, mask[:, :, None, None].to(u.dtype).expand(-1, -1, 1, u.shape[-1])], dim=-2)
        step, jac = _masked(step, structure == "block2", False), _masked(jac, structure == "block2", True)
    return newton_solve(
        step,
        jac,
        u,
        (a,),
        h0,
        state_size=u.shape[-1],
        structure=structure,
        tol=cfg.tol,
        max_iter=cfg.max_iter,
        on_fail=cfg.on_fail,
        backend=backend,
        return_info=True,
    )


# -- public ops -----------------------------------------------------------------------------------------------------
def _check_args(op, cell, u, a, h0, mask, tol, max_iter, on_fail):
    check_tensor(op, "u", u, ndim=4)
    if u.shape[2] != 3:
        raise ValueError(f"{op}: `u` must be [B, T, 3, D] (input projections of the 3 gates), got {tuple(u.shape)}")
    B, T, _, D = u.shape
    n = NUM_DIAGONALS[cell]
    check_tensor(op, "a", a, ndim=2)
    if tuple(a.shape) != (n, D):
        raise ValueError(f"{op}: `a` must be [{n}, D] = ({n}, {D}) to match `u` {tuple(u.shape)}, got {tuple(a.shape)}")
    if h0 is not None:
        want = (B, D) if cell == "gru" else (B, D, 2)
        check_tensor(op, "h0", h0)
        if tuple(h0.shape) != want:
            raise ValueError(f"{op}: `h0` must have shape {want}, got {tuple(h0.shape)}")
    for name, x in (("u", u), ("a", a), ("h0", h0)):
        if x is not None and x.dtype not in _DTYPES:
            raise ValueError(f"{op}: `{name}` must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{op}: `mask` must be a [B, T] = ({B}, {T}) tensor, got {type(mask).__name__}")
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"{op}: `mask` must be a [B, T] = ({B}, {T}) tensor, got {getattr(mask, 'shape', mask)}")
    check_newton_options(op, tol, max_iter, on_fail)
    return check_same_device(op, u=u, a=a, h0=h0, mask=mask)


def _fused_newton(op, cell, u, a, h0, mask, tol, max_iter, on_fail, backend, return_info):
    device = _check_args(op, cell, u, a, h0, mask, tol, max_iter, on_fail)
    cfg = _Config(op, cell, tol, max_iter, on_fail)
    # T = 0: newton_solve's empty solution; context parallelism: newton_solve's distributed iterations
    if select_backend(op, device, backend) == "torch" or u.shape[1] == 0 or context_parallel.active():
        h, info = _torch_solve(cfg, u, a, h0, mask, backend)
    else:
        acc = compute_dtype(u, a, h0)
        mask = None if mask is None else mask.to(acc).contiguous()
        h0 = None if h0 is None else h0.contiguous()
        h = _FusedNewtonFunction.apply(cfg, u.contiguous(), a.contiguous(), h0, mask)
        info = cfg.info
    return (h, info) if return_info else h


def fused_newton_gru(
    u, a, h0=None, mask=None, *, tol=None, max_iter=10, on_fail="fallback", backend=None, return_info=False
):
    """Solve the ParaGRU recurrence (``ParaGRUCell.step``) over ``u`` ``[B, T, 3, D]`` (rows z, r, c) with diagonals
    ``a`` ``[3, D]``, from ``h0`` ``[B, D]`` (zeros if None), with optional ``mask`` ``[B, T]`` (0 keeps the previous
    state). One fused Triton kernel per direction on CUDA (see the module docstring); ``newton_solve`` on the PyTorch
    backend. ``tol``, ``max_iter`` (per tile of the kernel), ``on_fail`` and ``return_info`` as in ``newton_solve``.
    Returns ``h`` ``[B, T, D]``, differentiable w.r.t. ``u``, ``a`` and ``h0``; with ``return_info`` also a
    :class:`NewtonInfo`."""
    return _fused_newton("fused_newton_gru", "gru", u, a, h0, mask, tol, max_iter, on_fail, backend, return_info)


def fused_newton_lstm(
    u, a, h0=None, mask=None, *, tol=None, max_iter=10, on_fail="fallback", backend=None, return_info=False
):
    """Solve the ParaLSTM recurrence (``ParaLSTMCell.step``) over ``u`` ``[B, T, 3, D]`` (rows f, z, o) with
    ``a`` ``[5, D]`` (a_f, a_z, a_o, p_f, p_o), from ``h0`` ``[B, D, 2]`` = (c, h) (zeros if None); otherwise as
    :func:`fused_newton_gru`. Returns the states ``[B, T, D, 2]``."""
    return _fused_newton("fused_newton_lstm", "lstm", u, a, h0, mask, tol, max_iter, on_fail, backend, return_info)
