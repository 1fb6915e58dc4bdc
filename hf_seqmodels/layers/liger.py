"""Linearized Llama attention: Liger Attention (Lan et al., 2025, arXiv 2503.01496) and the parts Lizard shares.

A linearized mixer keeps Llama's projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, same shapes, same
names) and mixes two branches: gated linear attention (GLA, no RoPE) through the shared kernels, and softmax
attention over a sliding window of ``window_size`` keys (the query itself included) with RoPE, grouped-query.

Decoding state in the :class:`~hf_seqmodels.cache.RecurrentCache`, per layer: ``gla_state`` ``[B, H, K, D]`` (fp32)
and the window's key/value ring buffer ``swa_k``/``swa_v`` ``[B, Hkv, window, D]`` with ``swa_mask`` ``[B, window]``
(False for padding and unwritten slots). Decoding with the cache equals the full forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla
from hf_seqmodels.kernels.attention import (
    ring_buffer_init,
    ring_buffer_ordered,
    ring_buffer_write,
    sliding_window_attention,
    sliding_window_decode,
)

from .block import DecoderBlock


class LinearizedDecoderBlock(DecoderBlock):
    """A Llama decoder layer whose ``self_attn`` is a linearized mixer: the state dict has Llama's names."""

    mixer_name = "self_attn"


class LinearizedAttention(nn.Module):
    """Llama's attention projections plus the two branches; subclasses say how the branches are fed and mixed."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window_size = config.window_size
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.rotary_emb = LlamaRotaryEmbedding(config)  # buffers only, not in the state dict

    def project(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        return q, k, v

    def expand_kv(self, x):
        """[B, T, Hkv, D] -> [B, T, H, D] (each key/value head serves H / Hkv query heads)."""
        groups = self.num_heads // self.num_kv_heads
        return x if groups == 1 else x.repeat_interleave(groups, dim=2)

    def window_attention(self, q, k, v, mask, cache, position_ids, sinks=None, window=None):
        """Softmax attention over the last ``window`` keys with RoPE. q [B, T, H, D]; k, v [B, T, Hkv, D]."""
        B, T = q.shape[:2]
        window = window or self.window_size
        seen = cache.seen_tokens if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(seen, seen + T, device=q.device).unsqueeze(0).expand(B, T)
        cos, sin = self.rotary_emb(v, position_ids)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask.bool()
        if cache is None:
            return sliding_window_attention(q, k, v, window, sinks=sinks, key_mask=None if mask is None else valid)
        idx = self.layer_idx
        buf = [cache.get(idx, n) for n in ("swa_k", "swa_v", "swa_mask")]
        if buf[0] is None:
            buf = ring_buffer_init(B, self.num_kv_heads, window, self.head_dim, k.dtype, k.device)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        if T == 1 and seen > 0:
            kb, vb, mb = ring_buffer_write(*buf, kt, vt, valid, seen)
            o = sliding_window_decode(q, kb, vb, mb, sinks=sinks)
        else:
            if seen > 0:  # continue after earlier tokens: the window carried in the buffer is a key prefix
                k = torch.cat([ring_buffer_ordered(buf[0], seen).transpose(1, 2), k], 1)
                v = torch.cat([ring_buffer_ordered(buf[1], seen).transpose(1, 2), v], 1)
                valid = torch.cat([ring_buffer_ordered(buf[2], seen, dim=1), valid], 1)
            o = sliding_window_attention(q, k, v, window, sinks=sinks, key_mask=valid)
            kb, vb, mb = ring_buffer_write(*buf, kt, vt, valid[:, -T:], seen)
        cache.set(idx, "swa_k", kb), cache.set(idx, "swa_v", vb), cache.set(idx, "swa_mask", mb)
        return o

    def linear_attention(self, q, k, v, g, mask, cache, scale):
        """Gated linear attention over all heads: q, k, g [B, T, H, K] (features, log-gates), v [B, T, H, D].
        Padding tokens get zero keys and no decay, so they leave the state as it was."""
        if mask is not None:
            keep = mask[:, :, None, None].to(k.dtype)
            k, g = k * keep, g * keep.to(g.dtype)
        state = cache.get(self.layer_idx, "gla_state") if cache is not None else None
        op = fused_recurrent_gla if (state is not None and q.shape[1] == 1) else chunk_gla
        o, final = op(q, k, v, g, scale=scale, initial_state=state, output_final_state=cache is not None)
        if cache is not None:
            cache.set(self.layer_idx, "gla_state", final)
        return o


class LigerAttention(LinearizedAttention):
    """Liger Attention: ``o = gla_weight * GLA(phi(q), phi(k), v, g) + (1 - gla_weight) * SWA(RoPE q, RoPE k, v)``.

    No new parameters. ``phi`` is a softmax over the head dimension (no RoPE); the forget gate comes from the
    pretrained key projection, ``g = logsigmoid(k) / gate_logit_normalizer`` per head and key dimension. Key/value
    heads are shared by ``H / Hkv`` query heads in both branches. ``gla_weight = 0`` is the window-only ablation
    (the GLA branch is skipped), ``gla_weight = 1`` the GLA-only one.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.gla_weight = float(config.gla_weight)
        self.gate_logit_normalizer = float(config.gate_logit_normalizer)
        self.gla_scale = config.gla_scale

    def forward(self, hidden_states, attention_mask=None, cache=None, position_ids=None, **kwargs):
        B, T, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        o = 0
        if self.gla_weight != 0:
            g = F.logsigmoid(k.float()) / self.gate_logit_normalizer
            qf, kf = q.float().softmax(-1).to(q.dtype), k.float().softmax(-1).to(k.dtype)
            o_gla = self.linear_attention(
                qf, self.expand_kv(kf), self.expand_kv(v), self.expand_kv(g), attention_mask, cache, self.gla_scale
            )
            o = self.gla_weight * o_gla
        if self.gla_weight != 1:
            o = o + (1 - self.gla_weight) * self.window_attention(q, k, v, attention_mask, cache, position_ids)
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))
