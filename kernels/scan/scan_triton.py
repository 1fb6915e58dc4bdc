"""Triton linear scans (CUDA tensors; the CPU under ``TRITON_INTERPRET=1``). Same maths as ``scan_torch``.

One program owns ``BLOCK_D`` units of one batch row and walks the sequence in tiles of ``BLOCK_T`` steps: a tile is
scanned with ``tl.associative_scan`` over the affine combine and shifted by the carried state. Tiles run in scan
order, so a reverse scan is the same kernel reading time indices from the end. Rows past the end of the sequence
load the identity map, so the last row of every tile is the carried state. Tile loops are ``while`` loops: the
interpreter cannot take a runtime ``range`` bound with numpy >= 2.4. Accumulation happens in the dtype of the
output buffer (fp32, or fp64 for fp64 inputs); the wrapper casts back to the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .._dispatch import compute_dtype


@triton.jit
def _affine_combine(a_l, b_l, a_r, b_r):
    # ``l`` comes first in scan order: x -> a_r (a_l x + b_l) + b_r
    return a_r * a_l, a_r * b_l + b_r


@triton.jit
def _affine2_combine(l00, l01, l10, l11, lb0, lb1, r00, r01, r10, r11, rb0, rb1):
    return (
        r00 * l00 + r01 * l10,
        r00 * l01 + r01 * l11,
        r10 * l00 + r11 * l10,
        r10 * l01 + r11 * l11,
        r00 * lb0 + r01 * lb1 + rb0,
        r10 * lb0 + r11 * lb1 + rb1,
    )


@triton.jit
def _last_row(x, rows, BLOCK_T: tl.constexpr):
    return tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, x, 0.0), axis=0)


@triton.jit
def _time_index(start, rows, T, BACKWARDS: tl.constexpr, BLOCK_T: tl.constexpr):
    i = start + rows
    t = T - 1 - i if BACKWARDS else i
    return t, i < T


@triton.jit
def _diag_fwd_kernel(A, Bv, H0, H, T, D, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    acc = H.dtype.element_ty
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b * T * D
    carry = tl.zeros([BLOCK_D], dtype=acc)
    if HAS_H0:
        carry = tl.load(H0 + pid_b * D + offs_d, mask=mask_d, other=0.0).to(acc)
    start = 0
    while start < T:
        t, valid = _time_index(start, rows, T, REVERSE, BLOCK_T)
        m = valid[:, None] & mask_d[None, :]
        off = base + t[:, None] * D + offs_d[None, :]
        a = tl.load(A + off, mask=m, other=1.0).to(acc)
        b = tl.load(Bv + off, mask=m, other=0.0).to(acc)
        ca, cb = tl.associative_scan((a, b), 0, _affine_combine)
        h = cb + ca * carry[None, :]
        tl.store(H + off, h, mask=m)
        carry = _last_row(h, rows, BLOCK_T)
        start += BLOCK_T


@triton.jit
def _diag_bwd_kernel(A, H, H0, DH, DA, DB, T, D, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # g_t = dh_t + a_next(t) g_next(t), scanned against the forward direction; da_t = g_t h_prev(t).
    acc = DB.dtype.element_ty
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b * T * D
    step = -1 if REVERSE else 1
    h0 = tl.zeros([BLOCK_D], dtype=acc)
    if HAS_H0:
        h0 = tl.load(H0 + pid_b * D + offs_d, mask=mask_d, other=0.0).to(acc)
    carry = tl.zeros([BLOCK_D], dtype=acc)
    start = 0
    while start < T:
        t, valid = _time_index(start, rows, T, not REVERSE, BLOCK_T)
        m = valid[:, None] & mask_d[None, :]
        off = base + t[:, None] * D + offs_d[None, :]
        t_next = t + step
        has_next = (t_next >= 0) & (t_next < T)
        coef = tl.load(A + off + step * D, mask=m & has_next[:, None], other=0.0).to(acc)
        dh = tl.load(DH + off, mask=m, other=0.0).to(acc)
        ca, cb = tl.associative_scan((coef, dh), 0, _affine_combine)
        g = cb + ca * carry[None, :]
        carry = _last_row(g, rows, BLOCK_T)
        t_prev = t - step
        has_prev = (t_prev >= 0) & (t_prev < T)
        hp = tl.load(H + off - step * D, mask=m & has_prev[:, None], other=0.0).to(acc)
        hp = tl.where(has_prev[:, None], hp, h0[None, :])
        tl.store(DB + off, g, mask=m)
        tl.store(DA + off, g * hp, mask=m)
        start += BLOCK_T


@triton.jit
def _block2_fwd_kernel(A, Bv, H0, H, T, D, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    acc = H.dtype.element_ty
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b * T * D
    c0 = tl.zeros([BLOCK_D], dtype=acc)
    c1 = tl.zeros([BLOCK_D], dtype=acc)
    if HAS_H0:
        c0 = tl.load(H0 + (pid_b * D + offs_d) * 2, mask=mask_d, other=0.0).to(acc)
        c1 = tl.load(H0 + (pid_b * D + offs_d) * 2 + 1, mask=mask_d, other=0.0).to(acc)
    start = 0
    while start < T:
        t, valid = _time_index(start, rows, T, REVERSE, BLOCK_T)
        m = valid[:, None] & mask_d[None, :]
        unit = base + t[:, None] * D + offs_d[None, :]  # index of (b, t, d)
        a00 = tl.load(A + unit * 4, mask=m, other=1.0).to(acc)
        a01 = tl.load(A + unit * 4 + 1, mask=m, other=0.0).to(acc)
        a10 = tl.load(A + unit * 4 + 2, mask=m, other=0.0).to(acc)
        a11 = tl.load(A + unit * 4 + 3, mask=m, other=1.0).to(acc)
        b0 = tl.load(Bv + unit * 2, mask=m, other=0.0).to(acc)
        b1 = tl.load(Bv + unit * 2 + 1, mask=m, other=0.0).to(acc)
        a00, a01, a10, a11, b0, b1 = tl.associative_scan((a00, a01, a10, a11, b0, b1), 0, _affine2_combine)
        h0 = b0 + a00 * c0[None, :] + a01 * c1[None, :]
        h1 = b1 + a10 * c0[None, :] + a11 * c1[None, :]
        tl.store(H + unit * 2, h0, mask=m)
        tl.store(H + unit * 2 + 1, h1, mask=m)
        c0 = _last_row(h0, rows, BLOCK_T)
        c1 = _last_row(h1, rows, BLOCK_T)
        start += BLOCK_T


@triton.jit
def _block2_bwd_kernel(A, H, H0, DH, DA, DB, T, D, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # g_t = dh_t + A_next(t)^T g_next(t); dA_t = g_t h_prev(t)^T.
    acc = DB.dtype.element_ty
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b * T * D
    step = -1 if REVERSE else 1
    i0 = tl.zeros([BLOCK_D], dtype=acc)
    i1 = tl.zeros([BLOCK_D], dtype=acc)
    if HAS_H0:
        i0 = tl.load(H0 + (pid_b * D + offs_d) * 2, mask=mask_d, other=0.0).to(acc)
        i1 = tl.load(H0 + (pid_b * D + offs_d) * 2 + 1, mask=mask_d, other=0.0).to(acc)
    c0 = tl.zeros([BLOCK_D], dtype=acc)
    c1 = tl.zeros([BLOCK_D], dtype=acc)
    start = 0
    while start < T:
        t, valid = _time_index(start, rows, T, not REVERSE, BLOCK_T)
        m = valid[:, None] & mask_d[None, :]
        unit = base + t[:, None] * D + offs_d[None, :]
        t_next = t + step
        mn = m & ((t_next >= 0) & (t_next < T))[:, None]
        nxt = (unit + step * D) * 4
        # transposed A of the next step
        a00 = tl.load(A + nxt, mask=mn, other=0.0).to(acc)
        a01 = tl.load(A + nxt + 2, mask=mn, other=0.0).to(acc)
        a10 = tl.load(A + nxt + 1, mask=mn, other=0.0).to(acc)
        a11 = tl.load(A + nxt + 3, mask=mn, other=0.0).to(acc)
        d0 = tl.load(DH + unit * 2, mask=m, other=0.0).to(acc)
        d1 = tl.load(DH + unit * 2 + 1, mask=m, other=0.0).to(acc)
        a00, a01, a10, a11, d0, d1 = tl.associative_scan((a00, a01, a10, a11, d0, d1), 0, _affine2_combine)
        g0 = d0 + a00 * c0[None, :] + a01 * c1[None, :]
        g1 = d1 + a10 * c0[None, :] + a11 * c1[None, :]
        c0 = _last_row(g0, rows, BLOCK_T)
        c1 = _last_row(g1, rows, BLOCK_T)
        t_prev = t - step
        has_prev = (t_prev >= 0) & (t_prev < T)
        mp = m & has_prev[:, None]
        prv = (unit - step * D) * 2
        p0 = tl.where(has_prev[:, None], tl.load(H + prv, mask=mp, other=0.0).to(acc), i0[None, :])
        p1 = tl.where(has_prev[:, None], tl.load(H + prv + 1, mask=mp, other=0.0).to(acc), i1[None, :])
        tl.store(DB + unit * 2, g0, mask=m)
        tl.store(DB + unit * 2 + 1, g1, mask=m)
        tl.store(DA + unit * 4, g0 * p0, mask=m)
        tl.store(DA + unit * 4 + 1, g0 * p1, mask=m)
        tl.store(DA + unit * 4 + 2, g1 * p0, mask=m)
        tl.store(DA + unit * 4 + 3, g1 * p1, mask=m)
        start += BLOCK_T


_KERNELS = {"diagonal": (_diag_fwd_kernel, _diag_bwd_kernel), "block2": (_block2_fwd_kernel, _block2_bwd_kernel)}
# Largest tiles; short sequences and narrow states get smaller ones (the interpreter pays per tile element).
MAX_BLOCK_T = {"diagonal": 64, "block2": 32}
MAX_BLOCK_D = 32


def _launch_cfg(kind, B, T, D):
    block_d = min(MAX_BLOCK_D, triton.next_power_of_2(D))
    block_t = min(MAX_BLOCK_T[kind], triton.next_power_of_2(T))
    return (triton.cdiv(D, block_d), B), block_t, block_d


class ScanTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, a, b, h0, reverse):
        a, b = a.contiguous(), b.contiguous()
        h0 = None if h0 is None else h0.contiguous()
        B, T, D = b.shape[:3]
        h = torch.empty(b.shape, dtype=compute_dtype(a, b, h0), device=b.device)
        grid, block_t, block_d = _launch_cfg(kind, B, T, D)
        _KERNELS[kind][0][grid](
            a, b, h if h0 is None else h0, h, T, D, HAS_H0=h0 is not None, REVERSE=reverse,
            BLOCK_T=block_t, BLOCK_D=block_d,
        )
        ctx.kind, ctx.reverse = kind, reverse
        ctx.save_for_backward(a, h, h0)
        return h.to(b.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh):
        a, h, h0 = ctx.saved_tensors
        dh = dh.contiguous()
        B, T, D = h.shape[:3]
        da = torch.empty(a.shape, dtype=h.dtype, device=h.device)
        db = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        grid, block_t, block_d = _launch_cfg(ctx.kind, B, T, D)
        _KERNELS[ctx.kind][1][grid](
            a, h, h if h0 is None else h0, dh, da, db, T, D, HAS_H0=h0 is not None, REVERSE=ctx.reverse,
            BLOCK_T=block_t, BLOCK_D=block_d,
        )
        dh0 = None
        if ctx.needs_input_grad[3]:
            first = -1 if ctx.reverse else 0
            a_first, g_first = a[:, first].to(h.dtype), db[:, first]
            if ctx.kind == "diagonal":
                dh0 = (a_first * g_first).to(h0.dtype)
            else:
                dh0 = (a_first.transpose(-1, -2) @ g_first.unsqueeze(-1)).squeeze(-1).to(h0.dtype)
        return None, da.to(a.dtype), db.to(dh.dtype), dh0, None


def linear_scan_triton(a, b, initial_state=None, reverse=False):
    return ScanTritonFunction.apply("diagonal", a, b, initial_state, reverse)


def block2_scan_triton(A, b, initial_state=None, reverse=False):
    return ScanTritonFunction.apply("block2", A, b, initial_state, reverse)
