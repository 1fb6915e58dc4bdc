"""Token-by-token gated linear attention in Triton (the decode path), with an explicit backward.

One program per (V tile, batch*head) holds the fp32 state ``S [K, V tile]`` (all of K, so ``o_t = q_t S_t`` is
complete in one program) and walks the sequence: ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``.

Backward, in the same program layout: a forward sweep recomputes ``S_t`` for ``dq_t = scale S_t do_t``, then a
reverse sweep carries ``dS`` for ``dk_t = dS_t v_t``, ``dv_t = k_t dS_t``, and ``dS_{t-1} = exp(g_t) dS_t``. dq and dk
are partial sums over V tiles (summed on the host). ``dg_t = sum_{s>=t} (q dq - k dk)_s + sum_v(S_T * dht)``,
a reverse cumsum on the host. Nothing is stored by the forward beyond the inputs.

A gate per head (``g`` [B, T, H], fla's simple GLA; SCALAR_GATE) runs the same kernels, every key dimension
reading its head's gate (``S_t = exp(g_t) S_{t-1} + ...``); its ``dg`` is the per-key one summed over K.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import check_triton_dtypes, patch_interpreter, pow2_block


@triton.jit
def _gate(g, p_k, km, SCALAR_GATE: tl.constexpr, K: tl.constexpr):
    """This token's log gate per key dimension ``[BK]``: ``g`` [B, T, H, K] at the offsets ``p_k`` of its keys, or,
    SCALAR_GATE, ``g`` [B, T, H] at its head's (every key dimension reads ``p_k // K``)."""
    return tl.load(g + (p_k // K if SCALAR_GATE else p_k), mask=km, other=0.0).to(tl.float32)


@triton.jit
def _recurrent_fwd_kernel(
    q,
    k,
    v,
    g,
    o,
    h0,
    ht,
    scale,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    SCALAR_GATE: tl.constexpr,
):
    i_bh, i_v = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    km, vm = ck < K, cv < V
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = km[:, None] & vm[None, :]
    p_k = (i_b.to(tl.int64) * T * H + i_h) * K + ck
    p_v = (i_b.to(tl.int64) * T * H + i_h) * V + cv

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    for t in range(T):
        b_q = tl.load(q + p_k, mask=km, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=km, other=0.0).to(tl.float32)
        b_g = _gate(g, p_k, km, SCALAR_GATE, K)
        b_v = tl.load(v + p_v, mask=vm, other=0.0).to(tl.float32)
        S = S * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
        b_o = tl.sum(S * b_q[:, None], axis=0) * scale
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=vm)
        p_k += H * K
        p_v += H * V
    if STORE_FINAL:
        tl.store(ht + i_bh.to(tl.int64) * K * V + kv, S, mask=kv_mask)


@triton.jit
def _recurrent_bwd_kernel(
    q,
    k,
    v,
    g,
    do,
    h0,
    dht,
    dq,
    dk,
    dv,
    dh0,
    dg_final,
    scale,
    T,
    B,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_DHT: tl.constexpr,
    SCALAR_GATE: tl.constexpr,
):
    i_bh, i_v = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    km, vm = ck < K, cv < V
    kv = ck[:, None] * V + cv[None, :]
    kv_mask = km[:, None] & vm[None, :]
    tok = i_b.to(tl.int64) * T * H + i_h
    part = i_v.to(tl.int64) * B * T * H * K  # this V tile's slice of the dq / dk partial sums

    # forward sweep: dq_t = scale * S_t do_t
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
    p_k = tok * K + ck
    p_v = tok * V + cv
    for t in range(T):
        b_k = tl.load(k + p_k, mask=km, other=0.0).to(tl.float32)
        b_g = _gate(g, p_k, km, SCALAR_GATE, K)
        b_v = tl.load(v + p_v, mask=vm, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=vm, other=0.0).to(tl.float32)
        S = S * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
        tl.store(dq + part + p_k, tl.sum(S * b_do[None, :], axis=1) * scale, mask=km)
        p_k += H * K
        p_v += H * V

    # reverse sweep
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dht = tl.load(dht + i_bh.to(tl.int64) * K * V + kv, mask=kv_mask, other=0.0).to(tl.float32)
        dS += b_dht
        # S is the final state here: its share of the gate gradient (summed over V tiles on the host)
        tl.store(dg_final + (i_v.to(tl.int64) * B * H + i_bh) * K + ck, tl.sum(S * b_dht, axis=1), mask=km)
    for i in range(T):
        t = T - 1 - i
        p_k = (tok + t * H) * K + ck
        p_v = (tok + t * H) * V + cv
        b_q = tl.load(q + p_k, mask=km, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=km, other=0.0).to(tl.float32)
        b_g = _gate(g, p_k, km, SCALAR_GATE, K)
        b_v = tl.load(v + p_v, mask=vm, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=vm, other=0.0).to(tl.float32)
        dS += (b_q * scale)[:, None] * b_do[None, :]
        tl.store(dk + part + p_k, tl.sum(dS * b_v[None, :], axis=1), mask=km)
        tl.store(dv + p_v, tl.sum(dS * b_k[:, None], axis=0).to(dv.dtype.element_ty), mask=vm)
        dS = dS * tl.exp(b_g)[:, None]
    if HAS_H0:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + kv, dS, mask=kv_mask)


