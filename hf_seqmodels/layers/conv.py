import torch
import torch.nn.functional as F
from torch import nn


class ShortConvolution(nn.Module):
    """Causal depthwise 1-D convolution over time with a SiLU, carrying its last ``kernel_size - 1`` inputs for decoding."""

    def __init__(self, dim: int, kernel_size: int = 4):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"ShortConvolution: kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None):
        """x ``[B, T, D]``; tail ``[B, D, kernel_size - 1]`` (the previous inputs) or None. Returns (y, new tail)."""
        x = x.transpose(1, 2)
        width = self.kernel_size - 1
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], width)
        xp = torch.cat([tail.to(x.dtype), x], dim=-1)
        y = F.conv1d(xp, self.conv.weight, groups=x.shape[1])
        return F.silu(y).transpose(1, 2), xp[..., xp.shape[-1] - width :]
