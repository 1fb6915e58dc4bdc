"""Chunkwise gated linear attention in Triton: forward and explicit backward.

Same math as ``chunk_torch.py`` (see its docstring), on chunks of ``BT = 64`` tokens; arithmetic in fp32, tl.dot
operands in the input dtype (fp32 accumulation). Every kernel reads the raw gate ``g`` and builds the chunk's
cumulative log2-gate ``c`` itself, on the tensor cores (``_cumsum``: a 0/1 triangle times the gate tile): nothing
gate-shaped is stored. Kernels:

forward
  1. ``_state_fwd_kernel``   the state entering each chunk and the one leaving the last, ``h [B, H, N+1, K, V]`` in
                             the dot dtype (the final state also in fp32); one program per (batch*head, V tile,
                             K tile) walks the chunks in order.
  2. ``_output_kernel``      per (batch*head, chunk), K tile by K tile: ``o = scale * ((q*2^c) h_n + A v)`` with
                             ``A`` the gated scores inside the chunk (stored, ``[B, T, H, 64]``, for the backward).
                             Only chunks where one reference row is safe (below); it flags the others.
  3. ``_output_slow_kernel`` the flagged chunks (per-block references); the others exit at once.
backward (keeps ``q, k, v, g, A``, the flags, ``initial_state``; ``h`` is recomputed with kernel 1)
  4. ``_state_bwd_kernel``   ``dh [B, H, N, K, V]``: gradient w.r.t. the state leaving each chunk, chunks in
                             reverse; also the gradient of the initial state.
  5. ``_bwd_kernel``         per (batch*head, chunk): ``dv = A^T do + sum_K kdec dh_n`` and dg's carry for every
                             chunk; for unflagged chunks ``dA = do v^T`` once, then ``dq, dk, dg`` K tile by K tile
                             (v and do are read once per chunk).
  6. ``_bwd_slow_kernel``    ``dq, dk, dg`` of the flagged chunks.
One program holds a chunk's whole value row (V <= ``MAX_V``); wider values run in slices (the recurrence is
independent across value columns; autograd sums the slices' gradients of q, k, g).

Scores inside a chunk, ``A[i,j] = sum_k q_ik k_jk 2^(c_ik - c_jk)`` (j <= i), factor into one tensor-core dot
``(q 2^(c - c_ref)) (k 2^(c_ref - c))^T``. With ``c_ref`` the chunk's first row, the q side is <= 1 and the k side
<= 2^span, span = the largest decay over the chunk (log2, per K tile): when span <= ``LIMIT`` (64 for bf16/fp32, 8
for fp16's narrow range; the GLA layer's gates, logsigmoid/16, stay far below) in every K tile, one dot per K tile
does the chunk. Otherwise each 16-row block takes its own first row as the reference: blocks before it factor with
exponents <= 0 (always safe), the block itself joins the dot when its own decay is <= ``LIMIT``, else its 16 x 16
pairs are summed one by one in fp32 with the exponent masked before exp2.

``dg`` needs no sequence-long cumsum: for t in chunk n, ``dg_t = sum_{s>=t in the chunk} (q dq - k dk)_s +
sum_v(S_end * dh_n)`` where ``S_end = h_{n+1}`` is the state leaving the chunk (the carry, computed with ``dv``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import check_triton_dtypes, dot_dtype, dot_precision, patch_interpreter, pow2_block

BT = 64  # chunk length
SUB = 16  # block length of the fallback inside a chunk
MAX_V = 128  # value columns per program
# largest in-chunk decay (log2) for which one reference row is safe: 2^LIMIT must stay inside the dot dtype's range
SPAN_LIMIT = {torch.bfloat16: 64.0, torch.float32: 64.0, torch.float16: 8.0}


@triton.jit
def _tile(ptr, rows, cols, stride, nrows, ncols):
    """Load ``ptr[rows, cols]`` (row stride ``stride``), zero outside ``rows < nrows`` and ``cols < ncols``."""
    mask = (rows[:, None] < nrows) & (cols[None, :] < ncols)
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _cumsum(x, BT: tl.constexpr, INCLUSIVE: tl.constexpr, GSPLIT: tl.constexpr):
    """Cumulative sum over the rows of ``x [BT, BK]`` (inclusive, or the sum of the later rows), in log2 units, on
    the tensor cores: a 0/1 triangle times ``x``. bf16/fp16 ``x`` (GSPLIT=1) multiply exactly; fp32 ``x`` is split
    into bf16 parts, one dot each, accumulated in fp32 (small parts first): GSPLIT=3 is exact (8 + 8 + 8 significant
    bits), GSPLIT=2 keeps 16 bits (plenty when the outputs are bf16/fp16)."""
    r = tl.arange(0, BT)
    tri = (r[:, None] >= r[None, :]) if INCLUSIVE else (r[:, None] < r[None, :])
    if GSPLIT == 1:
        acc = tl.dot(tri.to(x.dtype), x)
    else:
        tri = tri.to(tl.bfloat16)
        hi = x.to(tl.bfloat16)
        rest = x - hi.to(tl.float32)
        acc = tl.dot(tri, rest.to(tl.bfloat16))
        if GSPLIT == 3:
            mid = rest.to(tl.bfloat16)
            acc = tl.dot(tri, (rest - mid.to(tl.float32)).to(tl.bfloat16), acc)
        acc = tl.dot(tri, hi, acc)
    return acc * 1.4426950408889634


@triton.jit
def _cum_gate(g_ptr, t0, rows, ck, stride, T, K, BT: tl.constexpr, GSPLIT: tl.constexpr):
    """The chunk's cumulative log2-gate ``c`` [BT, BK] (rows past T add nothing), its first row ``c0`` and its total
    ``cl`` (the last row)."""
    b_g = _tile(g_ptr, rows, ck, stride, T, K)
    c0 = tl.load(g_ptr + t0 * stride + ck, mask=ck < K, other=0.0).to(tl.float32) * 1.4426950408889634
    return _cumsum(b_g, BT, True, GSPLIT), c0, tl.sum(b_g.to(tl.float32), axis=0) * 1.4426950408889634


@triton.jit
def _state_fwd_kernel(
    k,
    v,
    g,
    h,
    h0,
    ht,
    T,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    GSPLIT: tl.constexpr,
):
    i_bh, i_v, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = (ck[:, None] < K) & (cv[None, :] < V)
    k_ptr = k + (i_b.to(tl.int64) * T * H + i_h) * K
    v_ptr = v + (i_b.to(tl.int64) * T * H + i_h) * V
    g_ptr = g + (i_b.to(tl.int64) * T * H + i_h) * K
    h_ptr = h + i_bh.to(tl.int64) * (N + 1) * K * V

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    for i_n in range(N):
        tl.store(h_ptr + i_n * K * V + kv, S.to(h.dtype.element_ty), mask=kv_mask)
        rows = i_n * BT + tl.arange(0, BT)
        b_k = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_v = _tile(v_ptr, rows, cv, H * V, T, V).to(DT)
        b_g = _tile(g_ptr, rows, ck, H * K, T, K)
        b_kd = (b_k * tl.exp2(_cumsum(b_g, BT, False, GSPLIT))).to(DT)  # decay to the end of the chunk
        cl = tl.sum(b_g.to(tl.float32), axis=0) * 1.4426950408889634
        S = S * tl.exp2(cl)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    tl.store(h_ptr + N * K * V + kv, S.to(h.dtype.element_ty), mask=kv_mask)  # the state leaving the last chunk
    if STORE_FINAL:
        tl.store(ht + i_bh.to(tl.int64) * K * V + kv, S, mask=kv_mask)


# -- scores inside a chunk, when one reference row is not safe ---------------------------------------------------
@triton.jit
def _block_refs(c, c0, BT: tl.constexpr, SUB: tl.constexpr):
    """Each row's reference: ``c`` at the first row of its SUB-row block (the block's largest, as g <= 0)."""
    blk = tl.arange(0, BT) // SUB
    ref = tl.zeros_like(c) + c0[None, :]
    for I in range(1, BT // SUB):
        ref_I = tl.max(tl.where((blk == I)[:, None], c, float("-inf")), axis=0)
        ref = tl.where((blk == I)[:, None], ref_I[None, :], ref)
    return ref


@triton.jit
def _spread_rows(x, I, BT: tl.constexpr, SUB: tl.constexpr):
    """``x [SUB, D]`` as rows ``I*SUB ..`` of a zero ``[BT, D]`` tile."""
    D: tl.constexpr = x.shape[1]
    big = tl.reshape(tl.broadcast_to(x[None, :, :], [BT // SUB, SUB, D]), [BT, D])
    return tl.where(((tl.arange(0, BT) // SUB) == I)[:, None], big, 0.0)


@triton.jit
def _diag_rows(q_ptr, g_ptr, t, ck, T, stride, K, SUB: tl.constexpr):
    """Rows ``t .. t+SUB`` of one diagonal block: q and the cumulative log2-gate from the block's start (small
    numbers: the pairs' exponents keep their precision however far the chunk has decayed)."""
    rows = t + tl.arange(0, SUB)
    b_q = _tile(q_ptr, rows, ck, stride, T, K).to(tl.float32)
    return b_q, tl.cumsum(_tile(g_ptr, rows, ck, stride, T, K).to(tl.float32) * 1.4426950408889634, axis=0)


