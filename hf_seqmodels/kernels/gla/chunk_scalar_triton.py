"""Chunkwise gated linear attention in Triton with one gate per head (``g`` [B, T, H], fla's ``chunk_simple_gla``;
Mamba-2): forward and explicit backward.

Per head, ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``. Same layout, tiles and state storage as
the per-key kernels (``chunk_triton.py``, whose helpers and tile choices these reuse); a separate file because the
scalar gate needs none of their machinery (per-K-tile cumulative gates, reference rows, span flags, slow kernels):
with one decay per head, the chunk's cumulative log2-gate ``c`` is a ``[BT]`` vector and the scores inside a chunk
are ``A = (q k^T) * D``, ``D[i, j] = 2^(c_i - c_j)`` for j <= i (exponent <= 0: exact for any decay, no slow path).
The decays are applied outside the dots (to rows of their results), so the dots take q, k, v as they are.

forward
  1. ``_scalar_state_fwd_kernel``  the state entering each chunk and the one leaving the last,
     ``h [B, H, N+1, K, V]``: ``S <- 2^cl S + (k 2^(cl - c))^T v`` chunk by chunk (``cl`` the chunk's total).
  2. ``_scalar_output_kernel``  per (batch*head, chunk): ``o = scale (2^c (q h_n) + ((q k^T) * D) v)``; stores
     nothing else.
backward (keeps ``q, k, v, g, initial_state``; ``h`` is recomputed with kernel 1)
  3. ``_scalar_state_bwd_kernel``  ``dh [B, H, N, K, V]``, the gradient w.r.t. the state leaving each chunk (chunks
     in reverse: ``dS <- 2^cl dS + (scale q 2^c)^T do``), and the initial state's.
  4. ``_scalar_bwd_kernel``  per (batch*head, chunk), two passes over the K tiles (one would hold too many tiles at
     once: it spilled): first ``q k^T``, ``dv = scale ((q k^T) * D)^T do + (k 2^(cl - c)) dh_n`` and dg's carry
     ``sum(h_{n+1} * dh_n)``; then with ``dP = scale (do v^T) * D``: ``dq = dP k + scale 2^c do h_n^T``,
     ``dk = dP^T q + 2^(cl - c) v dh_n^T`` and
     ``dg_t = sum_{s >= t in the chunk} sum_K (q dq - k dk)_s + carry`` (the per-key identity of
     ``chunk_triton.py`` summed over K; the carry is what the later chunks and the final state contribute).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import check_triton_dtypes, dot_dtype, dot_precision, patch_interpreter
from .chunk_triton import (
    BT,
    _chunk_tiles,
    _chunk_warps,
    _over_value_slices,
    _shapes,
    _state_dtype,
    _state_tiles,
    _tile,
)


@triton.jit
def _gate(g_ptr, rows, T, H):
    """The chunk's gate in log2 units (rows past T: 0, no decay): the inclusive cumsum ``c`` [BT], the decay to the
    chunk's end ``sum_{s > t} g_s`` [BT] (a suffix sum: exactly 0 on the last row) and the total ``cl``."""
    b_g = tl.load(g_ptr + rows * H, mask=rows < T, other=0.0).to(tl.float32) * 1.4426950408889634
    return tl.cumsum(b_g, axis=0), tl.cumsum(b_g, axis=0, reverse=True) - b_g, tl.sum(b_g, axis=0)


@triton.jit
def _decay(c, BT: tl.constexpr):
    """``D[i, j] = 2^(c_i - c_j)`` for j <= i, 0 above the diagonal (the exponent masked before exp2)."""
    r = tl.arange(0, BT)
    return tl.exp2(tl.where(r[:, None] >= r[None, :], c[:, None] - c[None, :], float("-inf")))


@triton.jit
def _scalar_state_fwd_kernel(
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
):
    i_bh, i_v, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = (ck[:, None] < K) & (cv[None, :] < V)
    tok = i_b.to(tl.int64) * T * H + i_h
    k_ptr, v_ptr, g_ptr = k + tok * K, v + tok * V, g + tok
    h_ptr = h + i_bh.to(tl.int64) * (N + 1) * K * V

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    for i_n in range(N):
        tl.store(h_ptr + i_n * K * V + kv, S.to(h.dtype.element_ty), mask=kv_mask)
        rows = i_n * BT + tl.arange(0, BT)
        _, to_end, cl = _gate(g_ptr, rows, T, H)
        b_kd = (_tile(k_ptr, rows, ck, H * K, T, K).to(tl.float32) * tl.exp2(to_end)[:, None]).to(DT)
        b_v = _tile(v_ptr, rows, cv, H * V, T, V).to(DT)
        S = S * tl.exp2(cl) + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    tl.store(h_ptr + N * K * V + kv, S.to(h.dtype.element_ty), mask=kv_mask)  # the state leaving the last chunk
    if STORE_FINAL:
        tl.store(ht + i_bh.to(tl.int64) * K * V + kv, S, mask=kv_mask)


