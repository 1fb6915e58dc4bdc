import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

__all__ = ["RMSNorm", "GatedRMSNorm"]


class RMSNorm(LlamaRMSNorm):
    """transformers' ``LlamaRMSNorm`` (statistics in fp32, result in the input's dtype), except that fp64 inputs
    are normalized in fp64 (Llama's casts them to fp32 and back, a ~1e-7 error in fp64 checks)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype != torch.float64:
            return super().forward(hidden_states)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


class GatedRMSNorm(nn.Module):
    """RMSNorm of ``x`` times ``swish(gate)``: the output normalization of GLA-style mixers."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x, gate ``[..., hidden_size]`` (any float dtype; normalized in fp32 at least) -> ``[..., hidden_size]``
        in ``x``'s dtype."""
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (self.weight * x.to(dtype)) * F.silu(gate)
