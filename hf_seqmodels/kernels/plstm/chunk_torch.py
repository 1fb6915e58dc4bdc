"""Chunkwise pLSTM (Poeppel et al., 2025, arXiv 2506.11997) on a 1-D sequence, in PyTorch (any device).

Per batch row and head, with the state ``C_t`` of shape ``[JT, K, V]`` (``JT`` state-tracking channels, each a
``K x V`` fast-weight matrix) and ``JK = JQ = 1``:

    C_t[i] = sum_j T_t[i, j] C_{t-1}[j] + sum_a S_t[i, a] k_t v_t[a]^T
    o_t[o] = scale * ( sum_i M_t[o, i] q_t^T C_{t-1}[i] + (q_t . k_t) sum_a D_t[o, a] v_t[a] )

(the reference ``pLSTM1D_torch``: the mark reads the state *before* step t, the direct term ``D`` carries the
current token). The transition ``T_t`` is a dense ``JT x JT`` matrix, so neither the diagonal scans nor chunked GLA
apply. Chunked form, chunk of ``L`` steps starting from state ``C0``, with ``Phi(t, s) = T_t ... T_{s+1}``:

    o_t = scale * q_t^T (M_t Phi(t-1, -1)) C0  +  scale * sum_{s<=t} (q_t . k_s) G[t, s] v_s,
    G[t, s] = M_t Phi(t-1, s) S_s (s < t),   G[t, t] = D_t,
    C_L = Phi(L-1, -1) C0 + sum_s (Phi(L-1, s) S_s) k_s v_s^T.

``Phi(t-1, s) S_s`` for every ``s`` is carried through the chunk by one small matrix product per step (vectorised
over chunks, batch and heads), so the sequential depth is ``L`` inside chunks plus one step per chunk.
"""

from __future__ import annotations

import torch


def chunk_plstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    m: torch.Tensor,
    d: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 32,
):
    """q, k ``[B, T, H, K]``; v ``[B, T, H, JV, V]``; source s ``[B, T, H, JT, JV]``; transition t
    ``[B, T, H, JT, JT]``; mark m ``[B, T, H, JO, JT]``; direct d ``[B, T, H, JO, JV]``; initial_state
    ``[B, H, JT, K, V]``. Returns ``(o [B, T, H, JO, V], final_state or None)``. Computes in float32 at least;
    ``o`` has v's dtype, the state is float32 (float64 stays float64). ``scale`` defaults to ``K ** -0.5``."""
    B, T, H, K = q.shape
    JV, V, JT, JO = v.shape[3], v.shape[4], s.shape[3], m.shape[3]
    expected = {
        "k": (B, T, H, K),
        "v": (B, T, H, JV, V),
        "s": (B, T, H, JT, JV),
        "t": (B, T, H, JT, JT),
        "m": (B, T, H, JO, JT),
        "d": (B, T, H, JO, JV),
    }
    for name, x in (("k", k), ("v", v), ("s", s), ("t", t), ("m", m), ("d", d)):
        if tuple(x.shape) != expected[name]:
            raise ValueError(f"chunk_plstm: `{name}` must have shape {expected[name]}, got {tuple(x.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, H, JT, K, V):
        raise ValueError(
            f"chunk_plstm: `initial_state` must have shape {(B, H, JT, K, V)}, got {tuple(initial_state.shape)}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_plstm: `chunk_size` must be a positive int, got {chunk_size!r}")
    scale = K**-0.5 if scale is None else scale
    out_dtype = v.dtype
    dtype = torch.promote_types(v.dtype, torch.float32)
    q, k, v, s, t, m, d = (x.to(dtype) for x in (q, k, v, s, t, m, d))

    L = min(chunk_size, T)
    pad = -T % L
    if pad:  # trailing steps that add nothing (zero key) and keep the state (identity transition)
        eye = torch.eye(JT, dtype=dtype, device=t.device).expand(B, pad, H, JT, JT)
        q, k, v, s, m, d = (torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], 1) for x in (q, k, v, s, m, d))
        t = torch.cat([t, eye], 1)
    N = (T + pad) // L

    def chunks(x):  # [B, N*L, H, ...] -> [B, H, N, L, ...]
        return x.reshape(B, N, L, H, *x.shape[3:]).transpose(2, 3).transpose(1, 2)

    q, k, v, s, t, m, d = (chunks(x) for x in (q, k, v, s, t, m, d))

    # Walk each chunk (all chunks at once): R[.., s, :, :] = Phi(u-1, s) S_s (zero for s >= u), P = Phi(u-1, -1).
    R = s.new_zeros(B, H, N, L, JT, JV)
    P = torch.eye(JT, dtype=dtype, device=t.device).expand(B, H, N, JT, JT)
    onehot = torch.eye(L, dtype=dtype, device=t.device)
    gates, marks = [], []
    for u in range(L):
        gates.append(torch.einsum("bhnoi,bhnsia->bhnsoa", m[:, :, :, u], R))  # G[u, s] for s < u
        marks.append(torch.einsum("bhnoi,bhnij->bhnoj", m[:, :, :, u], P))  # M_u Phi(u-1, -1)
        R = torch.einsum("bhnij,bhnsja->bhnsia", t[:, :, :, u], R) + onehot[u][:, None, None] * s[:, :, :, u, None]
        P = torch.einsum("bhnij,bhnjk->bhnik", t[:, :, :, u], P)
    G = torch.stack(gates, 3) + onehot[:, :, None, None] * d[:, :, :, :, None]  # [B, H, N, L(t), L(s), JO, JV]
    Mc = torch.stack(marks, 3)  # [B, H, N, L, JO, JT]

    qk = torch.einsum("bhntc,bhnsc->bhnts", q, k)
    o = torch.einsum("bhnts,bhntsoa,bhnsav->bhntov", qk, G, v)

    # Across chunks: C_{n+1} = P_n C_n + U_n, U_n = sum_s R_n[s] k_s v_s^T
    U = torch.einsum("bhnsia,bhnsc,bhnsav->bhnicv", R, k, v)
    C = initial_state.to(dtype) if initial_state is not None else q.new_zeros(B, H, JT, K, V)
    starts = []
    for n in range(N):
        starts.append(C)
        C = torch.einsum("bhij,bhjcv->bhicv", P[:, :, n], C) + U[:, :, n]
    C0 = torch.stack(starts, 2)  # [B, H, N, JT, K, V]
    o = o + torch.einsum("bhntc,bhntoi,bhnicv->bhntov", q, Mc, C0)
    o = (scale * o).permute(0, 2, 3, 1, 4, 5).reshape(B, N * L, H, JO, V)[:, :T]
    return o.to(out_dtype), (C if output_final_state else None)