@triton.jit
def _scalar_output_kernel(
    q,
    k,
    v,
    g,
    h,
    o,
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
):
    i_bh, i_n = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows = i_n * BT + tl.arange(0, BT)
    cv = tl.arange(0, BV)
    tok = i_b.to(tl.int64) * T * H + i_h
    q_ptr, k_ptr = q + tok * K, k + tok * K
    h_ptr = h + (i_bh.to(tl.int64) * (N + 1) + i_n) * K * V

    b_P = tl.zeros([BT, BT], dtype=tl.float32)  # q k^T
    b_qh = tl.zeros([BT, BV], dtype=tl.float32)  # q h_n
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        b_q = _tile(q_ptr, rows, ck, H * K, T, K).to(DT)
        b_k = _tile(k_ptr, rows, ck, H * K, T, K).to(DT)
        b_P = tl.dot(b_q, tl.trans(b_k), b_P, input_precision=PREC)
        b_qh = tl.dot(b_q, _tile(h_ptr, ck, cv, V, K, V).to(DT), b_qh, input_precision=PREC)
    c, _, _ = _gate(g + tok, rows, T, H)
    b_A = (b_P * _decay(c, BT)).to(DT)
    acc = tl.dot(
        b_A, _tile(v + tok * V, rows, cv, H * V, T, V).to(DT), b_qh * tl.exp2(c)[:, None], input_precision=PREC
    )
    out = o + tok * V + rows[:, None] * (H * V) + cv[None, :]
    tl.store(out, (acc * scale).to(o.dtype.element_ty), mask=(rows[:, None] < T) & (cv[None, :] < V))


@triton.jit
def _scalar_state_bwd_kernel(
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
):
    i_bh, i_v, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = (ck[:, None] < K) & (cv[None, :] < V)
    tok = i_b.to(tl.int64) * T * H + i_h
    q_ptr, do_ptr, g_ptr = q + tok * K, do + tok * V, g + tok
    dh_ptr = dh + i_bh.to(tl.int64) * N * K * V

    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    for i in range(N):
        i_n = N - 1 - i
        tl.store(dh_ptr + i_n * K * V + kv, dS.to(dh.dtype.element_ty), mask=kv_mask)
        rows = i_n * BT + tl.arange(0, BT)
        c, _, cl = _gate(g_ptr, rows, T, H)
        b_qg = (_tile(q_ptr, rows, ck, H * K, T, K).to(tl.float32) * (tl.exp2(c) * scale)[:, None]).to(DT)
        b_do = _tile(do_ptr, rows, cv, H * V, T, V).to(DT)
        dS = dS * tl.exp2(cl) + tl.dot(tl.trans(b_qg), b_do, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + kv, dS, mask=kv_mask)