@triton.jit
def _diag_key(k_ptr, g_ptr, t, ck, T, stride, K):
    """Key row ``t`` and its gate (log2)."""
    m = (ck < K) & (t < T)
    k_j = tl.load(k_ptr + t * stride + ck, mask=m, other=0.0).to(tl.float32)
    return k_j, tl.load(g_ptr + t * stride + ck, mask=m, other=0.0).to(tl.float32) * 1.4426950408889634


@triton.jit
def _diag_scores(q_ptr, k_ptr, g_ptr, t, ck, T, stride, K, SUB: tl.constexpr):
    """Scores of the diagonal block at rows ``t ..``, pair by pair in fp32 (any gate): ``[SUB, SUB]``, j <= i."""
    i = tl.arange(0, SUB)
    b_q, c = _diag_rows(q_ptr, g_ptr, t, ck, T, stride, K, SUB)
    a = tl.zeros([SUB, SUB], dtype=tl.float32)
    c_j = tl.zeros(ck.shape, dtype=tl.float32)
    for j in range(SUB):
        k_j, g_j = _diag_key(k_ptr, g_ptr, t + j, ck, T, stride, K)
        c_j += g_j
        w = tl.exp2(tl.where((i >= j)[:, None], c - c_j[None, :], float("-inf")))
        a = tl.where((i == j)[None, :], tl.sum(b_q * k_j[None, :] * w, axis=1)[:, None], a)
    return a


