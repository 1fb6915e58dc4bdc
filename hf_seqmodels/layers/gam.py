"""Gated Associative Memory (GAM) token mixer (arXiv 2509.00605; reference code: rishiraj/gam, ``GAMBlock``).

On the (LayerNorm-ed) input ``h``, two paths fused by sigmoid gates from ``h``:
``local = causal_depthwise_conv(h)`` (kernel 3, with bias, no activation), ``global = softmax(h M^T) M`` over a
learned static bank ``M`` ``[num_memory_slots, d]``, ``out = sigmoid(g_l) * local + sigmoid(g_g) * global`` with
``[g_l, g_g] = Linear(h)`` (with bias). The block around it (LayerNorm, residual, GELU FFN) is the model's.

What it can model: the "global" path reads a bank shared by every sequence, position by position; it never mixes
tokens. The only path between tokens is the convolution, so a GAM stack of L layers sees at most
``L * (conv_kernel_size - 1)`` tokens back (2 per layer at kernel 3): an n-gram-like model, not a long-context one.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from .checks import check_int
from .conv import ShortConvolution


class GatedAssociativeMemory(nn.Module):
    """GAM's token mixer: causal depthwise convolution (local) and retrieval from a learned memory bank (per token),
    fused by sigmoid gates. Decoding keeps the last ``conv_kernel_size - 1`` inputs.

    Left padding: pass the 2-D attention mask; padded positions are zeroed before the convolution, so each row
    computes exactly what it would alone.
    """

    supports_packed = True  # honours cu_seqlens (no convolution tap crosses a sequence start)

    def __init__(self, hidden_size: int, num_memory_slots: int = 512, conv_kernel_size: int = 3, layer_idx: int = 0):
        super().__init__()
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_memory_slots", num_memory_slots),
            ("conv_kernel_size", conv_kernel_size),
        ):
            check_int("GatedAssociativeMemory", name, value)
        self.layer_idx = layer_idx
        self.causal_conv = ShortConvolution(hidden_size, conv_kernel_size, bias=True, activation=False)
        self.memory_bank = nn.Parameter(torch.empty(num_memory_slots, hidden_size))
        self.gate = nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        self.init_extra_weights()

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "GatedAssociativeMemory":
        """Build from a config with GAMConfig's field names (``hidden_size``, ``num_memory_slots``,
        ``conv_kernel_size``)."""
        return cls(config.hidden_size, config.num_memory_slots, config.conv_kernel_size, layer_idx=layer_idx)

    def init_extra_weights(self, config=None):
        """The reference's init: Xavier-uniform memory bank, PyTorch's default convolution init (Kaiming-uniform
        weight, bias uniform in ``+-1/sqrt(kernel_size)``). Skipped for tensors loaded from a checkpoint."""
        init.xavier_uniform_(self.memory_bank)
        conv = self.causal_conv.conv
        init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(conv.weight.shape[1] * conv.weight.shape[2])
        init.uniform_(conv.bias, -bound, bound)

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]``, same dtype. ``attention_mask``
        ``[B, >= T]`` (1 = token; its last T columns are used); ``cache``: a RecurrentCache (the convolution's last
        ``conv_kernel_size - 1`` inputs ``[B, hidden_size, conv_kernel_size - 1]`` under ``layer_idx``)."""
        T = hidden_states.shape[1]
        h = hidden_states
        if attention_mask is not None:
            h = h * attention_mask[:, -T:, None].to(h.dtype)
        cu_seqlens = kwargs.get("cu_seqlens")
        if cu_seqlens is not None and cache is not None:
            raise ValueError("GatedAssociativeMemory: packed sequences (cu_seqlens) cannot be used with a cache")
        tail = cache.get(self.layer_idx, "conv") if cache is not None else None
        local, tail = self.causal_conv(h, tail, cu_seqlens=cu_seqlens)
        if cache is not None:
            cache.set(self.layer_idx, "conv", tail)
        bank = self.memory_bank.to(h.dtype)
        weights = torch.softmax((h @ bank.T).to(torch.promote_types(h.dtype, torch.float32)), dim=-1)
        retrieved = weights.to(h.dtype) @ bank
        local_gate, global_gate = self.gate(h).chunk(2, dim=-1)
        return torch.sigmoid(local_gate) * local + torch.sigmoid(global_gate) * retrieved
