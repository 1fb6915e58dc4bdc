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
and falls back to a sequential kernel (one step per time index) or raises, with ``newton_solve``'s messages and
:class:`NewtonConvergenceError`. ``NewtonInfo.iterations`` is the largest count over tiles.

Backward (one kernel, the adjoint at the solution): tiles from the end, ``lambda_t = gh_t + J_{t+1}^T lambda_{t+1}``
by tl.associative_scan with the carry in registers (``J_{t+1}`` recomputed at ``(h_t, u_{t+1})``), then the
closed-form vector-Jacobian products of ``step`` at ``(h_{t-1}, u_t)`` give ``du_t`` and per-program sums for ``da``
(``[B, n, D]``, summed over the batch on the host); ``dh0 = J_0^T lambda_0``.

Everything is computed in fp32 (fp64 when an input is fp64) whatever the input dtype; ``h`` has the promoted dtype
of ``u``, ``a`` and ``h0`` (as the cells' step gives it), and the default ``tol`` is that of the compute dtype
(``DEFAULT_TOL``: fp32 1e-5, fp64 1e-12). The PyTorch backend (CPU tensors, ``HF_SEQMODELS_BACKEND=torch``) is
``newton_solve`` with the same closed forms (and its defaults: tol by state dtype, max_iter counting global sweeps).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .._dispatch import check_same_device, check_tensor, compute_dtype, select_backend
from ..scan.scan_triton import _affine2_combine, _affine_combine, _last_row
from .cells import CELLS as TORCH_CELLS
from .newton import DEFAULT_TOL, check_convergence, check_newton_options, newton_solve

CELLS = ("gru", "lstm")
NUM_DIAGONALS = {name: n for name, (*_, n) in TORCH_CELLS.items()}
# Largest tiles (the interpreter pays per tile element; tests shrink them to cross several tiles and unit blocks).
MAX_BLOCK_T = {"gru": 64, "lstm": 32}
MAX_BLOCK_D = 32
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


# -- cell maths (elementwise, any shape) ----------------------------------------------------------------------------
# sigmoid(x) = 1 / (1 + exp(-x)) and tanh(x) = 1 - 2 / (exp(2x) + 1) are written out: every nested jit call costs a
# few milliseconds in the interpreter.
@triton.jit
def _gru_cell(s, u0, u1, u2, a0, a1, a2):
    """ParaGRU step and its (diagonal) Jacobian w.r.t. the previous state ``s``."""
    z = 1.0 / (1.0 + tl.exp(-(a0 * s + u0)))
    r = 1.0 / (1.0 + tl.exp(-(a1 * s + u1)))
    c = 1.0 - 2.0 / (tl.exp(2.0 * (a2 * (s * r) + u2)) + 1.0)
    dr = r * (1.0 - r) * a1
    J = (1.0 - z) + (c - s) * z * (1.0 - z) * a0 + z * (1.0 - c * c) * a2 * (r + s * dr)
    return (1.0 - z) * s + z * c, J


@triton.jit
def _gru_vjp(lam, s, u0, u1, u2, a0, a1, a2):
    """Gradients of ``lam * step(s, u)`` w.r.t. the gate pre-activations (= du rows z, r, c), and ``r``."""
    z = 1.0 / (1.0 + tl.exp(-(a0 * s + u0)))
    r = 1.0 / (1.0 + tl.exp(-(a1 * s + u1)))
    c = 1.0 - 2.0 / (tl.exp(2.0 * (a2 * (s * r) + u2)) + 1.0)
    gz = lam * (c - s) * z * (1.0 - z)
    gc = lam * z * (1.0 - c * c)
    gr = gc * a2 * s * r * (1.0 - r)
    return gz, gr, gc, r


@triton.jit
def _lstm_cell(sc, sh, u0, u1, u2, a0, a1, a2, a3, a4):
    """ParaLSTM step (c, h) and its 2x2 Jacobian blocks ``J[i][j] = d out_i / d s_j`` (0: c, 1: h)."""
    f = 1.0 / (1.0 + tl.exp(-(a0 * sh + u0 + a3 * sc)))
    z = 1.0 - 2.0 / (tl.exp(2.0 * (a1 * sh + u1)) + 1.0)
    c = f * sc + (1.0 - f) * z
    o = 1.0 / (1.0 + tl.exp(-(a2 * sh + u2 + a4 * c)))
    tc = 1.0 - 2.0 / (tl.exp(2.0 * c) + 1.0)
    df = f * (1.0 - f)
    j00 = f + (sc - z) * df * a3
    j01 = (sc - z) * df * a0 + (1.0 - f) * (1.0 - z * z) * a1
    do = o * (1.0 - o) * tc
    dtc = o * (1.0 - tc * tc)
    j10 = (do * a4 + dtc) * j00
    j11 = do * (a2 + a4 * j01) + dtc * j01
    return c, o * tc, j00, j01, j10, j11


@triton.jit
def _lstm_vjp(lc, lh, sc, sh, u0, u1, u2, a0, a1, a2, a3, a4):
    """Gradients of ``lc * c + lh * h`` w.r.t. the pre-activations of f, z, o, and ``c``."""
    f = 1.0 / (1.0 + tl.exp(-(a0 * sh + u0 + a3 * sc)))
    z = 1.0 - 2.0 / (tl.exp(2.0 * (a1 * sh + u1)) + 1.0)
    c = f * sc + (1.0 - f) * z
    o = 1.0 / (1.0 + tl.exp(-(a2 * sh + u2 + a4 * c)))
    tc = 1.0 - 2.0 / (tl.exp(2.0 * c) + 1.0)
    go = lh * tc * o * (1.0 - o)
    gc = lc + lh * o * (1.0 - tc * tc) + go * a4
    gf = gc * (sc - z) * f * (1.0 - f)
    gz = gc * (1.0 - f) * (1.0 - z * z)
    return gf, gz, go, c


# -- shared tile helpers --------------------------------------------------------------------------------------------
@triton.jit
def _load3(ptr, off, mask, D, ACC: tl.constexpr):
    """Rows 0, 1, 2 of a ``[..., 3, D]`` tensor at ``off`` (the offset of row 0)."""
    x0 = tl.load(ptr + off, mask=mask, other=0.0).to(ACC)
    x1 = tl.load(ptr + off + D, mask=mask, other=0.0).to(ACC)
    x2 = tl.load(ptr + off + 2 * D, mask=mask, other=0.0).to(ACC)
    return x0, x1, x2


# -- ParaGRU kernels ------------------------------------------------------------------------------------------------
@triton.jit
def _gru_eval(h, carry, first, prev, u0, u1, u2, a0, a1, a2, mk, valid, HAS_MASK: tl.constexpr):
    """Jacobian and residual of the tile iterate ``h`` (step 0 follows ``carry``), max |r| (NaN counts as inf: it
    must never look converged) and max |h| over the valid entries."""
    s = tl.where(first, carry[None, :], tl.gather(h, prev, 0))  # [carry, h_0, ..., h_{BT-2}]
    f, J = _gru_cell(s, u0, u1, u2, a0, a1, a2)
    if HAS_MASK:
        f = mk * f + (1.0 - mk) * s
        J = mk * J + (1.0 - mk)
    r = f - h
    res = tl.max(tl.where(valid, tl.where(r == r, tl.abs(r), float("inf")), 0.0))
    return J, r, res, tl.max(tl.where(valid, tl.abs(h), 0.0))


@triton.jit
def _gru_newton_kernel(U, A, H0, M, H, STATS, T, D, tol, max_iter, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                       ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    a0, a1, a2 = _load3(A, offs_d, mask_d, D, ACC)
    a0, a1, a2 = a0[None, :], a1[None, :], a2[None, :]
    carry = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_H0:
        carry = tl.load(H0 + pid_b * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    first = (rows == 0)[:, None]
    prev = tl.maximum(rows - 1, 0)[:, None] + tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.int32)
    zero = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    res_max = tl.zeros([], dtype=ACC)  # this program's largest final residual, |h| and iteration count
    h_max = tl.zeros([], dtype=ACC)
    it_max = tl.zeros([], dtype=tl.int32)
    start = 0
    while start < T:
        t = start + rows
        valid = (t < T)[:, None] & mask_d[None, :]
        off = (pid_b * T + t[:, None]) * D + offs_d[None, :]
        u0, u1, u2 = _load3(U, (pid_b * T + t[:, None]) * (3 * D) + offs_d[None, :], valid, D, ACC)
        mk = 1.0
        if HAS_MASK:
            mk = tl.load(M + pid_b * T + t, mask=t < T, other=0.0).to(ACC)[:, None]
        s = carry[None, :] + zero
        h, J = _gru_cell(s, u0, u1, u2, a0, a1, a2)  # initial guess: h_t = step(carry, u_t)
        if HAS_MASK:
            h = mk * h + (1.0 - mk) * s
        J, r, res, hm = _gru_eval(h, carry, first, prev, u0, u1, u2, a0, a1, a2, mk, valid, HAS_MASK)
        limit = tol * tl.maximum(tl.maximum(h_max, hm), 1.0)
        it = tl.zeros([], dtype=tl.int32)
        while (res > limit) & (res < float("inf")) & (it < max_iter):
            _, dh = tl.associative_scan((J, r), 0, _affine_combine)
            h = h + dh
            J, r, res, hm = _gru_eval(h, carry, first, prev, u0, u1, u2, a0, a1, a2, mk, valid, HAS_MASK)
            limit = tol * tl.maximum(tl.maximum(h_max, hm), 1.0)
            it += 1
        res_max = tl.maximum(res_max, res)
        h_max = tl.maximum(h_max, hm)
        it_max = tl.maximum(it_max, it)
        tl.store(H + off, h.to(H.dtype.element_ty), mask=valid)
        carry = _last_row(h, rows, BLOCK_T)
        start += BLOCK_T
    out = STATS + (pid_b * tl.num_programs(0) + tl.program_id(0)) * 3
    tl.store(out, res_max)
    tl.store(out + 1, h_max)
    tl.store(out + 2, it_max.to(ACC))


@triton.jit
def _gru_sequential_kernel(U, A, H0, M, H, T, D, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                           ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    a0, a1, a2 = _load3(A, offs_d, mask_d, D, ACC)
    h = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_H0:
        h = tl.load(H0 + pid_b * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    t = 0
    while t < T:
        u0, u1, u2 = _load3(U, (pid_b * T + t) * (3 * D) + offs_d, mask_d, D, ACC)
        f, _ = _gru_cell(h, u0, u1, u2, a0, a1, a2)
        if HAS_MASK:
            mk = tl.load(M + pid_b * T + t).to(ACC)
            f = mk * f + (1.0 - mk) * h
        h = f
        tl.store(H + (pid_b * T + t) * D + offs_d, h.to(H.dtype.element_ty), mask=mask_d)
        t += 1


@triton.jit
def _gru_adjoint_kernel(U, A, H0, M, H, GH, GU, GA, GH0, T, D, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                        ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    a0, a1, a2 = _load3(A, offs_d, mask_d, D, ACC)
    b0, b1, b2 = a0[None, :], a1[None, :], a2[None, :]
    h0 = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_H0:
        h0 = tl.load(H0 + pid_b * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    lam = tl.zeros([BLOCK_D], dtype=ACC)  # lambda of the step after this tile
    da0 = tl.zeros([BLOCK_D], dtype=ACC)
    da1 = tl.zeros([BLOCK_D], dtype=ACC)
    da2 = tl.zeros([BLOCK_D], dtype=ACC)
    done = 0
    while done < T:
        t = T - 1 - done - rows  # rows run backwards in time
        valid = (t >= 0)[:, None] & mask_d[None, :]
        has_next = valid & (t + 1 < T)[:, None]
        off = (pid_b * T + t[:, None]) * D + offs_d[None, :]
        uoff = (pid_b * T + t[:, None]) * (3 * D) + offs_d[None, :]
        # transposed Jacobian of step t+1, taken at its previous state h_t
        ht = tl.load(H + off, mask=valid, other=0.0).to(ACC)
        n0, n1, n2 = _load3(U, uoff + 3 * D, has_next, D, ACC)
        _, Jn = _gru_cell(ht, n0, n1, n2, b0, b1, b2)
        if HAS_MASK:
            mn = tl.load(M + pid_b * T + t + 1, mask=(t >= 0) & (t + 1 < T), other=0.0).to(ACC)[:, None]
            Jn = mn * Jn + (1.0 - mn)
        Jn = tl.where(has_next, Jn, tl.where(valid, 0.0, 1.0))  # rows before t = 0: identity (carry lambda_0)
        g = tl.load(GH + off, mask=valid, other=0.0).to(ACC)
        ca, cb = tl.associative_scan((Jn, g), 0, _affine_combine)
        lt = cb + ca * lam[None, :]
        lam = _last_row(lt, rows, BLOCK_T)
        # vector-Jacobian products of step t at (h_{t-1}, u_t)
        sp = tl.load(H + off - D, mask=valid & (t >= 1)[:, None], other=0.0).to(ACC)
        sp = tl.where((t == 0)[:, None], h0[None, :], sp)
        u0, u1, u2 = _load3(U, uoff, valid, D, ACC)
        if HAS_MASK:
            lt = lt * tl.load(M + pid_b * T + t, mask=t >= 0, other=0.0).to(ACC)[:, None]
        gz, gr, gc, r = _gru_vjp(lt, sp, u0, u1, u2, b0, b1, b2)
        gdt = GU.dtype.element_ty
        tl.store(GU + uoff, gz.to(gdt), mask=valid)
        tl.store(GU + uoff + D, gr.to(gdt), mask=valid)
        tl.store(GU + uoff + 2 * D, gc.to(gdt), mask=valid)
        da0 += tl.sum(tl.where(valid, gz * sp, 0.0), 0)
        da1 += tl.sum(tl.where(valid, gr * sp, 0.0), 0)
        da2 += tl.sum(tl.where(valid, gc * sp * r, 0.0), 0)
        done += BLOCK_T
    out = GA + pid_b * 3 * D + offs_d
    tl.store(out, da0, mask=mask_d)
    tl.store(out + D, da1, mask=mask_d)
    tl.store(out + 2 * D, da2, mask=mask_d)
    if HAS_H0:  # dh0 = J_0 lambda_0
        u0, u1, u2 = _load3(U, pid_b * T * 3 * D + offs_d, mask_d, D, ACC)
        _, J0 = _gru_cell(h0, u0, u1, u2, a0, a1, a2)
        if HAS_MASK:
            m0 = tl.load(M + pid_b * T).to(ACC)
            J0 = m0 * J0 + (1.0 - m0)
        tl.store(GH0 + pid_b * D + offs_d, J0 * lam, mask=mask_d)


# -- ParaLSTM kernels (state components 0: c, 1: h, interleaved) -----------------------------------------------
@triton.jit
def _lstm_eval(xc, xh, carry_c, carry_h, first, prev, u0, u1, u2, a0, a1, a2, a3, a4, mk, valid,
               HAS_MASK: tl.constexpr):
    """As ``_gru_eval`` for the two state components (iterate ``xc``, ``xh``; carried state ``carry_c``/``_h``)."""
    s0 = tl.where(first, carry_c[None, :], tl.gather(xc, prev, 0))
    s1 = tl.where(first, carry_h[None, :], tl.gather(xh, prev, 0))
    f0, f1, j00, j01, j10, j11 = _lstm_cell(s0, s1, u0, u1, u2, a0, a1, a2, a3, a4)
    if HAS_MASK:
        f0 = mk * f0 + (1.0 - mk) * s0
        f1 = mk * f1 + (1.0 - mk) * s1
        j00 = mk * j00 + (1.0 - mk)
        j01 = mk * j01
        j10 = mk * j10
        j11 = mk * j11 + (1.0 - mk)
    r0 = f0 - xc
    r1 = f1 - xh
    ra = tl.maximum(tl.where(r0 == r0, tl.abs(r0), float("inf")), tl.where(r1 == r1, tl.abs(r1), float("inf")))
    res = tl.max(tl.where(valid, ra, 0.0))
    hm = tl.max(tl.where(valid, tl.maximum(tl.abs(xc), tl.abs(xh)), 0.0))
    return j00, j01, j10, j11, r0, r1, res, hm


@triton.jit
def _lstm_newton_kernel(U, A, H0, M, H, STATS, T, D, tol, max_iter, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                        ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    a0, a1, a2 = _load3(A, offs_d, mask_d, D, ACC)
    a3 = tl.load(A + 3 * D + offs_d, mask=mask_d, other=0.0).to(ACC)[None, :]
    a4 = tl.load(A + 4 * D + offs_d, mask=mask_d, other=0.0).to(ACC)[None, :]
    a0, a1, a2 = a0[None, :], a1[None, :], a2[None, :]
    carry_c = tl.zeros([BLOCK_D], dtype=ACC)
    carry_h = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_H0:
        carry_c = tl.load(H0 + (pid_b * D + offs_d) * 2, mask=mask_d, other=0.0).to(ACC)
        carry_h = tl.load(H0 + (pid_b * D + offs_d) * 2 + 1, mask=mask_d, other=0.0).to(ACC)
    first = (rows == 0)[:, None]
    prev = tl.maximum(rows - 1, 0)[:, None] + tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.int32)
    zero = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    res_max = tl.zeros([], dtype=ACC)  # this program's largest final residual, |h| and iteration count
    h_max = tl.zeros([], dtype=ACC)
    it_max = tl.zeros([], dtype=tl.int32)
    start = 0
    while start < T:
        t = start + rows
        valid = (t < T)[:, None] & mask_d[None, :]
        unit = (pid_b * T + t[:, None]) * D + offs_d[None, :]
        u0, u1, u2 = _load3(U, (pid_b * T + t[:, None]) * (3 * D) + offs_d[None, :], valid, D, ACC)
        mk = 1.0
        if HAS_MASK:
            mk = tl.load(M + pid_b * T + t, mask=t < T, other=0.0).to(ACC)[:, None]
        s0 = carry_c[None, :] + zero
        s1 = carry_h[None, :] + zero
        xc, xh, _, _, _, _ = _lstm_cell(s0, s1, u0, u1, u2, a0, a1, a2, a3, a4)  # initial guess: step(carry, u_t)
        if HAS_MASK:
            xc = mk * xc + (1.0 - mk) * s0
            xh = mk * xh + (1.0 - mk) * s1
        j00, j01, j10, j11, r0, r1, res, hm = _lstm_eval(xc, xh, carry_c, carry_h, first, prev, u0, u1, u2, a0, a1, a2,
                                                               a3, a4, mk, valid, HAS_MASK)
        limit = tol * tl.maximum(tl.maximum(h_max, hm), 1.0)
        it = tl.zeros([], dtype=tl.int32)
        while (res > limit) & (res < float("inf")) & (it < max_iter):
            _, _, _, _, d0, d1 = tl.associative_scan((j00, j01, j10, j11, r0, r1), 0, _affine2_combine)
            xc = xc + d0
            xh = xh + d1
            j00, j01, j10, j11, r0, r1, res, hm = _lstm_eval(xc, xh, carry_c, carry_h, first, prev, u0, u1, u2, a0, a1,
                                                                   a2, a3, a4, mk, valid, HAS_MASK)
            limit = tol * tl.maximum(tl.maximum(h_max, hm), 1.0)
            it += 1
        res_max = tl.maximum(res_max, res)
        h_max = tl.maximum(h_max, hm)
        it_max = tl.maximum(it_max, it)
        odt = H.dtype.element_ty
        tl.store(H + unit * 2, xc.to(odt), mask=valid)
        tl.store(H + unit * 2 + 1, xh.to(odt), mask=valid)
        carry_c = _last_row(xc, rows, BLOCK_T)
        carry_h = _last_row(xh, rows, BLOCK_T)
        start += BLOCK_T
    out = STATS + (pid_b * tl.num_programs(0) + tl.program_id(0)) * 3
    tl.store(out, res_max)
    tl.store(out + 1, h_max)
    tl.store(out + 2, it_max.to(ACC))


@triton.jit
def _lstm_sequential_kernel(U, A, H0, M, H, T, D, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                            ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    a0, a1, a2 = _load3(A, offs_d, mask_d, D, ACC)
    a3 = tl.load(A + 3 * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    a4 = tl.load(A + 4 * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    c = tl.zeros([BLOCK_D], dtype=ACC)
    h = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_H0:
        c = tl.load(H0 + (pid_b * D + offs_d) * 2, mask=mask_d, other=0.0).to(ACC)
        h = tl.load(H0 + (pid_b * D + offs_d) * 2 + 1, mask=mask_d, other=0.0).to(ACC)
    odt = H.dtype.element_ty
    t = 0
    while t < T:
        u0, u1, u2 = _load3(U, (pid_b * T + t) * (3 * D) + offs_d, mask_d, D, ACC)
        fc, fh, _, _, _, _ = _lstm_cell(c, h, u0, u1, u2, a0, a1, a2, a3, a4)
        if HAS_MASK:
            mk = tl.load(M + pid_b * T + t).to(ACC)
            fc = mk * fc + (1.0 - mk) * c
            fh = mk * fh + (1.0 - mk) * h
        c = fc
        h = fh
        unit = (pid_b * T + t) * D + offs_d
        tl.store(H + unit * 2, c.to(odt), mask=mask_d)
        tl.store(H + unit * 2 + 1, h.to(odt), mask=mask_d)
        t += 1


@triton.jit
def _lstm_adjoint_kernel(U, A, H0, M, H, GH, GU, GA, GH0, T, D, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr,
                         ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    a0, a1, a2 = _load3(A, offs_d, mask_d, D, ACC)
    a3 = tl.load(A + 3 * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    a4 = tl.load(A + 4 * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    b0, b1, b2, b3, b4 = a0[None, :], a1[None, :], a2[None, :], a3[None, :], a4[None, :]
    i0 = tl.zeros([BLOCK_D], dtype=ACC)
    i1 = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_H0:
        i0 = tl.load(H0 + (pid_b * D + offs_d) * 2, mask=mask_d, other=0.0).to(ACC)
        i1 = tl.load(H0 + (pid_b * D + offs_d) * 2 + 1, mask=mask_d, other=0.0).to(ACC)
    l0 = tl.zeros([BLOCK_D], dtype=ACC)  # lambda (c, h) of the step after this tile
    l1 = tl.zeros([BLOCK_D], dtype=ACC)
    da0 = tl.zeros([BLOCK_D], dtype=ACC)
    da1 = tl.zeros([BLOCK_D], dtype=ACC)
    da2 = tl.zeros([BLOCK_D], dtype=ACC)
    da3 = tl.zeros([BLOCK_D], dtype=ACC)
    da4 = tl.zeros([BLOCK_D], dtype=ACC)
    done = 0
    while done < T:
        t = T - 1 - done - rows  # rows run backwards in time
        valid = (t >= 0)[:, None] & mask_d[None, :]
        has_next = valid & (t + 1 < T)[:, None]
        unit = (pid_b * T + t[:, None]) * D + offs_d[None, :]
        uoff = (pid_b * T + t[:, None]) * (3 * D) + offs_d[None, :]
        # transposed Jacobian of step t+1 at its previous state (c_t, h_t)
        hc = tl.load(H + unit * 2, mask=valid, other=0.0).to(ACC)
        hh = tl.load(H + unit * 2 + 1, mask=valid, other=0.0).to(ACC)
        n0, n1, n2 = _load3(U, uoff + 3 * D, has_next, D, ACC)
        _, _, j00, j01, j10, j11 = _lstm_cell(hc, hh, n0, n1, n2, b0, b1, b2, b3, b4)
        if HAS_MASK:
            mn = tl.load(M + pid_b * T + t + 1, mask=(t >= 0) & (t + 1 < T), other=0.0).to(ACC)[:, None]
            j00 = mn * j00 + (1.0 - mn)
            j01 = mn * j01
            j10 = mn * j10
            j11 = mn * j11 + (1.0 - mn)
        eye = tl.where(valid, 0.0, 1.0)  # rows before t = 0: identity (carry lambda_0)
        j00 = tl.where(has_next, j00, eye)
        j01 = tl.where(has_next, j01, 0.0)
        j10 = tl.where(has_next, j10, 0.0)
        j11 = tl.where(has_next, j11, eye)
        g0 = tl.load(GH + unit * 2, mask=valid, other=0.0).to(ACC)
        g1 = tl.load(GH + unit * 2 + 1, mask=valid, other=0.0).to(ACC)
        # lambda_t = g_t + J_{t+1}^T lambda_{t+1}: the transposed blocks go in as the maps
        m00, m01, m10, m11, e0, e1 = tl.associative_scan((j00, j10, j01, j11, g0, g1), 0, _affine2_combine)
        lc = e0 + m00 * l0[None, :] + m01 * l1[None, :]
        lh = e1 + m10 * l0[None, :] + m11 * l1[None, :]
        l0 = _last_row(lc, rows, BLOCK_T)
        l1 = _last_row(lh, rows, BLOCK_T)
        # vector-Jacobian products of step t at (c_{t-1}, h_{t-1}, u_t)
        mp = valid & (t >= 1)[:, None]
        first = (t == 0)[:, None]
        sc = tl.where(first, i0[None, :], tl.load(H + (unit - D) * 2, mask=mp, other=0.0).to(ACC))
        sh = tl.where(first, i1[None, :], tl.load(H + (unit - D) * 2 + 1, mask=mp, other=0.0).to(ACC))
        u0, u1, u2 = _load3(U, uoff, valid, D, ACC)
        if HAS_MASK:
            mt = tl.load(M + pid_b * T + t, mask=t >= 0, other=0.0).to(ACC)[:, None]
            lc = lc * mt
            lh = lh * mt
        gf, gz, go, c = _lstm_vjp(lc, lh, sc, sh, u0, u1, u2, b0, b1, b2, b3, b4)
        gdt = GU.dtype.element_ty
        tl.store(GU + uoff, gf.to(gdt), mask=valid)
        tl.store(GU + uoff + D, gz.to(gdt), mask=valid)
        tl.store(GU + uoff + 2 * D, go.to(gdt), mask=valid)
        da0 += tl.sum(tl.where(valid, gf * sh, 0.0), 0)
        da1 += tl.sum(tl.where(valid, gz * sh, 0.0), 0)
        da2 += tl.sum(tl.where(valid, go * sh, 0.0), 0)
        da3 += tl.sum(tl.where(valid, gf * sc, 0.0), 0)
        da4 += tl.sum(tl.where(valid, go * c, 0.0), 0)
        done += BLOCK_T
    out = GA + pid_b * 5 * D + offs_d
    tl.store(out, da0, mask=mask_d)
    tl.store(out + D, da1, mask=mask_d)
    tl.store(out + 2 * D, da2, mask=mask_d)
    tl.store(out + 3 * D, da3, mask=mask_d)
    tl.store(out + 4 * D, da4, mask=mask_d)
    if HAS_H0:  # dh0 = J_0^T lambda_0
        u0, u1, u2 = _load3(U, pid_b * T * 3 * D + offs_d, mask_d, D, ACC)
        _, _, j00, j01, j10, j11 = _lstm_cell(i0, i1, u0, u1, u2, a0, a1, a2, a3, a4)
        if HAS_MASK:
            m0 = tl.load(M + pid_b * T).to(ACC)
            j00 = m0 * j00 + (1.0 - m0)
            j01 = m0 * j01
            j10 = m0 * j10
            j11 = m0 * j11 + (1.0 - m0)
        tl.store(GH0 + (pid_b * D + offs_d) * 2, j00 * l0 + j10 * l1, mask=mask_d)
        tl.store(GH0 + (pid_b * D + offs_d) * 2 + 1, j01 * l0 + j11 * l1, mask=mask_d)


_KERNELS = {
    "gru": (_gru_newton_kernel, _gru_sequential_kernel, _gru_adjoint_kernel),
    "lstm": (_lstm_newton_kernel, _lstm_sequential_kernel, _lstm_adjoint_kernel),
}


# -- host side ------------------------------------------------------------------------------------------------------
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
    newton_kernel, sequential_kernel, _ = _KERNELS[cfg.cell]
    common = dict(HAS_H0=h0 is not None, HAS_MASK=mask is not None, ACC=_TL_ACC[acc], BLOCK_D=block_d)
    h0_arg = h if h0 is None else h0
    mask_arg = h if mask is None else mask
    newton_kernel[grid](u, a, h0_arg, mask_arg, h, stats, T, D, float(tol), cfg.max_iter, BLOCK_T=block_t, **common)
    res_abs, scale, iters = stats.amax(dim=(0, 1)).tolist()  # the one device sync
    res = res_abs / max(1.0, scale)
    info, _ = check_convergence(
        cfg.op, int(iters), res, tol, cfg.max_iter, cfg.on_fail,
        lambda: sequential_kernel[grid](u, a, h0_arg, mask_arg, h, T, D, **common), stacklevel=4,
    )  # the sequential kernel overwrites h in place
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
    _KERNELS[cell][2][grid](
        u, a, dummy if h0 is None else h0, dummy if mask is None else mask, h, gh.contiguous(), gu, ga,
        dummy if gh0 is None else gh0, T, D, HAS_H0=h0 is not None, HAS_MASK=mask is not None, ACC=_TL_ACC[acc],
        BLOCK_T=block_t, BLOCK_D=block_d,
    )
    return gu, ga.sum(0).to(a.dtype), None if gh0 is None else gh0.to(h0.dtype)


class _FusedNewtonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, u, a, h0, mask):
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
    return newton_solve(step, jac, u, (a,), h0, state_size=u.shape[-1], structure=structure, tol=cfg.tol,
                        max_iter=cfg.max_iter, on_fail=cfg.on_fail, backend=backend, return_info=True)


# -- public ops -----------------------------------------------------------------------------------------------------
def _check_args(op, cell, u, a, h0, mask, tol, max_iter, on_fail):
    check_tensor(op, "u", u, ndim=4)
    if u.shape[2] != 3:
        raise ValueError(f"{op}: `u` must be [B, T, 3, D] (input projections of the 3 gates), got {tuple(u.shape)}")
    if u.shape[1] == 0:
        raise ValueError(f"{op}: the sequence dimension (dim 1) of `u` is empty")
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
    if select_backend(op, device, backend) == "torch":
        h, info = _torch_solve(cfg, u, a, h0, mask, backend)
    else:
        acc = compute_dtype(u, a, h0)
        mask = None if mask is None else mask.to(acc).contiguous()
        h0 = None if h0 is None else h0.contiguous()
        h = _FusedNewtonFunction.apply(cfg, u.contiguous(), a.contiguous(), h0, mask)
        info = cfg.info
    return (h, info) if return_info else h


def fused_newton_gru(u, a, h0=None, mask=None, *, tol=None, max_iter=10, on_fail="fallback", backend=None,
                     return_info=False):
    """Solve the ParaGRU recurrence (``ParaGRUCell.step``) over ``u`` ``[B, T, 3, D]`` (rows z, r, c) with diagonals
    ``a`` ``[3, D]``, from ``h0`` ``[B, D]`` (zeros if None), with optional ``mask`` ``[B, T]`` (0 keeps the previous
    state). One fused Triton kernel per direction on CUDA (see the module docstring); ``newton_solve`` on the PyTorch
    backend. ``tol``, ``max_iter`` (per tile of the kernel), ``on_fail`` and ``return_info`` as in ``newton_solve``.
    Returns ``h`` ``[B, T, D]``, differentiable w.r.t. ``u``, ``a`` and ``h0``; with ``return_info`` also a
    :class:`NewtonInfo`."""
    return _fused_newton("fused_newton_gru", "gru", u, a, h0, mask, tol, max_iter, on_fail, backend, return_info)


def fused_newton_lstm(u, a, h0=None, mask=None, *, tol=None, max_iter=10, on_fail="fallback", backend=None,
                      return_info=False):
    """Solve the ParaLSTM recurrence (``ParaLSTMCell.step``) over ``u`` ``[B, T, 3, D]`` (rows f, z, o) with
    ``a`` ``[5, D]`` (a_f, a_z, a_o, p_f, p_o), from ``h0`` ``[B, D, 2]`` = (c, h) (zeros if None); otherwise as
    :func:`fused_newton_gru`. Returns the states ``[B, T, D, 2]``."""
    return _fused_newton("fused_newton_lstm", "lstm", u, a, h0, mask, tol, max_iter, on_fail, backend, return_info)
