"""H-Net dynamic chunking (Hwang, Wang, Gu, 2025, arXiv 2507.07955): routing, down/upsampling, smoothing, ratio loss.

One stage turns the encoder's outputs ``xh [B, T, D]`` into a shorter sequence for the inner network and back:

* routing: ``p_t = (1 - cos(W_q xh_{t-1}, W_k xh_t)) / 2`` clamped to [0, 1], ``p = 1`` at each row's first real
  token; boundary ``b_t = p_t > 0.5`` on real tokens (the reference's argmax of ``(1 - p, p)``: a tie is not a
  boundary); ``selected_probs = max(p, 1 - p)``. ``W_q``, ``W_k`` are bias-free, start as the identity and are kept
  out of re-initialization (the reference applies W_q to the previous token and W_k to the current one).
* downsampling: the boundary tokens of each row, in order, gathered to the END of a ``[B, M, D]`` tensor with a mask
  (left padding, so every row's last chunk is in the last column and recurrent states end on real tokens).
* smoothing: ``zbar_j = P_j z_j + (1 - P_j) zbar_{j-1}`` on the compressed sequence, ``P = clamp(p, 1e-4, 1 - 1e-4)``,
  one diagonal :func:`~hf_seqmodels.kernels.linear_scan` (padding columns: ``P = 0``, the state passes through).
* upsampling: each token takes the smoothed value of the chunk it belongs to (``cumsum(b) - 1``), times
  ``STE(selected_probs)`` (1 in the forward pass, gradient passed straight through), plus ``residual_proj(xh)``.
* ratio loss: ``N/(N-1) * ((N-1) F G + (1-F)(1-G))`` with ``F`` the fraction of boundaries and ``G`` the mean ``p``
  over a sequence's real tokens, minimal (= 1) at ``F = G = 1/N``, averaged over sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels import linear_scan

EMA_CLAMP = 1e-4


class StraightThrough(torch.autograd.Function):
    """Ones in the forward pass; the incoming gradient unchanged in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return torch.ones_like(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class RoutingModule(nn.Module):
    """Boundary probabilities from the cosine similarity of adjacent (projected) encoder outputs."""

    def __init__(self, d_model: int):
        super().__init__()
        self.q_proj_layer = nn.Linear(d_model, d_model, bias=False)
        self.k_proj_layer = nn.Linear(d_model, d_model, bias=False)
        for proj in (self.q_proj_layer, self.k_proj_layer):
            proj.init_identity = True  # read by the model's weight init, which must keep the identity
            init_identity(proj)

    def forward(self, hidden_states, mask=None, prev_hidden=None, prev_valid=None):
        """``p [B, T]`` (float32; float64 for float64 inputs) and boundaries ``b [B, T]`` (bool) of a stage; see the
        module docstring.

        ``mask`` ``[B, T]`` bool (None: all real; padding only before a row's real tokens). ``prev_hidden``
        ``[B, D]`` / ``prev_valid`` ``[B]``: each row's last encoder output before these tokens (decoding), so the
        first token here is compared with it; a row without one starts with a boundary.
        """
        B, T, D = hidden_states.shape
        dtype = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        q = F.normalize(self.q_proj_layer(hidden_states).to(dtype), dim=-1)
        k = F.normalize(self.k_proj_layer(hidden_states).to(dtype), dim=-1)
        if prev_hidden is None:
            prev_q = q.new_zeros(B, 1, D)
            prev_valid = torch.zeros(B, dtype=torch.bool, device=q.device)
        else:
            prev_q = F.normalize(self.q_proj_layer(prev_hidden.to(hidden_states.dtype)).to(dtype), dim=-1)[:, None]
        cos = (torch.cat([prev_q, q[:, :-1]], 1) * k).sum(-1)
        p = ((1 - cos) / 2).clamp(0.0, 1.0)
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask
        prev_real = torch.cat([prev_valid[:, None], valid[:, :-1]], 1)
        p = torch.where(prev_real, p, torch.ones_like(p))  # a row's first real token is a boundary
        return p, (p > 0.5) & valid


def init_identity(linear: nn.Linear) -> None:
    """The identity, through transformers.initialization (which leaves weights loaded from a checkpoint alone)."""
    init.copy_(linear.weight, torch.eye(linear.weight.shape[0], dtype=linear.weight.dtype, device=linear.weight.device))


def ratio_loss(p, b, mask, target: float, reduction: str = "sequence"):
    """H-Net's ratio loss for one stage, minimal (1.0) at ``F = G = 1/N``. Returns ``(loss, F over the batch)``.

    ``reduction="sequence"`` (the paper's definition, ``F``, ``G`` averaged over each sequence's real tokens, then the
    loss averaged over sequences): the same for a batch split over devices or accumulation steps. ``"batch"`` (the
    reference training code): ``F``, ``G`` over every real token of the batch.
    """
    if target <= 1:
        raise ValueError(f"ratio_loss: the target compression N must be > 1, got {target}")
    if reduction not in ("sequence", "batch"):
        raise ValueError(f"ratio_loss: reduction must be 'sequence' or 'batch', got {reduction!r}")
    m = torch.ones_like(p) if mask is None else mask.to(p.dtype)
    N = float(target)
    hits, probs = b.to(p.dtype) * m, p * m
    frac_all = hits.sum() / m.sum().clamp(min=1)
    if reduction == "batch":
        frac, prob = frac_all, probs.sum() / m.sum().clamp(min=1)
        return N / (N - 1) * ((N - 1) * frac * prob + (1 - frac) * (1 - prob)), frac_all
    n = m.sum(-1)
    frac, prob = hits.sum(-1) / n.clamp(min=1), probs.sum(-1) / n.clamp(min=1)
    per_row = N / (N - 1) * ((N - 1) * frac * prob + (1 - frac) * (1 - prob))
    rows = (n > 0).to(p.dtype)
    return (per_row * rows).sum() / rows.sum().clamp(min=1), frac_all


def downsample(hidden_states, b):
    """Gather each row's boundary tokens, in order, to the end of a ``[B, M, D]`` tensor (``M`` = most boundaries in a
    row). Returns ``(chunks, chunk_mask [B, M], counts [B], index [B, M])`` (``index``: the tokens' positions)."""
    B, T, D = hidden_states.shape
    counts = b.sum(1)
    M = int(counts.max()) if T else 0
    t = torch.arange(T, device=b.device)
    order = torch.argsort(b.long() * T + t, dim=1)  # non-boundaries first (by position), then boundaries in order
    index = order[:, T - M :]
    chunks = hidden_states.gather(1, index[..., None].expand(B, M, D))
    chunk_mask = torch.arange(M, device=b.device)[None] >= (M - counts)[:, None]
    return chunks, chunk_mask, counts, index


def smooth_chunks(z, p_chunks, chunk_mask, initial=None):
    """The smoothing EMA on the compressed sequence ``z [B, M, D]``: ``zbar_j = P_j z_j + (1 - P_j) zbar_{j-1}``,
    ``P`` the clamped boundary probabilities of the chunk starts ``p_chunks [B, M]``; padding columns keep the state.
    ``initial`` ``[B, D]`` is the previous chunk's smoothed value (decoding) or None (zeros). Computed in float32
    (float64 for float64 inputs)."""
    B, M, D = z.shape
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    P = p_chunks.to(dtype).clamp(EMA_CLAMP, 1 - EMA_CLAMP) * chunk_mask.to(dtype)
    a = (1 - P)[..., None].expand(B, M, D).contiguous()
    init_state = None if initial is None else initial.to(dtype)
    return linear_scan(a, (P[..., None] * z.to(dtype)).contiguous(), initial_state=init_state)


def upsample(zbar, b, counts, previous=None):
    """Each token's chunk value: ``out_t = zbar[chunk(t)]`` with ``chunk(t) = cumsum(b)_t - 1`` counted in the row's
    chunks (which sit at the end of ``zbar [B, M, D]``). Tokens before a row's first boundary here continue the
    previous chunk: ``previous [B, D]`` (decoding), zeros if None."""
    B, M, D = zbar.shape
    T = b.shape[1]
    prev = zbar.new_zeros(B, 1, D) if previous is None else previous[:, None].to(zbar.dtype)
    table = torch.cat([prev, zbar], 1)  # column 0: the chunk carried in
    c = b.long().cumsum(1)
    index = torch.where(c > 0, M - counts[:, None] + c, torch.zeros_like(c))
    return table.gather(1, index[..., None].expand(B, T, D))
