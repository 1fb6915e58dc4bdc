"""Chunkwise gated linear attention in plain PyTorch: the CPU path, and the reference the Triton kernels match.

Per head, with ``alpha_t = exp(g_t)`` (``g_t <= 0``, one gate per key dimension):
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,    o_t = (scale * q_t) S_t.
The sequence is cut into chunks of ``CHUNK`` tokens; inside a chunk ``G`` is the cumulative log-gate. Scores inside
a chunk are one matmul ``(q * exp(G - G_last)) (k * exp(G_last - G))^T`` where the chunk's total decay is at most
``FAST_SPAN`` nats in every key dimension (each factor then stays far from overflow; the product is each term's
exact value, no cancellation); a chunk that decays more is computed from 8-token sub-blocks: off-diagonal
sub-blocks use the last log-gate of the key sub-block as a reference so every exponent is <= 0; the diagonal
sub-blocks are computed offset by offset, again with exponents <= 0. Chunks are linked through an fp32 state
``[K, V]``.
Backward recomputes the chunk states instead of storing them. Packed sequences (``cu_seqlens``) use the same
function over a chunk-aligned layout in which the state restarts at each sequence's first chunk.

Scalar gate (fla's ``chunk_simple_gla``; Mamba-2): ``g`` ``[B, T, H]``, one decay per head shared by all key
dimensions, ``S_t = alpha_t S_{t-1} + k_t^T v_t``. The in-chunk decays are then one ``[C, C]`` matrix
``exp(G_i - G_j)`` (j <= i, exponent <= 0, exact for any decay rate): scores are ``(q k^T) * decay``, plain matmuls
with no sub-blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHUNK = 64
SUB = 8
#: largest total in-chunk decay (nats, per key dimension) computed by the one-matmul form: exp(40) ~ 2e17 leaves
#: fp32 ~20 orders of magnitude of headroom for q, k and the gradients; fp64 has room for far more
FAST_SPAN = {torch.float32: 40.0, torch.float64: 300.0}


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


class _BatchLayout:
    """A batch of whole sequences: row ``b`` is sequence ``b``, in chunks ``[0, N)`` (the last zero-padded).

    A layout says how tokens go into chunks (``to_chunks``/``from_chunks``) and where sequences start and end:
    ``first``/``last`` map a chunk index to the rows of the initial/final states it starts/ends (a slice)."""

    def __init__(self, B, T, chunk):
        self.num_seqs, self.T, self.chunk = B, T, chunk
        n = math.ceil(T / chunk)
        self.first, self.last = {0: slice(None)}, {n - 1: slice(None)}

    def to_chunks(self, x, dtype):
        """[B, T, H, D] -> [B, H, N, C, D] in ``dtype``."""
        return _to_chunks(x, dtype, self.chunk)

    def from_chunks(self, y):
        """[B, H, N, C, D] -> [B, T, H, D]."""
        return _from_chunks(y, self.T)


class _PackedLayout:
    """Packed sequences (batch 1) laid out chunk-aligned: sequence ``i`` takes whole chunks ``[c0_i, c0_i + n_i)``,
    zero-padded after its last token (zero q, k, v and a zero log-gate: the padding changes no state). No chunk holds
    two sequences, so the state is reset by starting each sequence's first chunk from its own initial state."""

    def __init__(self, packed, chunk, device):
        lens = packed.lengths
        n = [-(-length // chunk) for length in lens]
        c0 = [0]
        for m in n:
            c0.append(c0[-1] + m)
        self.num_seqs, self.Nc, self.chunk = packed.N, c0[-1], chunk
        self.first = {c0[i]: slice(i, i + 1) for i in range(packed.N) if n[i]}
        self.last = {c0[i] + n[i] - 1: slice(i, i + 1) for i in range(packed.N) if n[i]}
        seq = torch.repeat_interleave(torch.arange(packed.N, device=device), torch.tensor(n, device=device))
        local = (torch.arange(self.Nc, device=device) - torch.tensor(c0[:-1], device=device)[seq])[:, None] * chunk
        local = local + torch.arange(chunk, device=device)[None, :]
        valid = local < torch.tensor(lens, device=device)[seq][:, None]
        src = torch.tensor(packed.offsets[:-1], device=device)[seq][:, None] + local
        self.src = torch.where(valid, src, torch.zeros_like(src)).flatten()
        self.valid = valid.flatten()
        self.dst = torch.nonzero(self.valid).flatten()  # the padded place of every token, in token order

    def to_chunks(self, x, dtype):
        """[1, T, H, D] -> [1, H, Nc, C, D] in ``dtype``."""
        y = x[0].to(dtype).index_select(0, self.src) * self.valid[:, None, None].to(dtype)
        H, D = x.shape[2], x.shape[3]
        return y.transpose(0, 1).reshape(1, H, self.Nc, self.chunk, D).contiguous()

    def from_chunks(self, y):
        """[1, H, Nc, C, D] -> [1, T, H, D]."""
        H, D = y.shape[1], y.shape[-1]
        return y.reshape(H, self.Nc * self.chunk, D).index_select(1, self.dst).transpose(0, 1).unsqueeze(0)


def _chunk_states(kdec, v, decay, h0, lay):
    """Run the state across chunks, restarting at each sequence's first chunk from its initial state. Returns the
    state entering each chunk [B, H, N, K, V] and the final states [num_seqs, H, K, V] (an empty sequence keeps its
    initial state)."""
    U = kdec.transpose(-1, -2) @ v  # [B, H, N, K, V]
    _, H, N, K, V = U.shape
    finals = (
        torch.zeros(lay.num_seqs, H, K, V, dtype=U.dtype, device=U.device) if h0 is None else h0.to(U.dtype).clone()
    )
    states = torch.empty_like(U)
    S = None
    for n in range(N):
        if n in lay.first:
            S = finals[lay.first[n]].clone() if h0 is not None else torch.zeros_like(U[:, :, 0])
        states[:, :, n] = S
        S = decay[:, :, n, :, None] * S + U[:, :, n]
        if n in lay.last:
            finals[lay.last[n]] = S
    return states, finals


def _chunk_dstates(W, decay, dht, lay):
    """The backward of :func:`_chunk_states`: the gradient w.r.t. the state leaving each chunk [B, H, N, K, V], run
    backwards through each sequence's chunks (``W`` = the direct contribution of each chunk), and d h0."""
    _, H, N, K, V = W.shape
    # an empty sequence passes its initial state straight through: d h0 = d final for it
    dh0 = dht.clone() if dht is not None else torch.zeros(lay.num_seqs, H, K, V, dtype=W.dtype, device=W.device)
    dstates = torch.empty_like(W)
    dS = None
    for n in range(N - 1, -1, -1):
        if n in lay.last:
            dS = dht[lay.last[n]].clone() if dht is not None else torch.zeros_like(W[:, :, 0])
        dstates[:, :, n] = dS
        dS = decay[:, :, n, :, None] * dS + W[:, :, n]
        if n in lay.first:
            dh0[lay.first[n]] = dS
    return dstates, dh0


def _gate_grad(local, const, lay):
    """d g from ``local`` [B, H, N, C, ...] (the in-chunk reversed cumsum of ``q dq - k dk``): add what the later
    chunks of the same sequence contribute, plus the per-sequence constant ``const`` [num_seqs, H, ...] (from the
    final state's gradient). Returns [B, H, N, C, ...]."""
    carry = torch.empty_like(local[:, :, :, 0])  # [B, H, N, ...]: what the later chunks of the sequence add
    acc = None
    for n in range(local.shape[2] - 1, -1, -1):
        if n in lay.last:
            acc = const[lay.last[n]] if const is not None else torch.zeros_like(local[:, :, 0, 0])
        carry[:, :, n] = acc
        acc = acc + local[:, :, n, 0]
    return local + carry.unsqueeze(3)


def _slow_chunks(Glast):
    """Indices (into the flattened [B*H*N] chunks) of the chunks that decay too fast for the one-matmul form."""
    span = -Glast.reshape(-1, Glast.shape[-1]).min(-1).values  # G_last <= G_t for every t: the largest exponent
    return torch.nonzero(span > FAST_SPAN[Glast.dtype]).flatten()


def _intra_scores(qc, kc, G, Glast, kdec, causal):
    """A[t, j] = sum_k q[t,k] k[j,k] exp(G[t,k] - G[j,k]) for j <= t (0 above), [.., C, C]."""
    qrel = qc * torch.exp((G - Glast.unsqueeze(-2)).clamp(max=FAST_SPAN[G.dtype]))
    A = (qrel @ kdec.transpose(-1, -2)) * causal
    slow = _slow_chunks(Glast)
    if slow.numel():
        C, K = qc.shape[-2:]
        flat = A.view(-1, C, C)
        flat[slow] = _SubBlocks(G.reshape(-1, C, K)[slow]).scores(
            qc.reshape(-1, C, K)[slow], kc.reshape(-1, C, K)[slow]
        )
    return A


def _intra_scores_and_grads(qc, kc, G, Glast, kdec, dA):
    """:func:`_intra_scores` and, for its upstream gradient ``dA`` (causal), the gradients w.r.t. q and k."""
    rel = torch.exp((G - Glast.unsqueeze(-2)).clamp(max=FAST_SPAN[G.dtype]))
    qrel = qc * rel
    causal = dA.new_ones(dA.shape[-2:]).tril()
    A = (qrel @ kdec.transpose(-1, -2)) * causal
    dq = (dA @ kdec) * rel
    dk = (dA.transpose(-1, -2) @ qrel) * torch.exp(Glast.unsqueeze(-2) - G)
    slow = _slow_chunks(Glast)
    if slow.numel():
        C, K = qc.shape[-2:]
        pick = [x.reshape(-1, C, x.shape[-1])[slow] for x in (G, qc, kc, dA)]
        a, dqs, dks = _SubBlocks(pick[0]).scores_and_grads(*pick[1:])
        A.view(-1, C, C)[slow] = a
        dq.view(-1, C, K)[slow] = dqs
        dk.view(-1, C, K)[slow] = dks
    return A, dq, dk


def _prepare(q, k, v, g, scale, lay):
    from .._dispatch import compute_dtype

    dt = compute_dtype(q, k, v, g)
    qc = lay.to_chunks(q, dt) * scale
    kc, vc = lay.to_chunks(k, dt), lay.to_chunks(v, dt)
    G = lay.to_chunks(g, dt).cumsum(-2)
    Glast = G[..., -1, :]
    kdec = kc * torch.exp(Glast.unsqueeze(-2) - G)
    return qc, kc, vc, G, Glast, kdec


class ChunkGLAFunction(torch.autograd.Function):
    """Chunked GLA over a layout (:class:`_BatchLayout` or :class:`_PackedLayout`), explicit backward that
    recomputes the chunk states."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, lay):
        qc, kc, vc, G, Glast, kdec = _prepare(q, k, v, g, scale, lay)
        causal = qc.new_ones(lay.chunk, lay.chunk).tril()
        A = _intra_scores(qc, kc, G, Glast, kdec, causal)
        states, finals = _chunk_states(kdec, vc, torch.exp(Glast), initial_state, lay)
        o = A @ vc + (qc * torch.exp(G)) @ states
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale, ctx.lay = scale, lay
        finals = finals.float() if finals.dtype != torch.float64 else finals
        if not output_final_state:
            ctx.mark_non_differentiable(finals)
        return lay.from_chunks(o).to(q.dtype), finals

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        scale, lay = ctx.scale, ctx.lay
        qc, kc, vc, G, Glast, kdec = _prepare(q, k, v, g, scale, lay)
        dt = qc.dtype
        doc = lay.to_chunks(do, dt)
        decay = torch.exp(Glast)
        states, finals = _chunk_states(kdec, vc, decay, h0, lay)
        qexp = qc * torch.exp(G)
        # gradient of the loss w.r.t. the state leaving each chunk, run backwards through each sequence's chunks
        W = qexp.transpose(-1, -2) @ doc  # [B, H, N, K, V]
        dht = None if dht is None else dht.to(dt)
        # per-sequence constant of d g: (d final * final) summed over V, reaching every token of the sequence
        const = (dht * finals.to(dt)).sum(-1) if dht is not None else None  # [num_seqs, H, K]
        dstates, dh0 = _chunk_dstates(W, decay, dht, lay)

        causal = torch.ones(lay.chunk, lay.chunk, dtype=torch.bool, device=q.device).tril()
        dA = (doc @ vc.transpose(-1, -2)) * causal
        A, dq, dk = _intra_scores_and_grads(qc, kc, G, Glast, kdec, dA)
        dq = dq + torch.exp(G) * (doc @ states.transpose(-1, -2))
        dk = dk + torch.exp(Glast.unsqueeze(-2) - G) * (vc @ dstates.transpose(-1, -2))
        dv = A.transpose(-1, -2) @ doc + kdec @ dstates

        # d g_t = sum over the later tokens s >= t of the same sequence of (q dq - k dk)_s (+ the constant):
        # within each chunk a reversed cumsum, across the chunks of a sequence a carried suffix sum
        local = (qc * dq - kc * dk).flip(-2).cumsum(-2).flip(-2)  # [B, H, N, C, K]
        dg = lay.from_chunks(_gate_grad(local, const, lay))
        dq = lay.from_chunks(dq) * scale
        dk, dv = lay.from_chunks(dk), lay.from_chunks(dv)
        dh0 = dh0.to(h0.dtype) if h0 is not None else None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.to(g.dtype), None, dh0, None, None


def _prepare_scalar(q, k, v, g, scale, lay):
    """As :func:`_prepare` for a scalar gate ``g`` [B, T, H]: G, Glast are [B, H, N, C] and [B, H, N]; also the
    in-chunk decay matrix ``exp(G_i - G_j)`` for j <= i, 0 above the diagonal [B, H, N, C, C]."""
    from .._dispatch import compute_dtype

    dt = compute_dtype(q, k, v, g)
    qc = lay.to_chunks(q, dt) * scale
    kc, vc = lay.to_chunks(k, dt), lay.to_chunks(v, dt)
    G = lay.to_chunks(g.unsqueeze(-1), dt).squeeze(-1).cumsum(-1)
    Glast = G[..., -1]
    kdec = kc * torch.exp(Glast.unsqueeze(-1) - G).unsqueeze(-1)
    causal = torch.ones(lay.chunk, lay.chunk, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf")))
    return qc, kc, vc, G, Glast, kdec, decay


class ChunkScalarGLAFunction(torch.autograd.Function):
    """Chunked GLA with one gate per head (``g`` [B, T, H]) over a layout, explicit backward that recomputes the
    chunk states."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, lay):
        qc, kc, vc, G, Glast, kdec, decay = _prepare_scalar(q, k, v, g, scale, lay)
        A = (qc @ kc.transpose(-1, -2)) * decay
        states, finals = _chunk_states(kdec, vc, torch.exp(Glast).unsqueeze(-1), initial_state, lay)
        o = A @ vc + (qc * torch.exp(G).unsqueeze(-1)) @ states
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale, ctx.lay = scale, lay
        finals = finals.float() if finals.dtype != torch.float64 else finals
        if not output_final_state:
            ctx.mark_non_differentiable(finals)
        return lay.from_chunks(o).to(q.dtype), finals

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        scale, lay = ctx.scale, ctx.lay
        qc, kc, vc, G, Glast, kdec, decay = _prepare_scalar(q, k, v, g, scale, lay)
        dt = qc.dtype
        doc = lay.to_chunks(do, dt)
        chunk_decay = torch.exp(Glast).unsqueeze(-1)  # [B, H, N, 1]: broadcasts over K
        states, finals = _chunk_states(kdec, vc, chunk_decay, h0, lay)
        eG = torch.exp(G).unsqueeze(-1)
        W = (qc * eG).transpose(-1, -2) @ doc  # [B, H, N, K, V]
        dht = None if dht is None else dht.to(dt)
        const = (dht * finals.to(dt)).sum((-2, -1)) if dht is not None else None  # [num_seqs, H]
        dstates, dh0 = _chunk_dstates(W, chunk_decay, dht, lay)

        A = (qc @ kc.transpose(-1, -2)) * decay
        dP = (doc @ vc.transpose(-1, -2)) * decay  # gradient w.r.t. q k^T
        dq = dP @ kc + eG * (doc @ states.transpose(-1, -2))
        kexp = torch.exp(Glast.unsqueeze(-1) - G).unsqueeze(-1)
        dk = dP.transpose(-1, -2) @ qc + kexp * (vc @ dstates.transpose(-1, -2))
        dv = A.transpose(-1, -2) @ doc + kdec @ dstates

        # the per-key identity summed over K: d g_t = sum over the later tokens s >= t of (q . dq - k . dk)_s
        local = (qc * dq - kc * dk).sum(-1).flip(-1).cumsum(-1).flip(-1)  # [B, H, N, C]
        dg = lay.from_chunks(_gate_grad(local, const, lay).unsqueeze(-1)).squeeze(-1)
        dq = lay.from_chunks(dq) * scale
        dk, dv = lay.from_chunks(dk), lay.from_chunks(dv)
        dh0 = dh0.to(h0.dtype) if h0 is not None else None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.to(g.dtype), None, dh0, None, None


def _function(g):
    """The autograd Function for the gate's layout: per key ``[B, T, H, K]`` or per head ``[B, T, H]``."""
    return ChunkScalarGLAFunction if g.dim() == 3 else ChunkGLAFunction


# Forward without gradients (prefill, evaluation) streams blocks of chunks carrying the state, so the temporaries
# (the sub-block scales are ~8x the size of q) stay bounded: each block holds about this many elements of q.
STREAM_ELEMENTS = 1 << 21


def _needs_graph(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def chunk_gla_torch(q, k, v, g, scale, initial_state=None, output_final_state=False, chunk=CHUNK, stream_elements=None):
    B, T, H, K = q.shape
    budget = STREAM_ELEMENTS if stream_elements is None else stream_elements
    block = max(1, budget // max(1, B * H * chunk * max(K, v.shape[-1]))) * chunk  # tokens per streamed block
    if T > block and not _needs_graph(q, k, v, g, initial_state):
        return _chunk_gla_streamed(q, k, v, g, scale, initial_state, output_final_state, chunk, block)
    o, final = _function(g).apply(q, k, v, g, scale, initial_state, output_final_state, _BatchLayout(B, T, chunk))
    return o, (final if output_final_state else None)


def _chunk_gla_streamed(q, k, v, g, scale, initial_state, output_final_state, chunk, block):
    """The same forward, ``block`` tokens (a multiple of ``chunk``) at a time; extra memory O(block), not O(T)."""
    B, T, H, _ = q.shape
    o = torch.empty(B, T, H, v.shape[-1], dtype=q.dtype, device=q.device)
    state = initial_state
    with torch.no_grad():
        for s in range(0, T, block):
            e = min(s + block, T)
            ob, state = _function(g).apply(
                q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], scale, state, True, _BatchLayout(B, e - s, chunk)
            )
            o[:, s:e] = ob
    return o, (state if output_final_state else None)


def recurrent_gla_step_torch(q, k, v, g, scale, initial_state=None, output_final_state=False):
    """One token (T == 1), the decode step: plain tensor ops, differentiable by autograd. ``g`` [B, 1, H, K] or, one
    gate per head, [B, 1, H]."""
    from .._dispatch import compute_dtype

    dt = compute_dtype(q, k, v, g)
    B, _, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=dt, device=q.device) if initial_state is None else initial_state.to(dt)
    q0, k0, v0, g0 = (x[:, 0].to(dt) for x in (q, k, v, g))
    alpha = torch.exp(g0).unsqueeze(-1) if g0.dim() == 3 else torch.exp(g0)[..., None, None]
    S = alpha * S + k0.unsqueeze(-1) * v0.unsqueeze(-2)
    o = ((q0 * scale).unsqueeze(-2) @ S).squeeze(-2).unsqueeze(1).to(q.dtype)
    final = S if dt == torch.float64 else S.float()
    return o, (final if output_final_state else None)


def chunk_gla_packed_torch(q, k, v, g, scale, initial_state, output_final_state, packed, chunk=CHUNK):
    """Packed sequences (``packed``: a ``kernels._varlen.Packed``) on the torch path. With gradients: one chunk-aligned
    pass; without, each sequence streams on its own (bounded extra memory, as :func:`chunk_gla_torch`)."""
    if (
        not _needs_graph(q, k, v, g, initial_state)
        and q[0].numel() // q.shape[-1] * max(q.shape[-1], v.shape[-1]) > STREAM_ELEMENTS
    ):
        o = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
        finals = []
        for i, (s, e) in enumerate(zip(packed.offsets, packed.offsets[1:])):
            h = None if initial_state is None else initial_state[i : i + 1]
            if e == s:
                dt = torch.float64 if q.dtype == torch.float64 else torch.float32
                finals.append(
                    torch.zeros(1, q.shape[2], q.shape[3], v.shape[-1], dtype=dt, device=q.device)
                    if h is None
                    else h.to(dt)
                )
                continue
            o[:, s:e], f = chunk_gla_torch(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], scale, h, True, chunk)
            finals.append(f)
        return o, (torch.cat(finals) if output_final_state else None)
    lay = _PackedLayout(packed, chunk, q.device)
    o, finals = _function(g).apply(q, k, v, g, scale, initial_state, output_final_state, lay)
    return o, (finals if output_final_state else None)