@triton.jit
def _scores_blocked(
    q_ptr,
    k_ptr,
    g_ptr,
    c,
    c0,
    t0,
    rows,
    ck,
    T,
    stride,
    K,
    BT: tl.constexpr,
    SUB: tl.constexpr,
    LIMIT: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """This K tile's share of the scores with per-block references (see the module docstring)."""
    b_q = _tile(q_ptr, rows, ck, stride, T, K).to(tl.float32)
    b_k = _tile(k_ptr, rows, ck, stride, T, K).to(tl.float32)
    blk = tl.arange(0, BT) // SUB
    ref = _block_refs(c, c0, BT, SUB)
    q_rel = b_q * tl.exp2(c - ref)
    diag_ok = tl.max(tl.max(ref - c, axis=1), axis=0) <= LIMIT
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for I in range(BT // SUB):
        ref_I = tl.max(tl.where((blk == I)[:, None], c, float("-inf")), axis=0)
        keys = tl.where(diag_ok, blk <= I, blk < I)
        k_rel = b_k * tl.exp2(tl.where(keys[:, None], ref_I[None, :] - c, float("-inf")))
        q_I = tl.where((blk == I)[:, None], q_rel, 0.0)
        A += tl.dot(q_I.to(DT), tl.trans(k_rel.to(DT)), input_precision=PREC)
    if not diag_ok:
        nb: tl.constexpr = BT // SUB
        for I in range(BT // SUB):
            a = _diag_scores(q_ptr, k_ptr, g_ptr, t0 + I * SUB, ck, T, stride, K, SUB)
            big = tl.reshape(tl.broadcast_to(a[None, :, None, :], [nb, SUB, nb, SUB]), [BT, BT])
            A += tl.where(((blk == I)[:, None]) & ((blk == I)[None, :]), big, 0.0)
    return A


@triton.jit
def _output_kernel(
    q,
    k,
    v,
    g,
    h,
    o,
    A,
    flags,
    scale,
    T,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    LIMIT: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    GSPLIT: tl.constexpr,
):
    """Chunks whose K tiles all take one reference row; flags the others (1) for ``_output_slow_kernel``."""
    i_bh, i_n = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_n * BT
    r = tl.arange(0, BT)
    rows = t0 + r
    cv = tl.arange(0, BV)
    tok = i_b.to(tl.int64) * T * H + i_h
    q_ptr, k_ptr, g_ptr = q + tok * K, k + tok * K, g + tok * K
    h_ptr = h + (i_bh.to(tl.int64) * (N + 1) + i_n) * K * V

    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    slow = 0
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        c, c0, cl = _cum_gate(g_ptr, t0, rows, ck, H * K, T, K, BT, GSPLIT)
        if tl.max(c0 - cl, axis=0) <= LIMIT:
            q_rel = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32) * tl.exp2(c - c0[None, :])  # <= |q|
            k_rel = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32) * tl.exp2(c0[None, :] - c)  # <= 2^LIMIT |k|
            b_A += tl.dot(q_rel.to(DT), tl.trans(k_rel.to(DT)), input_precision=PREC)
            acc += tl.dot(
                (q_rel * tl.exp2(c0)[None, :]).to(DT), _tile(h_ptr, ck, cv, V, K, V).to(DT), input_precision=PREC
            )
        else:
            slow = 1
    tl.store(flags + i_bh * N + i_n, slow)
    fast = slow == 0
    if fast:
        a_st = tl.where(r[:, None] >= r[None, :], b_A, 0.0).to(A.dtype.element_ty)
        tl.store(A + tok * BT + rows[:, None] * (H * BT) + r[None, :], a_st, mask=rows[:, None] < T)
        acc += tl.dot(a_st.to(DT), _tile(v + tok * V, rows, cv, H * V, T, V).to(DT), input_precision=PREC)
        out = o + tok * V + rows[:, None] * (H * V) + cv[None, :]
        tl.store(out, (acc * scale).to(o.dtype.element_ty), mask=(rows[:, None] < T) & (cv[None, :] < V))


@triton.jit
def _output_slow_kernel(
    q,
    k,
    v,
    g,
    h,
    o,
    A,
    flags,
    scale,
    T,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SUB: tl.constexpr,
    LIMIT: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    GSPLIT: tl.constexpr,
):
    """The chunks ``_output_kernel`` flagged, with per-block references in every K tile (any gate)."""
    i_bh, i_n = tl.program_id(0), tl.program_id(1)
    slow = tl.load(flags + i_bh * N + i_n)
    if slow != 0:
        i_b, i_h = i_bh // H, i_bh % H
        t0 = i_n * BT
        r = tl.arange(0, BT)
        rows = t0 + r
        cv = tl.arange(0, BV)
        tok = i_b.to(tl.int64) * T * H + i_h
        q_ptr, k_ptr, g_ptr = q + tok * K, k + tok * K, g + tok * K
        h_ptr = h + (i_bh.to(tl.int64) * (N + 1) + i_n) * K * V
        b_A = tl.zeros([BT, BT], dtype=tl.float32)
        acc = tl.zeros([BT, BV], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            ck = i_k * BK + tl.arange(0, BK)
            c, c0, cl = _cum_gate(g_ptr, t0, rows, ck, H * K, T, K, BT, GSPLIT)
            b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32)
            acc += tl.dot((b_q * tl.exp2(c)).to(DT), _tile(h_ptr, ck, cv, V, K, V).to(DT), input_precision=PREC)
            b_A += _scores_blocked(q_ptr, k_ptr, g_ptr, c, c0, t0, rows, ck, T, H * K, K, BT, SUB, LIMIT, DT, PREC)
        a_st = tl.where(r[:, None] >= r[None, :], b_A, 0.0).to(A.dtype.element_ty)
        tl.store(A + tok * BT + rows[:, None] * (H * BT) + r[None, :], a_st, mask=rows[:, None] < T)
        acc += tl.dot(a_st.to(DT), _tile(v + tok * V, rows, cv, H * V, T, V).to(DT), input_precision=PREC)
        out = o + tok * V + rows[:, None] * (H * V) + cv[None, :]
        tl.store(out, (acc * scale).to(o.dtype.element_ty), mask=(rows[:, None] < T) & (cv[None, :] < V))


@triton.jit
def _state_bwd_kernel(
    q,
    do,
    g,
    dh,
    dht,
    dh0,
    scale,
    T,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    GSPLIT: tl.constexpr,
):
    i_bh, i_v, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = (ck[:, None] < K) & (cv[None, :] < V)
    q_ptr = q + (i_b.to(tl.int64) * T * H + i_h) * K
    do_ptr = do + (i_b.to(tl.int64) * T * H + i_h) * V
    g_ptr = g + (i_b.to(tl.int64) * T * H + i_h) * K
    dh_ptr = dh + i_bh.to(tl.int64) * N * K * V

    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    for i in range(N):
        i_n = N - 1 - i
        tl.store(dh_ptr + i_n * K * V + kv, dS.to(dh.dtype.element_ty), mask=kv_mask)
        rows = i_n * BT + tl.arange(0, BT)
        b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32)
        b_do = _tile(do_ptr, rows, cv, H * V, T, V).to(DT)
        b_g = _tile(g_ptr, rows, ck, H * K, T, K)
        b_qg = (b_q * tl.exp2(_cumsum(b_g, BT, True, GSPLIT)) * scale).to(DT)
        cl = tl.sum(b_g.to(tl.float32), axis=0) * 1.4426950408889634
        dS = dS * tl.exp2(cl)[:, None] + tl.dot(tl.trans(b_qg), b_do, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + kv, dS, mask=kv_mask)