@triton.jit
def _scalar_bwd_kernel(
    q,
    k,
    v,
    g,
    h,
    dh,
    do,
    dq,
    dk,
    dv,
    dg,
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
):
    i_bh, i_n = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows = i_n * BT + tl.arange(0, BT)
    cv = tl.arange(0, BV)
    tok = i_b.to(tl.int64) * T * H + i_h
    q_ptr, k_ptr = q + tok * K, k + tok * K
    h_ptr = h + (i_bh.to(tl.int64) * (N + 1) + i_n) * K * V  # h_n; h_ptr + K * V: h_{n+1}, the state leaving
    dh_ptr = dh + (i_bh.to(tl.int64) * N + i_n) * K * V

    c, to_end, _ = _gate(g + tok, rows, T, H)
    q_fac, k_fac = tl.exp2(c) * scale, tl.exp2(to_end)
    # first K loop: q k^T, the state's share of dv, and dg's carry; then dv
    b_P = tl.zeros([BT, BT], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    carry = 0.0  # sum(h_{n+1} * dh_n): dg's share from after the chunk
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        b_k = _tile(k_ptr, rows, ck, H * K, T, K)
        b_dh = _tile(dh_ptr, ck, cv, V, K, V)
        b_P = tl.dot(_tile(q_ptr, rows, ck, H * K, T, K).to(DT), tl.trans(b_k.to(DT)), b_P, input_precision=PREC)
        b_dv = tl.dot((b_k.to(tl.float32) * k_fac[:, None]).to(DT), b_dh.to(DT), b_dv, input_precision=PREC)
        carry += tl.sum(tl.sum(_tile(h_ptr + K * V, ck, cv, V, K, V).to(tl.float32) * b_dh.to(tl.float32), axis=1))
    b_do = _tile(do + tok * V, rows, cv, H * V, T, V).to(DT)
    b_dv = tl.dot(tl.trans((b_P * _decay(c, BT) * scale).to(DT)), b_do, b_dv, input_precision=PREC)
    out = tok * V + rows[:, None] * (H * V) + cv[None, :]
    tl.store(dv + out, b_dv.to(dv.dtype.element_ty), mask=(rows[:, None] < T) & (cv[None, :] < V))

    # second K loop: dq, dk and their share of dg (two loops hold fewer tiles at once than one: no spills)
    b_v = _tile(v + tok * V, rows, cv, H * V, T, V).to(DT)
    b_dP = (tl.dot(b_do, tl.trans(b_v), input_precision=PREC) * _decay(c, BT) * scale).to(DT)  # d(q k^T)
    b_dgl = tl.zeros([BT], dtype=tl.float32)  # sum over K of (q dq - k dk), per row
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        b_q = _tile(q_ptr, rows, ck, H * K, T, K)
        b_k = _tile(k_ptr, rows, ck, H * K, T, K)
        b_dq = tl.dot(b_dP, b_k.to(DT), input_precision=PREC)
        b_dq += tl.dot(b_do, tl.trans(_tile(h_ptr, ck, cv, V, K, V).to(DT)), input_precision=PREC) * q_fac[:, None]
        b_dk = tl.dot(tl.trans(b_dP), b_q.to(DT), input_precision=PREC)
        b_dk += tl.dot(b_v, tl.trans(_tile(dh_ptr, ck, cv, V, K, V).to(DT)), input_precision=PREC) * k_fac[:, None]
        b_dgl += tl.sum(b_q.to(tl.float32) * b_dq - b_k.to(tl.float32) * b_dk, axis=1)
        off = tok * K + rows[:, None] * (H * K) + ck[None, :]
        mask = (rows[:, None] < T) & (ck[None, :] < K)
        tl.store(dq + off, b_dq.to(dq.dtype.element_ty), mask=mask)
        tl.store(dk + off, b_dk.to(dk.dtype.element_ty), mask=mask)
    b_dg = tl.cumsum(b_dgl, axis=0, reverse=True) + carry
    tl.store(dg + tok + rows * H, b_dg.to(dg.dtype.element_ty), mask=rows < T)


def _states(k, v, g, initial_state, output_final_state):
    B, T, H, K, V, N = _shapes(k, v)
    BK, BV, warps = _state_tiles(B * H, K, V)
    h = torch.empty(B, H, N + 1, K, V, dtype=_state_dtype(k.dtype), device=k.device)
    final = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    _scalar_state_fwd_kernel[(B * H, triton.cdiv(V, BV), triton.cdiv(K, BK))](
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
        num_warps=warps,
    )
    return h, final


class ChunkScalarGLATriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        patch_interpreter()
        B, T, H, K, V, N = _shapes(q, v)
        h, final = _states(k, v, g, initial_state, output_final_state)
        o = torch.empty_like(v)
        BK, BV = _chunk_tiles(K, V)
        _scalar_output_kernel[(B * H, N)](
            q,
            k,
            v,
            g,
            h,
            o,
            scale,
            T,
            N,
            H,
            K,
            V,
            BT,
            BK,
            BV,
            dot_dtype(q.dtype),
            dot_precision(q.dtype),
            num_warps=_chunk_warps(),
            num_stages=2,
        )
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale = scale
        return o, final

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        scale = ctx.scale
        B, T, H, K, V, N = _shapes(q, v)
        DT, PREC = dot_dtype(q.dtype), dot_precision(q.dtype)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        h, _ = _states(k, v, g, h0, False)
        dh = torch.empty(B, H, N, K, V, dtype=h.dtype, device=q.device)
        dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        BK, BV, warps = _state_tiles(B * H, K, V)
        _scalar_state_bwd_kernel[(B * H, triton.cdiv(V, BV), triton.cdiv(K, BK))](
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
            num_warps=warps,
        )
        dq, dk, dv, dg = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g)
        BK, BV = _chunk_tiles(K, V, backward=True)
        _scalar_bwd_kernel[(B * H, N)](
            q,
            k,
            v,
            g,
            h,
            dh,
            do,
            dq,
            dk,
            dv,
            dg,
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
            num_warps=_chunk_warps(),
            num_stages=2,
        )
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq, dk, dv, dg, None, dh0, None


def chunk_scalar_gla_triton(q, k, v, g, scale: float, initial_state=None, output_final_state: bool = False):
    """Chunked GLA on Triton with one gate per head: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]``,
    contiguous; returns ``(o, final_state)``."""
    check_triton_dtypes("chunk_gla", q, k, v, g, initial_state)
    return _over_value_slices(ChunkScalarGLATriton, q, k, v, g, float(scale), initial_state, bool(output_final_state))
