"""Chunkwise gated linear attention in Triton: forward and explicit backward.

Same math as ``chunk_torch.py`` (see its docstring), on chunks of ``BT = 64`` tokens, state and all arithmetic in
fp32 (tl.dot operands in the input dtype, fp32 accumulation). Kernels:

forward
  1. ``_cumsum_kernel``     chunk-local cumulative log-gate, in base 2 (exp2 everywhere), fp32, written padded to a
                            whole number of chunks: ``gc [B, N*BT, H, K]``. Padded rows repeat the chunk's last value.
  2. ``_state_fwd_kernel``  state entering each chunk, ``h [B, H, N, K, V]`` fp32 (and the final state); one program
                            per (batch*head, V tile, K tile) loops over the chunks in order.
  3. ``_output_kernel``     ``o = scale * ((q*2^gc) h_n + A v)`` with ``A`` the gated scores inside the chunk; one
                            program per (batch*head, chunk, V tile), looping over K tiles.
backward (keeps ``q, k, v, gc, initial_state`` from the forward; ``h`` is recomputed with kernel 2, never stored)
  4. ``_state_bwd_kernel``  ``dh [B, H, N, K, V]``: gradient w.r.t. the state leaving each chunk, chunks in reverse;
                            also the gradient of the initial state.
  5. ``_dv_kernel``         ``dv = A^T do + kdec dh_n`` per (batch*head, chunk, V tile), looping over K tiles.
  6. ``_dqkg_kernel``       ``dq, dk, dg`` per (batch*head, chunk, K tile), looping over V tiles.
Memory kept for the backward: the inputs and ``gc`` (fp32, ``[B, N*BT, H, K]``); the backward allocates ``h`` and
``dh`` (fp32, ``[B, H, N, K, V]`` each) for its duration. Tile sizes and warps are set per kernel below, no autotuning.

Scores inside a chunk, ``A[i,j] = sum_k q_ik k_jk 2^(gc_ik - gc_jk)`` (j <= i), come from 16-row sub-blocks so
that every exponent is <= 0: keys in a sub-block before the query's use the first row of the query's sub-block as
the reference (one tensor-core dot per query sub-block); the diagonal sub-blocks are built key column by key column
in fp32 with the exponent masked before exp2.

``dg`` needs no sequence-long cumsum: for t in chunk n, ``dg_t = sum_{s>=t in the chunk} (q dq - k dk)_s +
sum_v(S_end * dh_n)`` where ``S_end`` is the state leaving the chunk (the final state for the last chunk), and
``sum_v(S_end * dh_n) = 2^glast * sum_v(h_n * dh_n) + sum_{rows of the chunk} k * dk_inter``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_utils import check_triton_dtypes, dot_dtype, dot_precision, pow2_block

BT = 64  # chunk length
SUB = 16  # sub-block length inside a chunk


@triton.jit
def _tile(ptr, rows, cols, stride, nrows, ncols):
    """Load ``ptr[rows, cols]`` (row stride ``stride``), zero outside ``rows < nrows`` and ``cols < ncols``."""
    mask = (rows[:, None] < nrows) & (cols[None, :] < ncols)
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _cumsum_kernel(g, gc, T, TP, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    i_bh, i_n, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    rows = i_n * BT + tl.arange(0, BT)
    cols = i_k * BK + tl.arange(0, BK)
    x = _tile(g + (i_b.to(tl.int64) * T * H + i_h) * K, rows, cols, H * K, T, K).to(tl.float32)
    y = tl.cumsum(x, axis=0) * 1.4426950408889634  # log2(e): the kernels use exp2
    out = gc + (i_b.to(tl.int64) * TP * H + i_h) * K + rows[:, None] * (H * K) + cols[None, :]
    tl.store(out, y, mask=cols[None, :] < K)


@triton.jit
def _state_fwd_kernel(k, v, gc, h, h0, ht, T, TP, N, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                      STORE_FINAL: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_bh, i_v, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = (ck[:, None] < K) & (cv[None, :] < V)
    k_ptr = k + (i_b.to(tl.int64) * T * H + i_h) * K
    v_ptr = v + (i_b.to(tl.int64) * T * H + i_h) * V
    g_ptr = gc + (i_b.to(tl.int64) * TP * H + i_h) * K
    h_ptr = h + i_bh.to(tl.int64) * N * K * V

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    for i_n in range(N):
        tl.store(h_ptr + i_n * K * V + kv, S, mask=kv_mask)
        rows = i_n * BT + tl.arange(0, BT)
        b_k = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_v = _tile(v_ptr, rows, cv, H * V, T, V).to(DT)
        b_g = _tile(g_ptr, rows, ck, H * K, TP, K)
        g_last = tl.load(g_ptr + (i_n * BT + BT - 1) * H * K + ck, mask=ck < K, other=0.0)
        b_kd = (b_k * tl.exp2(g_last[None, :] - b_g)).to(DT)
        S = S * tl.exp2(g_last)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    if STORE_FINAL:
        tl.store(ht + i_bh.to(tl.int64) * K * V + kv, S, mask=kv_mask)


@triton.jit
def _intra_scores(b_q, b_k, b_g, k_ptr, g_ptr, t0, ck, T, TP, stride, K,
                  BT: tl.constexpr, SUB: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """One K tile's share of A[i, j] = sum_k q_ik k_jk 2^(g_ik - g_jk), j <= i, rows of the chunk starting at t0."""
    r = tl.arange(0, BT)
    blk = r // SUB
    g_first = _tile(g_ptr, t0 + blk * SUB, ck, stride, TP, K)  # first row of each row's sub-block
    q_rel = b_q * tl.exp2(b_g - g_first)
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for I in tl.static_range(1, BT // SUB):
        g_ref = tl.load(g_ptr + (t0 + I * SUB) * stride + ck, mask=ck < K, other=0.0)
        k_rel = b_k * tl.exp2(tl.where((blk < I)[:, None], g_ref[None, :] - b_g, float("-inf")))
        q_I = tl.where((blk == I)[:, None], q_rel, 0.0)
        A += tl.dot(q_I.to(DT), tl.trans(k_rel.to(DT)), input_precision=PREC)
    for j in range(SUB):
        c = blk * SUB + j  # the j-th key of each row's sub-block
        k_c = _tile(k_ptr, t0 + c, ck, stride, T, K).to(tl.float32)
        g_c = _tile(g_ptr, t0 + c, ck, stride, TP, K)
        w = tl.exp2(tl.where((r % SUB >= j)[:, None], b_g - g_c, float("-inf")))
        a = tl.sum(b_q * k_c * w, axis=1)
        A += tl.where(r[None, :] == c[:, None], a[:, None], 0.0)
    return A


@triton.jit
def _output_kernel(q, k, v, gc, h, o, scale, T, TP, N, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SUB: tl.constexpr, DT: tl.constexpr,
                   PREC: tl.constexpr):
    i_bh, i_n, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_n * BT
    rows = t0 + tl.arange(0, BT)
    cv = i_v * BV + tl.arange(0, BV)
    q_ptr = q + (i_b.to(tl.int64) * T * H + i_h) * K
    k_ptr = k + (i_b.to(tl.int64) * T * H + i_h) * K
    v_ptr = v + (i_b.to(tl.int64) * T * H + i_h) * V
    o_ptr = o + (i_b.to(tl.int64) * T * H + i_h) * V
    g_ptr = gc + (i_b.to(tl.int64) * TP * H + i_h) * K
    h_ptr = h + (i_bh.to(tl.int64) * N + i_n) * K * V

    A = tl.zeros([BT, BT], dtype=tl.float32)
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_k = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_g = _tile(g_ptr, rows, ck, H * K, TP, K)
        A += _intra_scores(b_q, b_k, b_g, k_ptr, g_ptr, t0, ck, T, TP, H * K, K, BT, SUB, DT, PREC)
        b_h = _tile(h_ptr, ck, cv, V, K, V)
        acc += tl.dot((b_q * tl.exp2(b_g)).to(DT), b_h.to(DT), input_precision=PREC)
    b_v = _tile(v_ptr, rows, cv, H * V, T, V).to(DT)
    acc += tl.dot(A.to(DT), b_v, input_precision=PREC)
    out = o_ptr + rows[:, None] * (H * V) + cv[None, :]
    tl.store(out, (acc * scale).to(o.dtype.element_ty), mask=(rows[:, None] < T) & (cv[None, :] < V))


@triton.jit
def _state_bwd_kernel(q, do, gc, dh, dht, dh0, scale, T, TP, N, H: tl.constexpr, K: tl.constexpr,
                      V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    i_bh, i_v, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = (ck[:, None] < K) & (cv[None, :] < V)
    q_ptr = q + (i_b.to(tl.int64) * T * H + i_h) * K
    do_ptr = do + (i_b.to(tl.int64) * T * H + i_h) * V
    g_ptr = gc + (i_b.to(tl.int64) * TP * H + i_h) * K
    dh_ptr = dh + i_bh.to(tl.int64) * N * K * V

    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    for i in range(N):
        i_n = N - 1 - i
        tl.store(dh_ptr + i_n * K * V + kv, dS, mask=kv_mask)
        rows = i_n * BT + tl.arange(0, BT)
        b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_g = _tile(g_ptr, rows, ck, H * K, TP, K)
        b_do = _tile(do_ptr, rows, cv, H * V, T, V).to(DT)
        g_last = tl.load(g_ptr + (i_n * BT + BT - 1) * H * K + ck, mask=ck < K, other=0.0)
        b_qg = (b_q * tl.exp2(b_g) * scale).to(DT)
        dS = dS * tl.exp2(g_last)[:, None] + tl.dot(tl.trans(b_qg), b_do, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + kv, dS, mask=kv_mask)


@triton.jit
def _dv_kernel(q, k, gc, do, dh, dv, scale, T, TP, N, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SUB: tl.constexpr, DT: tl.constexpr,
               PREC: tl.constexpr):
    i_bh, i_n, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_n * BT
    rows = t0 + tl.arange(0, BT)
    cv = i_v * BV + tl.arange(0, BV)
    q_ptr = q + (i_b.to(tl.int64) * T * H + i_h) * K
    k_ptr = k + (i_b.to(tl.int64) * T * H + i_h) * K
    do_ptr = do + (i_b.to(tl.int64) * T * H + i_h) * V
    dv_ptr = dv + (i_b.to(tl.int64) * T * H + i_h) * V
    g_ptr = gc + (i_b.to(tl.int64) * TP * H + i_h) * K
    dh_ptr = dh + (i_bh.to(tl.int64) * N + i_n) * K * V

    A = tl.zeros([BT, BT], dtype=tl.float32)
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_k = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_g = _tile(g_ptr, rows, ck, H * K, TP, K)
        A += _intra_scores(b_q, b_k, b_g, k_ptr, g_ptr, t0, ck, T, TP, H * K, K, BT, SUB, DT, PREC)
        g_last = tl.load(g_ptr + (t0 + BT - 1) * H * K + ck, mask=ck < K, other=0.0)
        b_dh = _tile(dh_ptr, ck, cv, V, K, V)
        b_kd = b_k * tl.exp2(g_last[None, :] - b_g)
        acc += tl.dot(b_kd.to(DT), b_dh.to(DT), input_precision=PREC)
    b_do = _tile(do_ptr, rows, cv, H * V, T, V).to(DT)
    acc += tl.dot(tl.trans((A * scale).to(DT)), b_do, input_precision=PREC)
    out = dv_ptr + rows[:, None] * (H * V) + cv[None, :]
    tl.store(out, acc.to(dv.dtype.element_ty), mask=(rows[:, None] < T) & (cv[None, :] < V))


@triton.jit
def _dqkg_kernel(q, k, v, gc, do, h, dh, dq, dk, dg, scale, T, TP, N, H: tl.constexpr, K: tl.constexpr,
                 V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SUB: tl.constexpr,
                 DT: tl.constexpr, PREC: tl.constexpr):
    i_bh, i_n, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_n * BT
    r = tl.arange(0, BT)
    blk = r // SUB
    rows = t0 + r
    ck = i_k * BK + tl.arange(0, BK)
    tok_k = (i_b.to(tl.int64) * T * H + i_h) * K
    tok_v = (i_b.to(tl.int64) * T * H + i_h) * V
    g_ptr = gc + (i_b.to(tl.int64) * TP * H + i_h) * K
    h_off = (i_bh.to(tl.int64) * N + i_n) * K * V

    b_q = _tile(q + tok_k, rows, ck, H * K, T, K).to(tl.float32)
    b_k = _tile(k + tok_k, rows, ck, H * K, T, K).to(tl.float32)
    b_g = _tile(g_ptr, rows, ck, H * K, TP, K)
    g_last = tl.load(g_ptr + (t0 + BT - 1) * H * K + ck, mask=ck < K, other=0.0)

    dA = tl.zeros([BT, BT], dtype=tl.float32)
    dq_h = tl.zeros([BT, BK], dtype=tl.float32)  # do h^T
    dk_h = tl.zeros([BT, BK], dtype=tl.float32)  # v dh^T
    h_dh = tl.zeros([BK], dtype=tl.float32)  # sum_v h * dh
    for i_v in range(tl.cdiv(V, BV)):
        cv = i_v * BV + tl.arange(0, BV)
        b_v = _tile(v + tok_v, rows, cv, H * V, T, V).to(DT)
        b_do = _tile(do + tok_v, rows, cv, H * V, T, V).to(DT)
        b_h = _tile(h + h_off, ck, cv, V, K, V)
        b_dh = _tile(dh + h_off, ck, cv, V, K, V)
        dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        dq_h += tl.dot(b_do, tl.trans(b_h.to(DT)), input_precision=PREC)
        dk_h += tl.dot(b_v, tl.trans(b_dh.to(DT)), input_precision=PREC)
        h_dh += tl.sum(b_h * b_dh, axis=1)
    dA = tl.where(r[:, None] >= r[None, :], dA, 0.0) * scale

    # sub-blocks before the diagonal, referenced to the first row of the query's sub-block (exponents <= 0)
    g_first = _tile(g_ptr, t0 + blk * SUB, ck, H * K, TP, K)
    q_fac = tl.exp2(b_g - g_first)
    q_rel = b_q * q_fac
    dA_dt = dA.to(DT)
    dq_i = tl.zeros([BT, BK], dtype=tl.float32)
    dk_i = tl.zeros([BT, BK], dtype=tl.float32)
    for I in tl.static_range(1, BT // SUB):
        g_ref = tl.load(g_ptr + (t0 + I * SUB) * H * K + ck, mask=ck < K, other=0.0)
        k_fac = tl.exp2(tl.where((blk < I)[:, None], g_ref[None, :] - b_g, float("-inf")))
        dq_I = tl.dot(dA_dt, (b_k * k_fac).to(DT), input_precision=PREC)
        dq_i += tl.where((blk == I)[:, None], dq_I, 0.0)
        q_I = tl.where((blk == I)[:, None], q_rel, 0.0)
        dk_i += k_fac * tl.dot(tl.trans(dA_dt), q_I.to(DT), input_precision=PREC)
    dq_i *= q_fac
    # diagonal sub-blocks, one offset inside the sub-block at a time, in fp32
    for j in range(SUB):
        c = blk * SUB + j
        k_c = _tile(k + tok_k, t0 + c, ck, H * K, T, K).to(tl.float32)
        q_c = _tile(q + tok_k, t0 + c, ck, H * K, T, K).to(tl.float32)
        g_c = _tile(g_ptr, t0 + c, ck, H * K, TP, K)
        # row i, key c(i) <= i
        dA_col = tl.sum(tl.where(r[None, :] == c[:, None], dA, 0.0), axis=1)
        w_q = tl.exp2(tl.where((r % SUB >= j)[:, None], b_g - g_c, float("-inf")))
        dq_i += dA_col[:, None] * k_c * w_q
        # key row i, query c(i) >= i
        dA_row = tl.sum(tl.where(r[:, None] == c[None, :], dA, 0.0), axis=0)
        w_k = tl.exp2(tl.where((r % SUB <= j)[:, None], g_c - b_g, float("-inf")))
        dk_i += dA_row[:, None] * q_c * w_k

    b_dq = dq_i + dq_h * tl.exp2(b_g) * scale
    dk_inter = dk_h * tl.exp2(g_last[None, :] - b_g)
    b_dk = dk_i + dk_inter
    carry = tl.exp2(g_last) * h_dh + tl.sum(b_k * dk_inter, axis=0)
    b_dg = tl.cumsum(b_q * b_dq - b_k * b_dk, axis=0, reverse=True) + carry[None, :]

    mask = (rows[:, None] < T) & (ck[None, :] < K)
    off = rows[:, None] * (H * K) + ck[None, :]
    tl.store(dq + tok_k + off, b_dq.to(dq.dtype.element_ty), mask=mask)
    tl.store(dk + tok_k + off, b_dk.to(dk.dtype.element_ty), mask=mask)
    tl.store(dg + tok_k + off, b_dg.to(dg.dtype.element_ty), mask=mask)


def _shapes(q, v):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = triton.cdiv(T, BT)
    return B, T, H, K, V, N


def _state_tiles(BH, K, V):
    """(BK, BV, num_warps) of the sequential state kernels: smaller tiles when there are few (batch, head) pairs,
    so that more programs fill the GPU; 8 warps keep a 64x64 fp32 state (and its update) unspilled."""
    t = 64 if BH >= 64 else 32
    BK, BV = pow2_block(K, hi=t), pow2_block(V, hi=t)
    return BK, BV, 8 if BK * BV >= 4096 else 4


def _local_cumsum(g, T, N):
    B, _, H, K = g.shape
    gc = torch.empty(B, N * BT, H, K, dtype=torch.float32, device=g.device)
    BK = pow2_block(K, hi=64)
    _cumsum_kernel[(B * H, N, triton.cdiv(K, BK))](g, gc, T, N * BT, H, K, BT, BK)
    return gc


def _states(k, v, gc, initial_state, output_final_state):
    B, T, H, K, V, N = _shapes(k, v)
    BK, BV, warps = _state_tiles(B * H, K, V)
    h = torch.empty(B, H, N, K, V, dtype=torch.float32, device=k.device)
    final = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    grid = (B * H, triton.cdiv(V, BV), triton.cdiv(K, BK))
    _state_fwd_kernel[grid](
        k, v, gc, h, initial_state, final, T, N * BT, N, H, K, V, BT, BK, BV,
        initial_state is not None, output_final_state, dot_dtype(k.dtype), dot_precision(k.dtype), num_warps=warps,
    )
    return h, final


class ChunkGLATriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        B, T, H, K, V, N = _shapes(q, v)
        DT, PREC = dot_dtype(q.dtype), dot_precision(q.dtype)
        gc = _local_cumsum(g, T, N)
        h, final = _states(k, v, gc, initial_state, output_final_state)
        o = torch.empty_like(v)
        BK, BV = pow2_block(K, hi=32), pow2_block(V, hi=128)
        _output_kernel[(B * H, N, triton.cdiv(V, BV))](
            q, k, v, gc, h, o, scale, T, N * BT, N, H, K, V, BT, BK, BV, SUB, DT, PREC, num_warps=8, num_stages=2,
        )
        ctx.save_for_backward(q, k, v, gc, initial_state)
        ctx.scale, ctx.g_dtype = scale, g.dtype
        return o, final

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h0 = ctx.saved_tensors
        scale = ctx.scale
        B, T, H, K, V, N = _shapes(q, v)
        DT, PREC = dot_dtype(q.dtype), dot_precision(q.dtype)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        h, _ = _states(k, v, gc, h0, False)

        dh = torch.empty_like(h)
        dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        BK, BV, warps = _state_tiles(B * H, K, V)
        _state_bwd_kernel[(B * H, triton.cdiv(V, BV), triton.cdiv(K, BK))](
            q, do, gc, dh, dht, dh0, scale, T, N * BT, N, H, K, V, BT, BK, BV,
            dht is not None, h0 is not None, DT, PREC, num_warps=warps,
        )

        dv = torch.empty_like(v)
        BK, BV = pow2_block(K, hi=32), pow2_block(V, hi=128)
        _dv_kernel[(B * H, N, triton.cdiv(V, BV))](
            q, k, gc, do, dh, dv, scale, T, N * BT, N, H, K, V, BT, BK, BV, SUB, DT, PREC, num_warps=8, num_stages=2,
        )

        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dg = torch.empty(q.shape, dtype=ctx.g_dtype, device=q.device)
        BK, BV = pow2_block(K, hi=32), pow2_block(V, hi=64)
        _dqkg_kernel[(B * H, N, triton.cdiv(K, BK))](
            q, k, v, gc, do, h, dh, dq, dk, dg, scale, T, N * BT, N, H, K, V, BT, BK, BV, SUB, DT, PREC,
            num_warps=8, num_stages=2,
        )
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq, dk, dv, dg, None, dh0, None


def chunk_gla_triton(q, k, v, g, scale: float, initial_state=None, output_final_state: bool = False):
    """Chunked GLA on Triton. q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, contiguous; returns ``(o, final_state)``."""
    check_triton_dtypes("chunk_gla", q, k, v, g, initial_state)
    return ChunkGLATriton.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state))