@triton.jit
def _diag_grads(
    q_ptr,
    k_ptr,
    g_ptr,
    do_ptr,
    v_ptr,
    t,
    ck,
    cv,
    T,
    stride_k,
    stride_v,
    K,
    V,
    scale,
    SUB: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """``dq, dk`` of the diagonal block at rows ``t ..`` pair by pair in fp32 (any gate): ``[SUB, BK]`` each."""
    i = tl.arange(0, SUB)
    rows = t + i
    b_q, c = _diag_rows(q_ptr, g_ptr, t, ck, T, stride_k, K, SUB)
    b_do = _tile(do_ptr, rows, cv, stride_v, T, V).to(DT)
    b_v = _tile(v_ptr, rows, cv, stride_v, T, V).to(DT)
    dA = tl.where(i[:, None] >= i[None, :], tl.dot(b_do, tl.trans(b_v), input_precision=PREC), 0.0) * scale
    dq = tl.zeros_like(b_q)
    dk = tl.zeros_like(b_q)
    c_j = tl.zeros(ck.shape, dtype=tl.float32)
    for j in range(SUB):
        k_j, g_j = _diag_key(k_ptr, g_ptr, t + j, ck, T, stride_k, K)
        c_j += g_j
        w = tl.sum(tl.where((i == j)[None, :], dA, 0.0), axis=1)[:, None] * tl.exp2(
            tl.where((i >= j)[:, None], c - c_j[None, :], float("-inf"))
        )  # dA[i, j] 2^(c_i - c_j)
        dq += w * k_j[None, :]
        dk = tl.where((i == j)[:, None], tl.sum(w * b_q, axis=0)[None, :], dk)
    return dq, dk


@triton.jit
def _grads_blocked(
    dA_dt,
    b_q,
    b_k,
    c,
    c0,
    q_ptr,
    k_ptr,
    g_ptr,
    do_ptr,
    v_ptr,
    t0,
    ck,
    cv,
    T,
    stride_k,
    stride_v,
    K,
    V,
    scale,
    BT: tl.constexpr,
    SUB: tl.constexpr,
    LIMIT: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """``dq, dk`` inside the chunk (this K tile) with per-block references (see ``_scores_blocked``)."""
    blk = tl.arange(0, BT) // SUB
    ref = _block_refs(c, c0, BT, SUB)
    q_fac = tl.exp2(c - ref)
    q_rel = b_q * q_fac
    diag_ok = tl.max(tl.max(ref - c, axis=1), axis=0) <= LIMIT
    dq_i = tl.zeros_like(c)
    dk_i = tl.zeros_like(c)
    for I in range(BT // SUB):
        ref_I = tl.max(tl.where((blk == I)[:, None], c, float("-inf")), axis=0)
        keys = tl.where(diag_ok, blk <= I, blk < I)
        k_fac = tl.exp2(tl.where(keys[:, None], ref_I[None, :] - c, float("-inf")))
        dq_i += tl.where((blk == I)[:, None], tl.dot(dA_dt, (b_k * k_fac).to(DT), input_precision=PREC), 0.0)
        q_I = tl.where((blk == I)[:, None], q_rel, 0.0)
        dk_i += k_fac * tl.dot(tl.trans(dA_dt), q_I.to(DT), input_precision=PREC)
    dq_i *= q_fac
    if not diag_ok:
        for I in range(BT // SUB):
            dq_I, dk_I = _diag_grads(
                q_ptr,
                k_ptr,
                g_ptr,
                do_ptr,
                v_ptr,
                t0 + I * SUB,
                ck,
                cv,
                T,
                stride_k,
                stride_v,
                K,
                V,
                scale,
                SUB,
                DT,
                PREC,
            )
            dq_i += _spread_rows(dq_I, I, BT, SUB)
            dk_i += _spread_rows(dk_I, I, BT, SUB)
    return dq_i, dk_i


@triton.jit
def _dg_store(b_q, b_k, b_dq, b_dk, carry_ptr, ck, K, dq, dk, dg, off, mask):
    """``dg`` of this K tile (the reverse cumsum inside the chunk plus the carry), and the stores."""
    b_dg = tl.cumsum(b_q * b_dq - b_k * b_dk, axis=0, reverse=True) + tl.load(carry_ptr + ck, mask=ck < K)[None, :]
    tl.store(dq + off, b_dq.to(dq.dtype.element_ty), mask=mask)
    tl.store(dk + off, b_dk.to(dk.dtype.element_ty), mask=mask)
    tl.store(dg + off, b_dg.to(dg.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    q,
    k,
    v,
    g,
    h,
    dh,
    do,
    A,
    dq,
    dk,
    dv,
    dg,
    carry,
    flags,
    scale,
    T,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    GSPLIT: tl.constexpr,
):
    """``dv`` and dg's carry of every chunk; ``dq, dk, dg`` of the chunks the forward did not flag."""
    i_bh, i_n = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_n * BT
    r = tl.arange(0, BT)
    rows = t0 + r
    cv = tl.arange(0, BV)
    tok = i_b.to(tl.int64) * T * H + i_h
    q_ptr, k_ptr, g_ptr = q + tok * K, k + tok * K, g + tok * K
    h_ptr = h + (i_bh.to(tl.int64) * (N + 1) + i_n) * K * V  # h_n; h_ptr + K * V: h_{n+1}, the state leaving
    dh_ptr = dh + (i_bh.to(tl.int64) * N + i_n) * K * V
    carry_ptr = carry + (i_bh.to(tl.int64) * N + i_n) * K

    b_do = _tile(do + tok * V, rows, cv, H * V, T, V).to(DT)
    # dv = A^T do + sum over K tiles of (k 2^(cl - c)) dh; and dg's carry sum_v(S_end * dh) with S_end = h_{n+1}
    b_A = _tile(A + tok * BT, rows, r, H * BT, T, BT).to(DT)
    b_dv = tl.dot(tl.trans(b_A), b_do, input_precision=PREC) * scale
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        b_kd = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32) * tl.exp2(
            _cumsum(_tile(g_ptr, rows, ck, H * K, T, K), BT, False, GSPLIT)
        )
        b_dh = _tile(dh_ptr, ck, cv, V, K, V)
        b_dv += tl.dot(b_kd.to(DT), b_dh.to(DT), input_precision=PREC)
        b_hn = _tile(h_ptr + K * V, ck, cv, V, K, V)
        tl.store(carry_ptr + ck, tl.sum(b_hn.to(tl.float32) * b_dh.to(tl.float32), axis=1), mask=ck < K)
    tl.store(
        dv + tok * V + rows[:, None] * (H * V) + cv[None, :],
        b_dv.to(dv.dtype.element_ty),
        mask=(rows[:, None] < T) & (cv[None, :] < V),
    )

    fast = tl.load(flags + i_bh * N + i_n) == 0
    if fast:
        b_v = _tile(v + tok * V, rows, cv, H * V, T, V).to(DT)
        dA_dt = (tl.where(r[:, None] >= r[None, :], tl.dot(b_do, tl.trans(b_v), input_precision=PREC), 0.0) * scale).to(
            DT
        )
        for i_k in range(tl.cdiv(K, BK)):
            # one reference row (the chunk's first): dq = 2^(c-c0) (dA (k 2^(c0-c)) + 2^c0 scale do h^T),
            #                                        dk = 2^(c0-c) (dA^T (q 2^(c-c0)) + 2^(cl-c0) v dh^T)
            ck = i_k * BK + tl.arange(0, BK)
            c, c0, cl = _cum_gate(g_ptr, t0, rows, ck, H * K, T, K, BT, GSPLIT)
            q_fac = tl.exp2(c - c0[None, :])  # <= 1
            k_fac = tl.exp2(c0[None, :] - c)  # <= 2^LIMIT
            b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32)
            b_k = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32)
            b_dq = tl.dot(dA_dt, (b_k * k_fac).to(DT), input_precision=PREC)
            b_dq += (
                tl.dot(b_do, tl.trans(_tile(h_ptr, ck, cv, V, K, V).to(DT)), input_precision=PREC)
                * (tl.exp2(c0) * scale)[None, :]
            )
            b_dk = tl.dot(tl.trans(dA_dt), (b_q * q_fac).to(DT), input_precision=PREC)
            b_dk += (
                tl.dot(b_v, tl.trans(_tile(dh_ptr, ck, cv, V, K, V).to(DT)), input_precision=PREC)
                * tl.exp2(cl - c0)[None, :]
            )
            _dg_store(
                b_q,
                b_k,
                b_dq * q_fac,
                b_dk * k_fac,
                carry_ptr,
                ck,
                K,
                dq,
                dk,
                dg,
                tok * K + rows[:, None] * (H * K) + ck[None, :],
                (rows[:, None] < T) & (ck[None, :] < K),
            )


@triton.jit
def _bwd_slow_kernel(
    q,
    k,
    v,
    g,
    h,
    dh,
    do,
    dq,
    dk,
    dg,
    carry,
    flags,
    scale,
    T,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SUB: tl.constexpr,
    LIMIT: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    GSPLIT: tl.constexpr,
):
    """``dq, dk, dg`` of the flagged chunks, with per-block references in every K tile (any gate)."""
    i_bh, i_n = tl.program_id(0), tl.program_id(1)
    slow = tl.load(flags + i_bh * N + i_n)
    if slow != 0:
        i_b, i_h = i_bh // H, i_bh % H
        t0 = i_n * BT
        r = tl.arange(0, BT)
        rows = t0 + r
        cv = tl.arange(0, BV)
        tok = i_b.to(tl.int64) * T * H + i_h
        q_ptr, k_ptr, g_ptr = q + tok * K, k + tok * K, g + tok * K
        v_ptr, do_ptr = v + tok * V, do + tok * V
        h_ptr = h + (i_bh.to(tl.int64) * (N + 1) + i_n) * K * V
        dh_ptr = dh + (i_bh.to(tl.int64) * N + i_n) * K * V
        carry_ptr = carry + (i_bh.to(tl.int64) * N + i_n) * K
        b_do = _tile(do_ptr, rows, cv, H * V, T, V).to(DT)
        b_v = _tile(v_ptr, rows, cv, H * V, T, V).to(DT)
        dA_dt = (tl.where(r[:, None] >= r[None, :], tl.dot(b_do, tl.trans(b_v), input_precision=PREC), 0.0) * scale).to(
            DT
        )
        for i_k in range(tl.cdiv(K, BK)):
            ck = i_k * BK + tl.arange(0, BK)
            c, c0, cl = _cum_gate(g_ptr, t0, rows, ck, H * K, T, K, BT, GSPLIT)
            b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32)
            b_k = _tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32)
            dq_i, dk_i = _grads_blocked(
                dA_dt,
                b_q,
                b_k,
                c,
                c0,
                q_ptr,
                k_ptr,
                g_ptr,
                do_ptr,
                v_ptr,
                t0,
                ck,
                cv,
                T,
                H * K,
                H * V,
                K,
                V,
                scale,
                BT,
                SUB,
                LIMIT,
                DT,
                PREC,
            )
            b_dq = dq_i + tl.dot(b_do, tl.trans(_tile(h_ptr, ck, cv, V, K, V).to(DT)), input_precision=PREC) * (
                tl.exp2(c) * scale
            )
            # the decay to the chunk's end from the later rows' gates (not cl - c: exactly 1 on the last row)
            k_dec = tl.exp2(_cumsum(_tile(g_ptr, rows, ck, H * K, T, K), BT, False, GSPLIT))
            b_dk = dk_i + tl.dot(b_v, tl.trans(_tile(dh_ptr, ck, cv, V, K, V).to(DT)), input_precision=PREC) * k_dec
            _dg_store(
                b_q,
                b_k,
                b_dq,
                b_dk,
                carry_ptr,
                ck,
                K,
                dq,
                dk,
                dg,
                tok * K + rows[:, None] * (H * K) + ck[None, :],
                (rows[:, None] < T) & (ck[None, :] < K),
            )


