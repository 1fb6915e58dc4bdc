"""Linearized attention of Llama-shaped decoders: what Liger (:mod:`.liger`) and Lizard (:mod:`.lizard`) share, and
the teacher's softmax attention for the layers a hybrid layout keeps.

A linearized mixer keeps the teacher's projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, or Phi-3's fused
``qkv_proj``; same shapes, same names, the family's biases and q/k norms: :mod:`hf_seqmodels.layers.families`) and
mixes two branches: gated linear attention (GLA, no RoPE) through the shared kernels, and softmax attention over a
sliding window of ``window_size`` keys (the query itself included) with the family's RoPE, grouped-query.

Decoding state in the :class:`~hf_seqmodels.cache.RecurrentCache`, per layer: ``gla_state`` ``[B, H, K, D]`` (fp32)
and the window's key/value ring buffer ``swa_k``/``swa_v`` ``[B, Hkv, n, D]`` with ``swa_mask`` ``[B, n]``
(False for padding), ``n = min(tokens seen, window)``: it grows with the input up to the window. Decoding with the
cache equals the full forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hf_seqmodels.kernels import chunk_gla, context_parallel, fused_recurrent_gla
from hf_seqmodels.kernels.attention import (
    check_window,
    ring_buffer_init,
    ring_buffer_ordered,
    ring_buffer_write,
    sliding_window_attention,
    sliding_window_decode,
)

from .block import DecoderBlock
from .checks import check_int, check_number
from .families import get_family, teacher_window


def check_linear_branch(where: str, gla_weight, gate_logit_normalizer, gla_scale) -> None:
    """The one check of the linear branch's settings (LigerAttention, LizardAttention and their configs):
    ``gla_weight`` in [0, 1] (None: not used, Lizard), ``gate_logit_normalizer`` > 0, ``gla_scale`` > 0 or None."""
    if gla_weight is not None:
        check_number(where, "gla_weight", gla_weight, positive=False, minimum=0.0, maximum=1.0)
    check_number(where, "gate_logit_normalizer", gate_logit_normalizer)  # log gates: logsigmoid(.) / it
    check_number(where, "gla_scale", gla_scale, allow_none=True)


class LinearizedDecoderBlock(DecoderBlock):
    """A Llama decoder layer whose ``self_attn`` is a linearized mixer: the state dict has Llama's names."""

    mixer_name = "self_attn"