def _tiles(K, V):
    BK = pow2_block(K)
    # V tiles of at most 32 and 4K state values per program: the backward holds S and dS in registers unspilled
    return BK, pow2_block(V, hi=max(16, min(32, 4096 // BK)))


class FusedRecurrentGLATriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        patch_interpreter()
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV = _tiles(K, V)
        o = torch.empty_like(v)
        final = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
        _recurrent_fwd_kernel[(B * H, triton.cdiv(V, BV))](
            q,
            k,
            v,
            g,
            o,
            initial_state,
            final,
            scale,
            T,
            H,
            K,
            V,
            BK,
            BV,
            initial_state is not None,
            output_final_state,
            g.dim() == 3,
            num_warps=4,
        )
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale = scale
        return o, final

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV = _tiles(K, V)
        NV = triton.cdiv(V, BV)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dq = torch.empty(NV, B, T, H, K, dtype=torch.float32, device=q.device)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        dg_final = torch.empty(NV, B, H, K, dtype=torch.float32, device=q.device) if dht is not None else None
        _recurrent_bwd_kernel[(B * H, NV)](
            q,
            k,
            v,
            g,
            do,
            h0,
            dht,
            dq,
            dk,
            dv,
            dh0,
            dg_final,
            ctx.scale,
            T,
            B,
            H,
            K,
            V,
            BK,
            BV,
            h0 is not None,
            dht is not None,
            g.dim() == 3,
            num_warps=4,
        )
        dq, dk = dq.sum(0), dk.sum(0)
        dg = q.float() * dq - k.float() * dk
        dg_final = dg_final.sum(0) if dg_final is not None else None
        if g.dim() == 3:  # one gate per head: the per-key gradient summed over K
            dg = dg.sum(-1)
            dg_final = dg_final.sum(-1) if dg_final is not None else None
        dg = dg.flip(1).cumsum(1).flip(1)
        if dg_final is not None:
            dg += dg_final.unsqueeze(1)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype), None, dh0, None


def fused_recurrent_gla_triton(q, k, v, g, scale: float, initial_state=None, output_final_state: bool = False):
    """Recurrent GLA on Triton, any T (T = 1 for decoding). Same arguments and results as ``chunk_gla_triton``; ``g``
    ``[B, T, H, K]`` (a gate per key) or ``[B, T, H]`` (one per head)."""
    check_triton_dtypes("fused_recurrent_gla", q, k, v, g, initial_state)
    return FusedRecurrentGLATriton.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state))
