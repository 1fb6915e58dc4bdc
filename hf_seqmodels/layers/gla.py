"""Gated Linear Attention token mixer (Yang et al., 2023), on the shared kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla

from .checks import check_int, check_number
from .conv import ShortConvolution
from .norm import GatedRMSNorm


def gla_dims(where: str, hidden_size, num_heads, expand_k, expand_v) -> tuple[int, int]:
    """The one check of a GLA mixer's shape (this layer, ``GLAConfig``): positive ``hidden_size`` and
    ``num_heads``, positive ``expand_k``/``expand_v`` giving key and value widths that ``num_heads`` divides.
    Returns ``(key_dim, value_dim)`` = ``int(hidden_size * expand_k)``, ``int(hidden_size * expand_v)``."""
    check_int(where, "hidden_size", hidden_size)
    check_int(where, "num_heads", num_heads)
    check_number(where, "expand_k", expand_k)
    check_number(where, "expand_v", expand_v)
    key_dim, value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
    if key_dim < num_heads or value_dim < num_heads or key_dim % num_heads or value_dim % num_heads:
        raise ValueError(
            f"{where}: hidden_size*expand_k ({hidden_size}*{expand_k} -> {key_dim}) and hidden_size*expand_v "
            f"({hidden_size}*{expand_v} -> {value_dim}) must be positive multiples of num_heads ({num_heads})"
        )
    return key_dim, value_dim


class GatedLinearAttention(nn.Module):
    """``S_t = diag(alpha_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` per head, with a data-dependent low-rank gate
    ``alpha_t = exp(logsigmoid(W2 W1 x_t) / gate_logit_normalizer)``, a swish-gated RMSNorm on the output and
    optional short convolutions on q, k, v.

    Left padding: pass the 2-D attention mask; padded positions get zero keys and values so they leave the state
    untouched, and each row computes exactly what it would alone.
    """

    supports_packed = True  # honours cu_seqlens (packed sequences, batch 1)

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        use_short_conv: bool = False,
        conv_size: int = 4,
        norm_eps: float = 1e-6,
        layer_idx: int = 0,
    ):
        super().__init__()
        self.key_dim, self.value_dim = gla_dims("GatedLinearAttention", hidden_size, num_heads, expand_k, expand_v)
        check_int("GatedLinearAttention", "gate_low_rank_dim", gate_low_rank_dim)
        check_number("GatedLinearAttention", "gate_logit_normalizer", gate_logit_normalizer)
        if use_short_conv:
            check_int("GatedLinearAttention", "conv_size", conv_size)
        self.num_heads, self.layer_idx = num_heads, layer_idx
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(hidden_size, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, self.key_dim, bias=True)
        )
        self.use_short_conv = use_short_conv
        if use_short_conv:
            self.q_conv = ShortConvolution(self.key_dim, conv_size)
            self.k_conv = ShortConvolution(self.key_dim, conv_size)
            self.v_conv = ShortConvolution(self.value_dim, conv_size)
        self.g_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "GatedLinearAttention":
        """Build from a config with GLAConfig's field names (``hidden_size``, ``num_heads``, ``expand_k``, ...,
        ``rms_norm_eps``)."""
        return cls(
            hidden_size=config.hidden_size,
            num_heads=config.num_heads,
            expand_k=config.expand_k,
            expand_v=config.expand_v,
            gate_low_rank_dim=config.gate_low_rank_dim,
            gate_logit_normalizer=config.gate_logit_normalizer,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            norm_eps=config.rms_norm_eps,
            layer_idx=layer_idx,
        )

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` (any float dtype) -> ``[B, T, hidden_size]``, same dtype.
        ``attention_mask`` ``[B, >= T]`` (1 = token; its last T columns are used); ``cache``: a RecurrentCache
        (state ``[B, H, head_k_dim, head_v_dim]`` fp32 and conv tails under ``layer_idx``)."""
        B, T, _ = hidden_states.shape
        x = hidden_states
        if attention_mask is not None:
            x = x * attention_mask[:, -T:, None].to(x.dtype)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        idx = self.layer_idx
        cu_seqlens = kwargs.get("cu_seqlens")  # packed sequences (batch 1): the state restarts at each start
        if cu_seqlens is not None and cache is not None:
            raise ValueError("GatedLinearAttention: packed sequences (cu_seqlens) cannot be used with a cache")
        if self.use_short_conv:
            tails = [cache.get(idx, n) if cache is not None else None for n in ("conv_q", "conv_k", "conv_v")]
            q, tq = self.q_conv(q, tails[0], cu_seqlens=cu_seqlens)
            k, tk = self.k_conv(k, tails[1], cu_seqlens=cu_seqlens)
            v, tv = self.v_conv(v, tails[2], cu_seqlens=cu_seqlens)
            if cache is not None:
                cache.set(idx, "conv_q", tq), cache.set(idx, "conv_k", tk), cache.set(idx, "conv_v", tv)
        gate_logits = self.gk_proj(x)  # log gates in float32 at least (float64 stays float64)
        g = (
            F.logsigmoid(gate_logits.to(torch.promote_types(gate_logits.dtype, torch.float32)))
            / self.gate_logit_normalizer
        )
        H = self.num_heads
        q, k, g = (t.reshape(B, T, H, self.head_k_dim) for t in (q, k, g))
        v = v.reshape(B, T, H, self.head_v_dim)
        state = cache.get(idx, "state") if cache is not None else None
        op = fused_recurrent_gla if (state is not None and T == 1) else chunk_gla
        o, final = op(q, k, v, g, initial_state=state, output_final_state=cache is not None, cu_seqlens=cu_seqlens)
        if cache is not None:
            cache.set(idx, "state", final)
        gate = self.g_proj(hidden_states).reshape(B, T, H, self.head_v_dim)
        o = self.g_norm(o, gate).reshape(B, T, self.value_dim)
        return self.o_proj(o)