def _shapes(q, v):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = triton.cdiv(T, BT)
    return B, T, H, K, V, N


def _state_tiles(BH, K, V):
    """(BK, BV, num_warps) of the sequential state kernels. The whole value row (128) per program reads k and g
    once; with few (batch, head) pairs the tiles shrink so that more programs fill the GPU."""
    BK, BV = (64, 128) if BH >= 64 else (32, 64)
    BK, BV = pow2_block(K, hi=BK), pow2_block(V, hi=BV)
    return BK, BV, 8


def _gsplit(g_dtype, dtype):
    """bf16 parts an fp32 gate is split into for the tensor-core cumsum (see ``_cumsum``)."""
    return 1 if g_dtype != torch.float32 else 3 if dtype == torch.float32 else 2


def _state_dtype(dtype):
    """h and dh are stored as the dot operands they become: the input dtype, fp32 for fp32 inputs."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _states(k, v, g, initial_state, output_final_state):
    B, T, H, K, V, N = _shapes(k, v)
    BK, BV, warps = _state_tiles(B * H, K, V)
    h = torch.empty(B, H, N + 1, K, V, dtype=_state_dtype(k.dtype), device=k.device)
    final = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    grid = (B * H, triton.cdiv(V, BV), triton.cdiv(K, BK))
    _state_fwd_kernel[grid](
        k,
        v,
        g,
        h,
        initial_state,
        final,
        T,
        N,
        H,
        K,
        V,
        BT,
        BK,
        BV,
        initial_state is not None,
        output_final_state,
        dot_dtype(k.dtype),
        dot_precision(k.dtype),
        _gsplit(g.dtype, k.dtype),
        num_warps=warps,
    )
    return h, final


def _chunk_warps():
    """Warps of the per-chunk kernels. Triton gives a dot whose result feeds another dot all warps along M; a chunk
    has 64 rows, one warpgroup's worth, so on Hopper 8 warps would compute every such tile twice: 4 warps (two
    blocks per SM). Ampere's mma.sync keeps its operands in registers: 8 warps, or it spills."""
    try:
        target = triton.runtime.driver.active.get_current_target()
    except Exception:  # noqa: BLE001 - no GPU driver (the interpreter): the warp count does not matter
        return 8
    return 4 if target.backend == "cuda" and target.arch >= 90 else 8


