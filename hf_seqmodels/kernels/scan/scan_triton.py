"""Triton linear scans (CUDA tensors; the CPU under ``TRITON_INTERPRET=1``). Same maths as ``scan_torch``.

Both structures (diagonal: ``N = 1`` state component, 2x2 blocks: ``N = 2``) run the same two kernels on the shared
tile walk (``tiles.py``): a tile is scanned with ``tl.associative_scan`` over the affine combine and shifted by the
carried state. Tiles run in scan order, so a reverse scan is the same kernel walking time from the end. Rows past the
end of the sequence load the identity map, so the last row of every tile is the carried state. Accumulation happens
in the dtype of the output buffer (fp32, or fp64 for fp64 inputs); the wrapper casts back to the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .._dispatch import compute_dtype
from ..triton_utils import patch_interpreter
from .tiles import (
    COMPONENTS,
    apply_carry,
    initial_state,
    last_rows,
    load_map,
    load_state,
    previous_state,
    program_units,
    scan_tile,
    store_state,
    tile_walk,
    zeros,
)


@triton.jit
def _fwd_tile(OPTS: tl.constexpr, ctx, carry, stats, pid_b, t, offs_d, valid, T, D):
    A, Bv, H = ctx
    N: tl.constexpr = len(carry)
    acc = H.dtype.element_ty
    unit = pid_b * T * D + t[:, None] * D + offs_d[None, :]  # index of (b, t, d)
    a = load_map(A, unit, valid, N, acc, False, True)  # rows past the end: the identity
    h = apply_carry(scan_tile(a, load_state(Bv, unit, valid, N, acc)), carry)
    store_state(H, unit, h, valid)
    return last_rows(h), stats


@triton.jit
def _bwd_tile(OPTS: tl.constexpr, ctx, carry, stats, pid_b, t, offs_d, valid, T, D):
    # g_t = dh_t + A_next(t)^T g_next(t), scanned against the forward direction; dA_t = g_t h_prev(t)^T, db_t = g_t.
    A, H, DH, DA, DB, h0 = ctx
    REVERSE: tl.constexpr = OPTS[0]
    N: tl.constexpr = len(carry)
    acc = DB.dtype.element_ty
    step = -1 if REVERSE else 1
    unit = pid_b * T * D + t[:, None] * D + offs_d[None, :]
    t_next = t + step
    has_next = valid & ((t_next >= 0) & (t_next < T))[:, None]
    coef = load_map(A, unit + step * D, has_next, N, acc, True, False)
    g = apply_carry(scan_tile(coef, load_state(DH, unit, valid, N, acc)), carry)
    carry = last_rows(g)
    hp = previous_state(H, unit, t, step, valid, h0, T, D, acc)
    store_state(DB, unit, g, valid)
    for k in tl.static_range(N * N):  # dA = g h_prev^T
        tl.store(DA + unit * (N * N) + k, g[k // N] * hp[k % N], mask=valid)
    return carry, stats


@triton.jit
def _fwd_kernel(
    A,
    Bv,
    H0,
    H,
    T,
    D,
    N: tl.constexpr,
    HAS_H0: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b, offs_d, mask_d = program_units(D, BLOCK_D)
    carry = initial_state(H0, pid_b, offs_d, mask_d, D, N, HAS_H0, H.dtype.element_ty)
    tile_walk(_fwd_tile, None, (A, Bv, H), carry, (), pid_b, offs_d, mask_d, T, D, REVERSE, BLOCK_T)


@triton.jit
def _bwd_kernel(
    A,
    H,
    H0,
    DH,
    DA,
    DB,
    T,
    D,
    N: tl.constexpr,
    HAS_H0: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b, offs_d, mask_d = program_units(D, BLOCK_D)
    acc = DB.dtype.element_ty
    h0 = initial_state(H0, pid_b, offs_d, mask_d, D, N, HAS_H0, acc)
    tile_walk(
        _bwd_tile,
        (REVERSE,),
        (A, H, DH, DA, DB, h0),
        zeros(N, BLOCK_D, acc),
        (),
        pid_b,
        offs_d,
        mask_d,
        T,
        D,
        not REVERSE,
        BLOCK_T,
    )


# Largest tiles; short sequences and narrow states get smaller ones (the interpreter pays per tile element).
MAX_BLOCK_T = {"diagonal": 64, "block2": 32}
MAX_BLOCK_D = 32


def check_offsets(kind, T, D):
    """The kernels index within one sequence with 32-bit offsets (64-bit only for the batch row, which keeps the hot
    loop's address arithmetic small): refuse a sequence whose per-row size would overflow them."""
    elements = T * D * COMPONENTS[kind] ** 2
    if elements >= 2**31:
        op = "linear_scan" if kind == "diagonal" else "block2_scan"
        raise ValueError(
            f"{op}: the Triton path supports T * D * {COMPONENTS[kind] ** 2} < 2**31 per sequence, got "
            f"T={T}, D={D}; split the sequence (initial_state carries it) or use backend='torch'"
        )


def _launch_cfg(kind, B, T, D):
    block_d = min(MAX_BLOCK_D, triton.next_power_of_2(D))
    block_t = min(MAX_BLOCK_T[kind], triton.next_power_of_2(T))
    return (triton.cdiv(D, block_d), B), block_t, block_d


class ScanTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, a, b, h0, reverse):
        patch_interpreter()
        a, b = a.contiguous(), b.contiguous()
        h0 = None if h0 is None else h0.contiguous()
        B, T, D = b.shape[:3]
        check_offsets(kind, T, D)
        h = torch.empty(b.shape, dtype=compute_dtype(a, b, h0), device=b.device)
        grid, block_t, block_d = _launch_cfg(kind, B, T, D)
        _fwd_kernel[grid](
            a,
            b,
            h if h0 is None else h0,
            h,
            T,
            D,
            N=COMPONENTS[kind],
            HAS_H0=h0 is not None,
            REVERSE=reverse,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
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
        _bwd_kernel[grid](
            a,
            h,
            h if h0 is None else h0,
            dh,
            da,
            db,
            T,
            D,
            N=COMPONENTS[ctx.kind],
            HAS_H0=h0 is not None,
            REVERSE=ctx.reverse,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
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
