"""Chunkwise gated linear attention in plain PyTorch: the CPU path, and the reference the Triton kernels match.

Per head, with ``alpha_t = exp(g_t)`` (``g_t <= 0``, one gate per key dimension):
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,    o_t = (scale * q_t) S_t.
The sequence is cut into chunks of ``CHUNK`` tokens; inside a chunk ``G`` is the cumulative log-gate. Scores inside
a chunk are built from 8-token sub-blocks: off-diagonal sub-blocks use the last log-gate of the key sub-block as a
reference so every exponent is <= 0; the diagonal sub-blocks are computed offset by offset (8 vectorized steps
over the whole sequence), again with exponents <= 0. Chunks are linked through an fp32 state ``[K, V]``.
Backward recomputes the chunk states instead of storing them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHUNK = 64
SUB = 8


def _to_chunks(x: torch.Tensor, dtype: torch.dtype, chunk: int) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, N, C, D] in ``dtype``, zero-padded to a whole number of chunks."""
    B, T, H, D = x.shape
    n = math.ceil(T / chunk)
    x = x.to(dtype).transpose(1, 2)
    if n * chunk != T:
        x = F.pad(x, (0, 0, 0, n * chunk - T))
    # contiguous: an expanded gradient (stride 0, e.g. from ``o.sum()``) sends bmm down a very slow path
    return x.reshape(B, H, n, chunk, D).contiguous()


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, H, N, C, D] -> [B, T, H, D]."""
    B, H, N, C, D = x.shape
    return x.reshape(B, H, N * C, D)[:, :, :T].transpose(1, 2)


class _SubBlocks:
    """Gated products inside chunks: ``sum_k a[t,k] b[j,k] exp(G[t,k] - G[j,k])`` for j <= t, and their transposes."""

    def __init__(self, G: torch.Tensor):
        *lead, C, K = G.shape
        self.C, self.nb = C, C // SUB
        self.G = G
        Gb = G.reshape(*lead, self.nb, SUB, K)
        ref = Gb[..., -1, :]  # [.., nb, K]: log-gate at the end of each sub-block
        self.key_scale = torch.exp(ref.unsqueeze(-2) - Gb)  # [.., nb(J), c, K], exponent <= 0
        # query_scale[I, J] = exp(G_I - ref_J) for I > J, factored through ref_{I-1} (both exponents <= 0): the
        # exps run on [nb, c, K] and [nb, nb, K] tensors instead of the [nb, nb, c, K] product
        prev_ref = torch.cat((torch.zeros_like(ref[..., :1, :]), ref[..., :-1, :]), -2)  # [.., nb(I), K]
        later = torch.ones(self.nb, self.nb, dtype=torch.bool, device=G.device).tril(-1)  # I > J
        between = (prev_ref.unsqueeze(-2) - ref.unsqueeze(-3)).masked_fill(~later[:, :, None], float("-inf"))
        within = torch.exp(Gb - prev_ref.unsqueeze(-2))  # [.., nb(I), c, K]
        self.query_scale = within.unsqueeze(-3) * torch.exp(between).unsqueeze(-2)  # [.., nb, nb, c, K], 0 if J >= I
        pos = torch.arange(C, device=G.device) % SUB
        self.same_block = [(pos[d:] >= d).to(G.dtype) for d in range(SUB)]  # row t keeps offset d if t-d in its block

    def _blocks(self, x):  # [.., C, D] -> [.., nb, c, D]
        return x.reshape(*x.shape[:-2], self.nb, SUB, x.shape[-1])

    def _diag_decay(self, d):
        """exp(G[t] - G[t-d]) for rows t >= d (exponent <= 0); pairs across sub-blocks are masked by the caller."""
        return torch.exp(self.G[..., d:, :] - self.G[..., : self.C - d, :])

    def scores(self, q, k):
        """A[t, j] = sum_k q[t,k] k[j,k] exp(G[t,k]-G[j,k]) for j <= t (0 above the diagonal). -> [.., C, C]"""
        qg = self._blocks(q).unsqueeze(-3) * self.query_scale  # [.., nb, nb, c, K]
        kg = self._blocks(k) * self.key_scale  # [.., nb, c, K]
        A = torch.einsum("...ijck,...jdk->...icjd", qg, kg).reshape(*q.shape[:-2], self.C, self.C)
        for d in range(SUB):
            terms = q[..., d:, :] * k[..., : self.C - d, :] * self._diag_decay(d)
            torch.diagonal(A, -d, -2, -1).add_(terms.sum(-1) * self.same_block[d])
        return A

    def scores_and_grads(self, q, k, dA):
        """``scores(q, k)`` and, for an upstream gradient dA, its gradients w.r.t. q and k (shared work)."""
        C, lead = self.C, q.shape[:-2]
        qg = self._blocks(q).unsqueeze(-3) * self.query_scale
        kg = self._blocks(k) * self.key_scale
        A = torch.einsum("...ijck,...jdk->...icjd", qg, kg).reshape(*lead, C, C)
        dAb = dA.reshape(*lead, self.nb, SUB, self.nb, SUB).transpose(-3, -2)  # [.., nb, nb, c, c]
        dq = (torch.einsum("...ijcd,...jdk->...ijck", dAb, kg) * self.query_scale).sum(-3).reshape(q.shape)
        dk = (torch.einsum("...ijcd,...ijck->...jdk", dAb, qg) * self.key_scale).reshape(k.shape)
        for d in range(SUB):
            decay = self._diag_decay(d)
            kd, qd = k[..., : C - d, :] * decay, q[..., d:, :] * decay
            torch.diagonal(A, -d, -2, -1).add_((q[..., d:, :] * kd).sum(-1) * self.same_block[d])
            w = (torch.diagonal(dA, -d, -2, -1) * self.same_block[d]).unsqueeze(-1)
            dq[..., d:, :] += w * kd
            dk[..., : C - d, :] += w * qd
        return A, dq, dk


def _chunk_states(kdec, v, decay, h0):
    """Run the state across chunks. Returns the state entering each chunk [B, H, N, K, V] and the final state."""
    U = kdec.transpose(-1, -2) @ v  # [B, H, N, K, V]
    B, H, N, K, V = U.shape
    S = torch.zeros(B, H, K, V, dtype=U.dtype, device=U.device) if h0 is None else h0.to(U.dtype)
    states = torch.empty_like(U)
    for n in range(N):
        states[:, :, n] = S
        S = decay[:, :, n, :, None] * S + U[:, :, n]
    return states, S


def _prepare(q, k, v, g, scale, chunk):
    from .._dispatch import compute_dtype

    dt = compute_dtype(q, k, v, g)
    qc = _to_chunks(q, dt, chunk) * scale
    kc, vc = _to_chunks(k, dt, chunk), _to_chunks(v, dt, chunk)
    G = _to_chunks(g, dt, chunk).cumsum(-2)
    Glast = G[..., -1, :]
    kdec = kc * torch.exp(Glast.unsqueeze(-2) - G)
    return qc, kc, vc, G, Glast, kdec


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, chunk):
        T = q.shape[1]
        qc, kc, vc, G, Glast, kdec = _prepare(q, k, v, g, scale, chunk)
        blocks = _SubBlocks(G)
        A = blocks.scores(qc, kc)
        states, final = _chunk_states(kdec, vc, torch.exp(Glast), initial_state)
        o = A @ vc + (qc * torch.exp(G)) @ states
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale, ctx.chunk = scale, chunk
        o = _from_chunks(o, T).to(q.dtype)
        final = final.float() if final.dtype != torch.float64 else final
        if output_final_state:
            return o, final
        ctx.mark_non_differentiable(final)
        return o, final

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        T = q.shape[1]
        qc, kc, vc, G, Glast, kdec = _prepare(q, k, v, g, scale, chunk)
        dt = qc.dtype
        doc = _to_chunks(do, dt, chunk)
        decay = torch.exp(Glast)
        states, final = _chunk_states(kdec, vc, decay, h0)
        qexp = qc * torch.exp(G)
        # gradient of the loss w.r.t. the state leaving each chunk, run backwards through the chunks
        W = qexp.transpose(-1, -2) @ doc  # [B, H, N, K, V]
        B, H, N, K, V = W.shape
        dS = torch.zeros(B, H, K, V, dtype=dt, device=q.device) if dht is None else dht.to(dt)
        dstates = torch.empty_like(W)
        for n in range(N - 1, -1, -1):
            dstates[:, :, n] = dS
            dS = decay[:, :, n, :, None] * dS + W[:, :, n]
        dh0 = dS

        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
        dA = (doc @ vc.transpose(-1, -2)) * causal
        A, dq, dk = _SubBlocks(G).scores_and_grads(qc, kc, dA)
        dq = dq + torch.exp(G) * (doc @ states.transpose(-1, -2))
        dk = dk + torch.exp(Glast.unsqueeze(-2) - G) * (vc @ dstates.transpose(-1, -2))
        dv = A.transpose(-1, -2) @ doc + kdec @ dstates

        dG = _from_chunks(qc * dq - kc * dk, T)  # [B, T, H, K]
        dg = dG.flip(1).cumsum(1).flip(1)
        if dht is not None:
            dg = dg + (dht.to(dt) * final).sum(-1).unsqueeze(1)
        dq = _from_chunks(dq, T) * scale
        dk, dv = _from_chunks(dk, T), _from_chunks(dv, T)
        dh0 = dh0.to(h0.dtype) if h0 is not None else None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.to(g.dtype), None, dh0, None, None


def chunk_gla_torch(q, k, v, g, scale, initial_state=None, output_final_state=False, chunk=CHUNK):
    o, final = ChunkGLAFunction.apply(q, k, v, g, scale, initial_state, output_final_state, chunk)
    return o, (final if output_final_state else None)


def recurrent_gla_step_torch(q, k, v, g, scale, initial_state=None, output_final_state=False):
    """One token (T == 1), the decode step: plain tensor ops, differentiable by autograd."""
    from .._dispatch import compute_dtype

    dt = compute_dtype(q, k, v, g)
    B, _, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=dt, device=q.device) if initial_state is None else initial_state.to(dt)
    q0, k0, v0, g0 = (x[:, 0].to(dt) for x in (q, k, v, g))
    S = torch.exp(g0).unsqueeze(-1) * S + k0.unsqueeze(-1) * v0.unsqueeze(-2)
    o = ((q0 * scale).unsqueeze(-2) @ S).squeeze(-2).unsqueeze(1).to(q.dtype)
    final = S if dt == torch.float64 else S.float()
    return o, (final if output_final_state else None)