def _chunk_tiles(K, V, backward=False):
    """(BK, BV) of the per-chunk kernels: the whole value row, K in tiles of 32 (16 in the backward kernel, which
    holds more tiles at once)."""
    return pow2_block(K, hi=16 if backward else 32), pow2_block(V)


class ChunkGLATriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        patch_interpreter()
        B, T, H, K, V, N = _shapes(q, v)
        DT, PREC, LIMIT = dot_dtype(q.dtype), dot_precision(q.dtype), SPAN_LIMIT[q.dtype]
        h, final = _states(k, v, g, initial_state, output_final_state)
        o = torch.empty_like(v)
        A = torch.empty(B, T, H, BT, dtype=_state_dtype(q.dtype), device=q.device)
        flags = torch.empty(B * H, N, dtype=torch.int32, device=q.device)  # 1: a chunk on per-block references
        BK, BV = _chunk_tiles(K, V)
        args = (q, k, v, g, h, o, A, flags, scale, T, N, H, K, V, BT, BK, BV)
        _output_kernel[(B * H, N)](
            *args, LIMIT, DT, PREC, _gsplit(g.dtype, q.dtype), num_warps=_chunk_warps(), num_stages=2
        )
        _output_slow_kernel[(B * H, N)](*args, SUB, LIMIT, DT, PREC, _gsplit(g.dtype, q.dtype), num_warps=8)
        ctx.save_for_backward(q, k, v, g, A, flags, initial_state)
        ctx.scale = scale
        return o, final

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, A, flags, h0 = ctx.saved_tensors
        scale = ctx.scale
        B, T, H, K, V, N = _shapes(q, v)
        DT, PREC, LIMIT = dot_dtype(q.dtype), dot_precision(q.dtype), SPAN_LIMIT[q.dtype]
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        h, _ = _states(k, v, g, h0, False)

        dh = torch.empty(B, H, N, K, V, dtype=h.dtype, device=q.device)
        dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        BK, BV, warps = _state_tiles(B * H, K, V)
        _state_bwd_kernel[(B * H, triton.cdiv(V, BV), triton.cdiv(K, BK))](
            q,
            do,
            g,
            dh,
            dht,
            dh0,
            scale,
            T,
            N,
            H,
            K,
            V,
            BT,
            BK,
            BV,
            dht is not None,
            h0 is not None,
            DT,
            PREC,
            _gsplit(g.dtype, q.dtype),
            num_warps=warps,
        )

        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dg = torch.empty_like(g)
        carry = torch.empty(B * H, N, K, dtype=torch.float32, device=q.device)  # dg's carry, per chunk
        BK, BV = _chunk_tiles(K, V, backward=True)
        gsplit = _gsplit(g.dtype, q.dtype)
        _bwd_kernel[(B * H, N)](
            q,
            k,
            v,
            g,
            h,
            dh,
            do,
            A,
            dq,
            dk,
            dv,
            dg,
            carry,
            flags,
            scale,
            T,
            N,
            H,
            K,
            V,
            BT,
            BK,
            BV,
            DT,
            PREC,
            gsplit,
            num_warps=_chunk_warps(),
            num_stages=2,
        )
        _bwd_slow_kernel[(B * H, N)](
            q,
            k,
            v,
            g,
            h,
            dh,
            do,
            dq,
            dk,
            dg,
            carry,
            flags,
            scale,
            T,
            N,
            H,
            K,
            V,
            BT,
            BK,
            BV,
            SUB,
            LIMIT,
            DT,
            PREC,
            gsplit,
            num_warps=8,
        )
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq, dk, dv, dg, None, dh0, None


