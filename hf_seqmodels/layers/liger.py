"""Liger Attention (Lan et al., 2025, arXiv 2503.01496): the teacher's projections reused, no new parameters; the
linear branch's features are a softmax over the head dimension and its forget gate comes from the key projection.
The shared parts (projections, the two branches, decoding state) are :class:`~.linearized.LinearizedAttention`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .linearized import LinearizedAttention, check_linear_branch


class LigerAttention(LinearizedAttention):
    """Liger Attention: ``o = gla_weight * GLA(phi(q), phi(k), v, g) + (1 - gla_weight) * SWA(RoPE q, RoPE k, v)``.

    No new parameters. ``phi`` is a softmax over the head dimension (no RoPE); the forget gate comes from the
    pretrained key projection, ``g = logsigmoid(k) / gate_logit_normalizer`` per head and key dimension. Key/value
    heads are shared by ``H / Hkv`` query heads in both branches. ``gla_weight = 0`` is the window-only ablation
    (the GLA branch is skipped), ``gla_weight = 1`` the GLA-only one.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        gla_weight: float = 0.5,
        gate_logit_normalizer: float = 16.0,
        gla_scale: float | None = None,
        **kwargs,
    ):
        """Keyword arguments: those of :class:`LinearizedAttention` plus ``gla_weight`` (in [0, 1]),
        ``gate_logit_normalizer`` (> 0) and ``gla_scale`` (None: ``head_dim ** -0.5``)."""
        super().__init__(hidden_size, num_heads, **kwargs)
        check_linear_branch("LigerAttention", gla_weight, gate_logit_normalizer, gla_scale)
        self.gla_weight = float(gla_weight)
        self.gate_logit_normalizer = float(gate_logit_normalizer)
        self.gla_scale = gla_scale

    @classmethod
    def config_kwargs(cls, config) -> dict:
        return dict(
            super().config_kwargs(config),
            gla_weight=config.gla_weight,
            gate_logit_normalizer=config.gate_logit_normalizer,
            gla_scale=config.gla_scale,
        )

    def forward(self, hidden_states, attention_mask=None, cache=None, position_ids=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]`` (same dtype). ``attention_mask``
        ``[B, T]`` (1 = token) or None; ``cache``: a RecurrentCache (``gla_state``, window ring buffer);
        ``position_ids`` ``[B, T]`` (None: counted from the cache); ``cu_seqlens`` (kwargs): packed sequences."""
        B, T, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        o = 0
        if self.gla_weight != 0:
            wide = torch.promote_types(k.dtype, torch.float32)  # fp32 for half-precision inputs, fp64 stays fp64
            g = F.logsigmoid(k.to(wide)) / self.gate_logit_normalizer
            qf, kf = q.to(wide).softmax(-1).to(q.dtype), k.to(wide).softmax(-1).to(k.dtype)
            o_gla = self.linear_attention(
                qf,
                self.expand_kv(kf),
                self.expand_kv(v),
                self.expand_kv(g),
                attention_mask,
                cache,
                self.gla_scale,
                cu_seqlens=kwargs.get("cu_seqlens"),
            )
            o = self.gla_weight * o_gla
        if self.gla_weight != 1:
            o = o + (1 - self.gla_weight) * self.window_attention(
                q, k, v, attention_mask, cache, position_ids, cu_seqlens=kwargs.get("cu_seqlens")
            )
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))