class LinearizedAttention(nn.Module):
    """The teacher's attention projections plus the two branches; subclasses say how the branches are fed and mixed.

    The projections, their biases, the per-head q/k norms and RoPE are the teacher family's
    (:mod:`hf_seqmodels.layers.families`): ``q_proj``/``k_proj``/``v_proj`` (or Phi-3's fused ``qkv_proj``, kept
    fused) and ``o_proj`` under the teacher's names; Qwen3's ``q_norm``/``k_norm`` normalize q and k per head before
    both branches (the linear branch sees the q and k the teacher's attention sees, before RoPE).
    """

    supports_packed = True  # honours cu_seqlens (packed sequences, batch 1)

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        window_size: int = 64,
        attention_bias: bool = False,
        rope_parameters: dict | None = None,
        max_position_embeddings: int = 2048,
        layer_idx: int = 0,
        family: str = "llama",
        family_config=None,
    ):
        """``family``: the teacher's decoder family; ``family_config``: its transformers config (for RoPE and the
        q/k norms; None: built from these arguments)."""
        super().__init__()
        where = type(self).__name__
        check_int(where, "hidden_size", hidden_size)
        check_int(where, "num_heads", num_heads)
        check_int(where, "num_kv_heads", num_kv_heads, allow_none=True)
        check_int(where, "head_dim", head_dim, allow_none=True)
        check_window(where, window_size, "window_size")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"{where}: num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.window_size = window_size
        self.family = get_family(family, where)
        if family_config is None:
            family_config = self.family.config_class()(
                hidden_size=hidden_size,
                num_attention_heads=num_heads,
                num_key_value_heads=num_kv_heads,
                head_dim=self.head_dim,
                max_position_embeddings=max_position_embeddings,
                attention_bias=attention_bias,
                rope_parameters=dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0}),
            )
        qkv_bias, o_bias = self.family.biases(family_config)
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if self.family.fused_qkv:
            self.qkv_proj = nn.Linear(hidden_size, (H + 2 * Hkv) * D, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(hidden_size, H * D, bias=qkv_bias)
            self.k_proj = nn.Linear(hidden_size, Hkv * D, bias=qkv_bias)
            self.v_proj = nn.Linear(hidden_size, Hkv * D, bias=qkv_bias)
        self.o_proj = nn.Linear(H * D, hidden_size, bias=o_bias)
        if self.family.qk_norm:
            norm = self.family.component("RMSNorm")
            self.q_norm = norm(D, eps=family_config.rms_norm_eps)
            self.k_norm = norm(D, eps=family_config.rms_norm_eps)
        self.rotary_emb = self.family.component("RotaryEmbedding")(family_config)  # buffers only, not in the state dict
        self.apply_rotary = self.family.component("apply_rotary_pos_emb")
        #: the teacher's own window at this layer (None: global attention)
        self.teacher_window = teacher_window(family_config, layer_idx)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        """This mixer's keyword arguments from a :class:`LinearizedLlamaConfig` (Llama's field names)."""
        return dict(
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            window_size=config.window_size,
            attention_bias=config.attention_bias,
            rope_parameters=config.rope_parameters,
            max_position_embeddings=config.max_position_embeddings,
            family=config.base_model_type,
            family_config=config.family_config(),
        )

    @classmethod
    def from_config(cls, config, layer_idx: int = 0):
        """Build from a LigerConfig / LizardConfig (or any config with their field names)."""
        return cls(**cls.config_kwargs(config), layer_idx=layer_idx)

    def project(self, x):
        """x ``[B, T, hidden]`` -> q ``[B, T, H, D]``, k, v ``[B, T, Hkv, D]`` as the teacher's attention makes
        them before RoPE (biases, fused split, q/k norms)."""
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if self.family.fused_qkv:
            q, k, v = self.qkv_proj(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
        if self.family.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def rope(self, q, k, position_ids):
        """The family's RoPE (every rope_type, partial rotary) on q ``[B, T, H, D]``, k ``[B, T, Hkv, D]``."""
        cos, sin = self.rotary_emb(k, position_ids)
        return self.apply_rotary(q, k, cos, sin, unsqueeze_dim=2)

    def positions(self, B, T, cache, position_ids, device):
        if position_ids is not None:
            return position_ids
        seen = cache.seen_tokens if cache is not None else 0
        return torch.arange(seen, seen + T, device=device).unsqueeze(0).expand(B, T)

    def expand_kv(self, x):
        """[B, T, Hkv, D] -> [B, T, H, D] (each key/value head serves H / Hkv query heads)."""
        groups = self.num_heads // self.num_kv_heads
        return x if groups == 1 else x.repeat_interleave(groups, dim=2)

    def window_attention(self, q, k, v, mask, cache, position_ids, sinks=None, window=None, cu_seqlens=None):
        """Softmax attention over the last ``window`` keys with RoPE. q [B, T, H, D]; k, v [B, T, Hkv, D].
        ``cu_seqlens``: packed sequences (batch 1, no cache): no query sees a key of another sequence."""
        B, T = q.shape[:2]
        window = window or self.window_size
        seen = cache.seen_tokens if cache is not None else 0
        if cache is None and context_parallel.active():
            return self._context_parallel_window(q, k, v, mask, position_ids, sinks, window, cu_seqlens)
        q, k = self.rope(q, k, self.positions(B, T, cache, position_ids, q.device))
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask.bool()
        if cache is None:
            return sliding_window_attention(
                q, k, v, window, sinks=sinks, key_mask=None if mask is None else valid, cu_seqlens=cu_seqlens
            )
        if cu_seqlens is not None:
            raise ValueError(f"{type(self).__name__}: packed sequences (cu_seqlens) cannot be used with a cache")
        idx = self.layer_idx
        buf = [cache.get(idx, n) for n in ("swa_k", "swa_v", "swa_mask")]
        if buf[0] is None:
            buf = ring_buffer_init(B, self.num_kv_heads, self.head_dim, k.dtype, k.device)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        if T == 1 and seen > 0:
            kb, vb, mb = ring_buffer_write(*buf, kt, vt, valid, seen, window)
            o = sliding_window_decode(q, kb, vb, mb, sinks=sinks)
        else:
            if seen > 0:  # continue after earlier tokens: the window carried in the buffer is a key prefix
                k = torch.cat([ring_buffer_ordered(buf[0], seen).transpose(1, 2), k], 1)
                v = torch.cat([ring_buffer_ordered(buf[1], seen).transpose(1, 2), v], 1)
                valid = torch.cat([ring_buffer_ordered(buf[2], seen, dim=1), valid], 1)
            o = sliding_window_attention(q, k, v, window, sinks=sinks, key_mask=valid)
            kb, vb, mb = ring_buffer_write(*buf, kt, vt, valid[:, -T:], seen, window)
        cache.set(idx, "swa_k", kb), cache.set(idx, "swa_v", vb), cache.set(idx, "swa_mask", mb)
        return o

    def _context_parallel_window(self, q, k, v, mask, position_ids, sinks, window, cu_seqlens):
        """The window on this rank's slice (``hf_seqmodels.context_parallel``): the previous rank's last ``window``
        keys and values (after RoPE) and their padding mask come as a key prefix (kernels/context_parallel.py)."""
        B, T = q.shape[:2]
        name = type(self).__name__
        if position_ids is None or cu_seqlens is not None:
            raise ValueError(
                f"{name} under context_parallel: pass `position_ids` (this slice's positions in the whole sequence: "
                "RoPE turns keys by them before they travel) and no `cu_seqlens`"
            )
        if T < window:
            raise ValueError(
                f"{name} under context_parallel: this rank's slice has {T} positions, fewer than the window "
                f"({window}); give every rank >= {window} positions"
            )
        q, k = self.rope(q, k, position_ids)
        valid = torch.ones(B, T, dtype=k.dtype, device=q.device) if mask is None else mask.to(k.dtype)
        halo_k = context_parallel.exchange_halo(k[:, T - window :])
        halo_v = context_parallel.exchange_halo(v[:, T - window :])
        halo_valid = context_parallel.exchange_halo(valid[:, T - window :]) > 0.5  # rank 0: no keys before it
        k, v = torch.cat([halo_k, k], 1), torch.cat([halo_v, v], 1)
        key_mask = torch.cat([halo_valid, valid > 0.5], 1)
        return sliding_window_attention(q, k, v, window, sinks=sinks, key_mask=key_mask)

    def linear_attention(self, q, k, v, g, mask, cache, scale, cu_seqlens=None):
        """Gated linear attention over all heads: q, k, g [B, T, H, K] (features, log-gates), v [B, T, H, D].
        Padding tokens get zero keys and no decay, so they leave the state as it was."""
        if mask is not None:
            keep = mask[:, :, None, None].to(k.dtype)
            k, g = k * keep, g * keep.to(g.dtype)
        state = cache.get(self.layer_idx, "gla_state") if cache is not None else None
        op = fused_recurrent_gla if (state is not None and q.shape[1] == 1) else chunk_gla
        o, final = op(
            q, k, v, g, scale=scale, initial_state=state, output_final_state=cache is not None, cu_seqlens=cu_seqlens
        )
        if cache is not None:
            cache.set(self.layer_idx, "gla_state", final)
        return o


#: torch >= 2.5 lets SDPA share key/value heads across query heads without copying them (on the CPU the copy,
#: repeat_interleave over a 16K-token cache, costs ~20x the attention itself)
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def _sdpa_gqa(q, k, v, **kwargs):
    """Softmax attention with grouped-query heads: q ``[B, T, H, D]``, k, v ``[B, Hkv, S, D]`` -> ``[B, T, H, D]``."""
    groups = q.shape[2] // k.shape[1]
    if groups > 1 and _SDPA_GQA:
        kwargs["enable_gqa"] = True
    elif groups > 1:
        B, Hkv, S, D = k.shape
        k = k[:, :, None].expand(B, Hkv, groups, S, D).reshape(B, Hkv * groups, S, D)
        v = v[:, :, None].expand(B, Hkv, groups, S, D).reshape(B, Hkv * groups, S, D)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, **kwargs).transpose(1, 2)


class SoftmaxAttention(LinearizedAttention):
    """The teacher's own softmax attention, kept in a hybrid layout: its projections, q/k norms, RoPE and
    grouped-query heads, causal over every earlier key, or over the teacher's sliding window where it has one
    (Mistral, Qwen2 with ``use_sliding_window``, Phi-3).

    Decoding state under ``layer_idx``: with a teacher window, the window ring buffer the linearized layers use
    (``swa_k``/``swa_v``/``swa_mask``, up to the window); global attention keeps every key, ``kv_k``/``kv_v``
    ``[B, Hkv, S, D]`` and ``kv_mask`` ``[B, S]`` (False for padding), grown by each call (O(S) per layer).
    """

    def forward(self, hidden_states, attention_mask=None, cache=None, position_ids=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]`` (same dtype); arguments as
        :meth:`~hf_seqmodels.layers.liger.LigerAttention.forward`. Padded query positions give zeros before
        ``o_proj``."""
        context_parallel.refuse(
            f"{type(self).__name__} (sliding-window / softmax attention)", "it needs a key/value halo, not implemented"
        )
        B, T, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        cu_seqlens = kwargs.get("cu_seqlens")
        if self.teacher_window is not None:
            o = self.window_attention(
                q, k, v, attention_mask, cache, position_ids, window=self.teacher_window, cu_seqlens=cu_seqlens
            )
        else:
            o = self.global_attention(q, k, v, attention_mask, cache, position_ids, cu_seqlens)
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))

    def global_attention(self, q, k, v, mask, cache, position_ids, cu_seqlens=None):
        """Causal softmax attention over all keys (SDPA). q [B, T, H, D]; k, v [B, T, Hkv, D] -> [B, T, H, D]."""
        B, T = q.shape[:2]
        q, k = self.rope(q, k, self.positions(B, T, cache, position_ids, q.device))
        if cu_seqlens is not None:  # packed, no cache: a window as long as the input is causal in each sequence
            if cache is not None:
                raise ValueError(f"{type(self).__name__}: packed sequences (cu_seqlens) cannot be used with a cache")
            return sliding_window_attention(q, k, v, T, cu_seqlens=cu_seqlens)
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask.bool()
        keys, values, key_valid = k.transpose(1, 2), v.transpose(1, 2), valid
        if cache is not None:
            idx = self.layer_idx
            past = [cache.get(idx, n) for n in ("kv_k", "kv_v", "kv_mask")]
            if past[0] is not None:
                keys, values = torch.cat([past[0], keys], 2), torch.cat([past[1], values], 2)
                key_valid = torch.cat([past[2], valid], 1)
            cache.set(idx, "kv_k", keys), cache.set(idx, "kv_v", values), cache.set(idx, "kv_mask", key_valid)
        S = keys.shape[2]
        every_key = bool(key_valid.all())
        if every_key and S == T:
            return _sdpa_gqa(q, keys, values, is_causal=True)
        if every_key and T == 1:  # a decoding step: the new token sees every key
            return _sdpa_gqa(q, keys, values)
        key_pos = torch.arange(S, device=q.device)
        query_pos = torch.arange(S - T, S, device=q.device)
        allowed = (key_pos[None, :] <= query_pos[:, None])[None] & key_valid[:, None, :]  # [B, T, S]
        allowed = allowed | ((~valid)[:, :, None] & (key_pos[None, :] == query_pos[:, None])[None])  # no empty rows
        o = _sdpa_gqa(q, keys, values, attn_mask=allowed[:, None])
        return o * valid[:, :, None, None].to(o.dtype)