def _over_value_slices(fn, q, k, v, g, scale, initial_state, output_final_state):
    """``fn.apply`` (a chunked autograd Function) on the whole value row, or on slices of ``MAX_V`` columns when it is
    wider (the recurrence is independent across value columns; autograd sums the slices' gradients of q, k, g)."""
    V = v.shape[-1]
    if V <= MAX_V:
        return fn.apply(q, k, v, g, scale, initial_state, output_final_state)
    parts = [
        fn.apply(
            q,
            k,
            v[..., s : s + MAX_V].contiguous(),
            g,
            scale,
            None if initial_state is None else initial_state[..., s : s + MAX_V].contiguous(),
            output_final_state,
        )
        for s in range(0, V, MAX_V)
    ]
    o = torch.cat([p[0] for p in parts], dim=-1)
    return o, (torch.cat([p[1] for p in parts], dim=-1) if output_final_state else None)


def chunk_gla_triton(q, k, v, g, scale: float, initial_state=None, output_final_state: bool = False):
    """Chunked GLA on Triton. q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, contiguous; returns ``(o, final_state)``."""
    check_triton_dtypes("chunk_gla", q, k, v, g, initial_state)
    return _over_value_slices(ChunkGLATriton, q, k, v, g, float(scale), initial_state, bool(output_final_state))
