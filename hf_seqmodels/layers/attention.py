"""Causal multi-head softmax attention with (partial) rotary embeddings and an optional sliding window, for stacks
whose rows advance at different speeds (H-Net's inner stages step only on chunk boundaries).

Positions are counted per row from the padding mask, not taken from the token index: a row's ``n``-th real token
has position ``n - 1`` whatever padding precedes it, so a left-padded row, or a compressed H-Net row gathered to
the right, computes exactly what it computes alone. A query at position ``t`` sees the keys at positions ``j`` with
``t - window < j <= t`` of its own row (``window=None``: all of them).

A whole sequence (training, prefill: no cached keys) never builds a ``[B, T, T]`` mask when it can avoid it: a
windowed layer runs the shared ``sliding_window_attention`` op (O(T x window) memory, padding as its key mask), a
global one SDPA with ``is_causal`` when no row is padded. Decoding against a cache uses the explicit position mask.

Decoding state in the :class:`~hf_seqmodels.cache.RecurrentCache` under ``layer_idx``: ``attn_k`` / ``attn_v``
``[B, H, L, D]``, ``attn_pos`` ``[B, L]`` (the keys' positions, -1 for padding) and ``attn_count`` ``[B]`` (real tokens
seen). Every call appends its keys for all rows (padding ones at position -1, never attended); keys that no future
query can see any more (outside every row's window) are dropped from the front, so a windowed layer keeps
O(window) keys. Cached tensors are replaced, never written in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from ..kernels import context_parallel, sliding_window_attention
from .checks import check_int


class CausalSelfAttention(nn.Module):
    SEGMENT_BLOCKS = 2  # query blocks of ``window`` per call of the sliding-window op (bounds its temporaries)

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        rotary_dim: int | None = None,
        window: int | None = None,
        rope_theta: float = 10000.0,
        layer_idx: int = 0,
    ):
        super().__init__()
        check_int("CausalSelfAttention", "hidden_size", hidden_size)
        check_int("CausalSelfAttention", "num_heads", num_heads)
        check_int("CausalSelfAttention", "rotary_dim", rotary_dim, minimum=0, allow_none=True)
        check_int("CausalSelfAttention", "window", window, allow_none=True)
        if hidden_size % num_heads:
            raise ValueError(
                f"CausalSelfAttention: hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        rotary_dim = self.head_dim if rotary_dim is None else rotary_dim
        if rotary_dim % 2 or not 0 <= rotary_dim <= self.head_dim:
            raise ValueError(
                f"CausalSelfAttention: rotary_dim must be even and in [0, head_dim={self.head_dim}], got {rotary_dim}"
            )
        self.rotary_dim, self.window, self.layer_idx = rotary_dim, window, layer_idx
        self.rope_theta = float(rope_theta)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.rotary_emb = None
        if rotary_dim:
            rope = LlamaConfig(
                hidden_size=hidden_size, num_attention_heads=num_heads, head_dim=rotary_dim, rope_theta=rope_theta
            )
            self.rotary_emb = LlamaRotaryEmbedding(rope)  # buffers only, not in the state dict

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "CausalSelfAttention":
        """Build from a config with Llama's field names: ``hidden_size``, ``num_attention_heads``, optional
        ``rotary_dim`` (default: the head size), ``sliding_window`` (None: global) and ``rope_theta``."""
        return cls(
            config.hidden_size,
            config.num_attention_heads,
            rotary_dim=getattr(config, "rotary_dim", None),
            window=getattr(config, "sliding_window", None),
            rope_theta=getattr(config, "rope_theta", 10000.0),
            layer_idx=layer_idx,
        )

    def _rotate(self, q, k, positions):
        if self.rotary_emb is None:
            return q, k
        if q.dtype == torch.float64:  # exact tables (transformers' are float32, ~1e-7 off)
            half = torch.arange(0, self.rotary_dim, 2, dtype=torch.float64, device=q.device) / self.rotary_dim
            angles = positions.clamp(min=0).to(torch.float64)[..., None] * self.rope_theta**-half
            angles = torch.cat([angles, angles], -1)
            cos, sin = angles.cos(), angles.sin()
        else:
            cos, sin = self.rotary_emb(q, positions.clamp(min=0))
        r = self.rotary_dim
        qr, kr = apply_rotary_pos_emb(q[..., :r], k[..., :r], cos, sin, unsqueeze_dim=1)
        return torch.cat([qr, q[..., r:]], -1), torch.cat([kr, k[..., r:]], -1)

    def _masked(self, q, k, v, qpos, kpos, valid):
        """Attention under an explicit ``[B, T, L]`` mask built from the positions (decoding against a cache): q
        ``[B, H, T, D]``, k, v ``[B, H, L, D]``, qpos ``[B, T]``, kpos ``[B, L]`` (-1: padding) -> ``[B, T, H, D]``."""
        qp, kp = qpos[:, :, None], kpos[:, None, :]
        allowed = (kp >= 0) & (kp <= qp)
        if self.window is not None:
            allowed &= qp - kp < self.window
        allowed |= ~valid[:, :, None]  # padding queries attend to anything (outputs ignored), never to nothing
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None]).transpose(1, 2)

    def _windowed(self, q, k, v, key_mask):
        """The sliding-window op over ``[B, T, H, D]`` in segments of ``SEGMENT_BLOCKS`` windows of queries, each with
        the ``window - 1`` keys before it as a prefix: the same result, and the op's temporaries (scores of every
        block at once, forward and backward) stay those of one segment."""
        T, w = q.shape[1], self.window
        step = self.SEGMENT_BLOCKS * w
        outs = []
        for s in range(0, T, step):
            lo, hi = max(0, s - w + 1), min(T, s + step)
            km = None if key_mask is None else key_mask[:, lo:hi]
            outs.append(sliding_window_attention(q[:, s:hi], k[:, lo:hi], v[:, lo:hi], w, key_mask=km))
        return torch.cat(outs, 1)

    def _full_sequence(self, q, k, v, pos, valid, padded):
        """Attention of a whole sequence to itself (no cached keys): q, k, v ``[B, H, T, D]`` -> ``[B, T, H, D]``.
        A windowed layer runs the shared sliding-window op (O(T x window) memory) with the padding as its key mask;
        a global one (or one whose window covers the sequence) runs SDPA with ``is_causal`` when no row is padded,
        the position mask otherwise."""
        if self.window is None or self.window >= q.shape[2]:
            if padded:
                return self._masked(q, k, v, pos, pos, valid)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # the op's layout, [B, T, H, D]
        if not padded:
            return self._windowed(q, k, v, None)
        starts = valid & ~F.pad(valid, (1, 0), value=False)[:, :-1]
        if bool((starts.sum(1) <= 1).all()):  # each row's tokens are one run: index distance = position distance
            return self._windowed(q, k, v, valid)
        # padding inside a row: move each row's tokens to its front (in order), attend there, move the outputs back
        order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
        q, k, v = (x.gather(1, order[:, :, None, None].expand_as(x)) for x in (q, k, v))
        out = self._windowed(q, k, v, valid.gather(1, order))
        back = order.argsort(1)
        return out.gather(1, back[:, :, None, None].expand_as(out))

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]`` (same dtype; padded positions 0 before
        ``o_proj``). ``attention_mask`` ``[B, >= T]`` (1 = token, last T columns used); ``cache``: a RecurrentCache
        (``attn_k``/``attn_v`` ``[B, H, L, D]``, ``attn_pos`` ``[B, L]``, ``attn_count`` ``[B]``)."""
        context_parallel.refuse("CausalSelfAttention (softmax attention)", "it needs ring attention, not implemented")
        B, T, _ = hidden_states.shape
        H, D, idx = self.num_heads, self.head_dim, self.layer_idx
        valid = (
            torch.ones(B, T, dtype=torch.bool, device=hidden_states.device)
            if attention_mask is None
            else attention_mask[:, -T:].bool()
        )
        count = cache.get(idx, "attn_count") if cache is not None else None
        if count is None:
            count = torch.zeros(B, dtype=torch.long, device=hidden_states.device)
        pos = count[:, None] + valid.long().cumsum(1) - 1
        pos = torch.where(valid, pos, torch.full_like(pos, -1))

        q, k, v = (p(hidden_states).view(B, T, H, D).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self._rotate(q, k, pos)
        kpos = pos
        if cache is not None:
            past_k = cache.get(idx, "attn_k")
            if past_k is not None:
                k = torch.cat([past_k, k], 2)
                v = torch.cat([cache.get(idx, "attn_v"), v], 2)
                kpos = torch.cat([cache.get(idx, "attn_pos"), pos], 1)
        if kpos is pos:  # the whole sequence at once (training, prefill): no [B, T, T] mask
            out = self._full_sequence(q, k, v, pos, valid, padded=attention_mask is not None and not bool(valid.all()))
        else:
            out = self._masked(q, k, v, pos, kpos, valid)
        out = out.masked_fill(~valid[:, :, None, None], 0.0)

        if cache is not None:
            new_count = count + valid.long().sum(1)
            if self.window is not None:  # drop the leading keys that no row's future queries can see
                horizon = (new_count - self.window)[:, None]
                dead = (kpos < 0) | (kpos < horizon)
                keep_from = int(dead.long().cumprod(1).sum(1).min())
                k, v, kpos = k[:, :, keep_from:], v[:, :, keep_from:], kpos[:, keep_from:]
            cache.set(idx, "attn_k", k), cache.set(idx, "attn_v", v), cache.set(idx, "attn_pos", kpos)
            cache.set(idx, "attn_count", new_count)
        return self.o_proj(out.reshape(B, T, H * D))
