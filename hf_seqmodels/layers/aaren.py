"""Aaren: attention as a many-to-many RNN (Feng et al., 2024, "Attention as an RNN", arXiv 2405.13956).

Per layer and head a learned query ``q`` (a parameter, not a function of the input) attends over the prefix:
``o_t = sum_{i<=t} exp(s_i) v_i / sum_{i<=t} exp(s_i)`` with ``s_i = q . k_i / sqrt(head_dim)``. The paper computes
all prefixes with a parallel scan over triples ``(m, u, w)`` (running max, sum of ``exp(s - m)``, sum of
``exp(s - m) v``) under the associative combine
``(m_A, u_A, w_A) + (m_B, u_B, w_B) = (m, u_A e^{m_A - m} + u_B e^{m_B - m}, w_A e^{m_A - m} + w_B e^{m_B - m})``,
``m = max(m_A, m_B)``.

Here the running max is taken first (``m_t = cummax(s)``, itself a prefix scan), after which the rest of that
combine is a diagonal linear recurrence, run on the shared ``linear_scan`` kernel:
``h_t = exp(m_{t-1} - m_t) h_{t-1} + exp(s_t - m_t) [v_t, 1]``, ``o_t = h_t[:-1] / h_t[-1]``. It is the same
computation (``h_t = [w_t, u_t]``) and just as stable: every exponent is <= 0 and the denominator is >= 1 (the
argmax term contributes exp(0)). The max is a stop-gradient (the output does not depend on it). Decoding keeps the
state ``(m, h)`` per head, constant in the sequence length. Under ``hf_seqmodels.context_parallel`` a slice's running
max starts from the earlier slices' max (one exchange) and the scan carries the state across the slices.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels import context_parallel, linear_scan

from .checks import check_int


def aaren_dims(where: str, hidden_size, num_heads, head_dim) -> int:
    """The one check of an Aaren mixer's shape: positive ``hidden_size`` and ``num_heads``; ``head_dim`` positive,
    or None for ``hidden_size // num_heads`` (then ``num_heads`` must divide ``hidden_size``). Returns ``head_dim``."""
    check_int(where, "hidden_size", hidden_size)
    check_int(where, "num_heads", num_heads)
    if head_dim is None:
        if hidden_size % num_heads:
            raise ValueError(
                f"{where}: num_heads ({num_heads}) must divide hidden_size ({hidden_size}) when head_dim is None"
            )
        return hidden_size // num_heads
    check_int(where, "head_dim", head_dim)
    return head_dim


def _masked_max(s, m_prev):
    """Running max of ``s`` ``[B, T, H]`` (``-inf`` at masked positions) after the carried ``m_prev`` ``[B, H]``."""
    return torch.maximum(torch.cummax(s, dim=1).values, m_prev[:, None])


class Aaren(nn.Module):
    """Multi-head Aaren token mixer: keys and values from the input, one learned query per head, the causal softmax
    attention of that query over every prefix, then an output projection (as multi-head attention's).

    Left padding: pass the 2-D attention mask; masked positions add nothing to the state (their score is dropped and
    the state carried unchanged), so each row computes exactly what it would alone. A position that has no token at
    or before it outputs zeros.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, layer_idx: int = 0):
        super().__init__()
        self.head_dim = aaren_dims("Aaren", hidden_size, num_heads, head_dim)
        self.num_heads, self.layer_idx = num_heads, layer_idx
        inner = num_heads * self.head_dim
        self.query = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.init_extra_weights()

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "Aaren":
        """Build from a config with AarenConfig's field names (``hidden_size``, ``num_heads``, ``head_dim``)."""
        return cls(config.hidden_size, config.num_heads, head_dim=config.head_dim, layer_idx=layer_idx)

    def init_extra_weights(self, config=None):
        """The query: normal(0, 1), so that its scores are O(1) like a projected query's (skipped when loaded)."""
        init.normal_(self.query, mean=0.0, std=1.0)

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` (any float dtype) -> ``[B, T, hidden_size]``, same dtype.
        ``attention_mask`` ``[B, >= T]`` (1 = token; its last T columns are used); ``cache``: a RecurrentCache
        holding, under ``layer_idx``, ``max`` ``[B, H]`` and ``state`` ``[B, H, head_dim + 1]`` (the weighted sum of
        values and the sum of weights, both scaled by ``exp(-max)``), in float32 at least."""
        if kwargs.get("cu_seqlens") is not None:
            raise ValueError("Aaren: packed sequences (cu_seqlens) are not supported; pass a padded batch")
        B, T, _ = hidden_states.shape
        H, D = self.num_heads, self.head_dim
        dtype = torch.promote_types(hidden_states.dtype, torch.float32)
        k = self.k_proj(hidden_states).reshape(B, T, H, D).to(dtype)
        v = self.v_proj(hidden_states).reshape(B, T, H, D).to(dtype)
        s = torch.einsum("bthd,hd->bth", k, self.query.to(dtype)) / math.sqrt(D)
        if attention_mask is not None:
            keep = attention_mask[:, -T:, None].bool()
            s = s.masked_fill(~keep, float("-inf"))
        idx = self.layer_idx
        m_prev = cache.get(idx, "max") if cache is not None else None
        h_prev = cache.get(idx, "state") if cache is not None else None
        if m_prev is None and context_parallel.active():  # the sequence split over ranks: the earlier slices' max
            m_prev = context_parallel.exchange_running_max(s.detach().amax(1))
        if m_prev is None:
            m_prev = s.new_full((B, H), float("-inf"))
        m = _masked_max(s.detach(), m_prev)  # [B, T, H]; -inf until the first token
        started = torch.isfinite(m)
        m_safe = torch.where(started, m, torch.zeros_like(m))
        m_before = torch.cat([m_prev[:, None], m[:, :-1]], dim=1)
        # exp(m_{t-1} - m_t): 0 before the first token (the state is still zero), in (0, 1] after
        a = torch.where(torch.isfinite(m_before), torch.exp(m_before - m_safe), torch.zeros_like(m_safe))
        w = torch.exp(torch.where(torch.isfinite(s), s, m_safe) - m_safe) * torch.isfinite(s)  # 0 where masked
        b = w[..., None] * torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [B, T, H, D + 1]
        a = a[..., None].expand(B, T, H, D + 1)
        init_state = None if h_prev is None else h_prev.reshape(B, H * (D + 1))
        h = linear_scan(a.reshape(B, T, -1), b.reshape(B, T, -1), initial_state=init_state).reshape(B, T, H, D + 1)
        if cache is not None:
            cache.set(idx, "max", m[:, -1])
            cache.set(idx, "state", h[:, -1])
        den = h[..., -1:]
        o = h[..., :-1] / torch.where(den > 0, den, torch.ones_like(den))
        return self.o_proj(o.reshape(B, T, H * D).to(hidden_states.dtype))
