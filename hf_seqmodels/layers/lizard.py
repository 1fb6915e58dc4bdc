"""Lizard attention (arXiv 2507.09025): gated linear attention with learned Hedgehog feature maps and a learned
scalar gate, plus sliding-window attention with learned "meta-memory" sink logits, mixed by a learned weight.

Where the paper leaves a detail open, the choice made here (each covered by a test):
- gate: one log-gate per head and position, ``g = logsigmoid(decay_proj(x)) / gate_logit_normalizer`` (a
  ``Linear(hidden, H)`` with bias, weights ``N(0, 0.02)``, bias 0), shared by every feature dimension;
- feature maps: ``phi(x) = [softmax(x W), softmax(-x W)]`` per head over the feature dimension, no bias, ``W``
  initialized to the identity (``feature_dim = head_dim`` by default), applied to q and k before RoPE;
- sinks: ``num_sinks`` logits per head (default 4) added to the window's softmax denominator, initialized to
  ``sink_init`` (default -4, a negligible share, so the window branch starts as the teacher's local attention);
- mixing: ``o = o_gla + window_weight[h] * o_window`` per head, ``window_weight`` initialized to 1;
- attention transfer (stage 1) matches each layer's output after ``o_proj`` with an MSE, and passes the teacher's
  output on to the next layer, so every layer learns from the teacher's inputs in one forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..kernels import context_parallel
from .checks import check_int, check_number
from .linearized import LinearizedAttention, check_linear_branch


def check_lizard_options(where: str, feature_dim, num_sinks, sink_init) -> None:
    """The one check of Lizard's own settings (LizardAttention, LizardConfig): ``feature_dim`` an int >= 1 or None,
    ``num_sinks`` an int >= 0, ``sink_init`` a number."""
    check_int(where, "feature_dim", feature_dim, allow_none=True)
    check_int(where, "num_sinks", num_sinks, minimum=0)
    check_number(where, "sink_init", sink_init, positive=False)


class HedgehogFeatureMap(nn.Module):
    """``phi(x) = [softmax(x W_h), softmax(-x W_h)]`` per head ``h``: [B, T, H, D] -> [B, T, H, 2F]."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, feature_dim))

    def init_extra_weights(self, config=None):
        H, D, Fd = self.weight.shape
        eye = torch.eye(D, Fd, dtype=self.weight.dtype, device=self.weight.device)
        init.copy_(self.weight, eye.expand(H, D, Fd))

    def forward(self, x):
        """x ``[B, T, H, head_dim]`` -> ``[B, T, H, 2 * feature_dim]`` (x's dtype; rows of softmaxes, sum 2)."""
        z = torch.einsum("bthd,hdf->bthf", x, self.weight.to(x.dtype))
        return torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=-1)


class LizardAttention(LinearizedAttention):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        feature_dim: int | None = None,
        num_sinks: int = 4,
        sink_init: float = -4.0,
        gate_logit_normalizer: float = 16.0,
        gla_scale: float | None = None,
        **kwargs,
    ):
        """Keyword arguments: those of :class:`LinearizedAttention` plus ``feature_dim`` (None: ``head_dim``),
        ``num_sinks`` (>= 0), ``sink_init``, ``gate_logit_normalizer`` (> 0) and ``gla_scale``."""
        super().__init__(hidden_size, num_heads, **kwargs)
        check_lizard_options("LizardAttention", feature_dim, num_sinks, sink_init)
        check_linear_branch("LizardAttention", None, gate_logit_normalizer, gla_scale)
        H, D = self.num_heads, self.head_dim
        self.feature_dim = feature_dim or D
        self.gate_logit_normalizer = float(gate_logit_normalizer)
        self.gla_scale = gla_scale
        self.sink_init = float(sink_init)
        self.q_feature_map = HedgehogFeatureMap(H, D, self.feature_dim)
        self.k_feature_map = HedgehogFeatureMap(self.num_kv_heads, D, self.feature_dim)
        self.decay_proj = nn.Linear(hidden_size, H, bias=True)
        self.sink_logits = nn.Parameter(torch.empty(H, num_sinks))
        self.window_weight = nn.Parameter(torch.empty(H))
        #: stage 1 (attention transfer): return the teacher's output and keep the MSE in ``transfer_loss``
        self.attention_transfer = False
        self.transfer_loss = None

    @classmethod
    def config_kwargs(cls, config) -> dict:
        return dict(
            super().config_kwargs(config),
            feature_dim=config.feature_dim,
            num_sinks=config.num_sinks,
            sink_init=config.sink_init,
            gate_logit_normalizer=config.gate_logit_normalizer,
            gla_scale=config.gla_scale,
        )

    def init_extra_weights(self, config=None):
        init.constant_(self.sink_logits, self.sink_init)
        init.ones_(self.window_weight)

    def student(self, hidden_states, q, k, v, attention_mask, cache, position_ids, cu_seqlens=None):
        B, T, _ = hidden_states.shape
        logits = self.decay_proj(hidden_states)
        g = F.logsigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32))) / self.gate_logit_normalizer
        qf, kf = self.q_feature_map(q), self.expand_kv(self.k_feature_map(k))
        g = g.unsqueeze(-1).expand(*qf.shape).contiguous()
        o_gla = self.linear_attention(qf, kf, self.expand_kv(v), g, attention_mask, cache, self.gla_scale, cu_seqlens)
        o_win = self.window_attention(
            q, k, v, attention_mask, cache, position_ids, sinks=self.sink_logits, cu_seqlens=cu_seqlens
        )
        o = o_gla + self.window_weight.to(o_win.dtype)[:, None] * o_win
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))

    def forward(self, hidden_states, attention_mask=None, cache=None, position_ids=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]`` (same dtype); with
        ``attention_transfer`` on, the teacher's output, the student's MSE in ``transfer_loss`` (fp32 scalar).
        ``attention_mask`` ``[B, T]`` (1 = token) or None; ``cache``: a RecurrentCache; ``position_ids`` ``[B, T]``."""
        q, k, v = self.project(hidden_states)
        cu_seqlens = kwargs.get("cu_seqlens")
        if not self.attention_transfer:
            return self.student(hidden_states, q, k, v, attention_mask, cache, position_ids, cu_seqlens)
        context_parallel.refuse("LizardAttention with attention_transfer", "its teacher attends over the whole input")
        T = hidden_states.shape[1]
        with (
            torch.no_grad()
        ):  # the teacher's softmax attention: causal (a window as long as the input) or its own window
            window = min(T, self.teacher_window or T)
            teacher = self.window_attention(
                q, k, v, attention_mask, None, position_ids, window=window, cu_seqlens=cu_seqlens
            )
            teacher = self.o_proj(teacher.reshape(*hidden_states.shape[:2], -1))
        out = self.student(hidden_states, q, k, v, attention_mask, None, position_ids, cu_seqlens)
        err = (out.float() - teacher.float()).pow(2).mean(-1)
        if attention_mask is not None:
            w = attention_mask.to(err.dtype)
            self.transfer_loss = (err * w).sum() / w.sum().clamp_min(1)
        else:
            self.transfer_loss = err.mean()
        return teacher
