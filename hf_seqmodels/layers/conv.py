import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels import context_parallel

CONV_INITS = ("normal", "identity")


class _DepthwiseConv1d(nn.Conv1d):
    """``nn.Conv1d`` whose weight init the models' ``_init_weights`` finishes (``init_extra_weights``): ``"normal"``
    keeps transformers' normal(0, initializer_range); ``"identity"`` passes the current input through (weight 1 on
    the current tap, 0 on the earlier ones)."""

    def init_extra_weights(self, config=None):
        # transformers.initialization skips tensors already loaded from a checkpoint
        if self.init_mode == "identity":
            identity = torch.zeros_like(self.weight)
            identity[..., -1] = 1.0
            init.copy_(self.weight, identity)


class ShortConvolution(nn.Module):
    """Causal depthwise 1-D convolution over time with a SiLU, carrying its last ``kernel_size - 1`` inputs for
    decoding.

    ``init``: ``"normal"`` (transformers' normal(0, initializer_range), as fla's models) or ``"identity"`` (the
    current input passes through at init). The normal init shrinks the signal ~50x at initializer_range 0.02, which a
    nonlinear cell behind it cannot afford (its gates then see no input; see ParaRNNConfig.conv_init).
    ``bias``: a per-channel bias; ``activation=False``: no SiLU (a plain causal depthwise convolution, as GAM's)."""

    def __init__(
        self, dim: int, kernel_size: int = 4, init: str = "normal", bias: bool = False, activation: bool = True
    ):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"ShortConvolution: kernel_size must be >= 1, got {kernel_size}")
        if init not in CONV_INITS:
            raise ValueError(f"ShortConvolution: init must be one of {CONV_INITS}, got {init!r}")
        self.kernel_size = kernel_size
        self.activation = activation
        self.conv = _DepthwiseConv1d(dim, dim, kernel_size, groups=dim, bias=bias)
        self.conv.init_mode = init
        self.conv.init_extra_weights()

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None, cu_seqlens=None):
        """x ``[B, T, D]``; tail ``[B, D, kernel_size - 1]`` (the previous inputs) or None. Returns (y, new tail).

        ``cu_seqlens`` (offsets of packed sequences, batch 1; no ``tail``): no tap reaches across a sequence start.
        The returned tail is then None."""
        if cu_seqlens is not None:
            return self._packed(x, tail, cu_seqlens), None
        x = x.transpose(1, 2)
        width = self.kernel_size - 1
        if tail is None and width and context_parallel.active():  # the sequence split over ranks: a halo
            if x.shape[-1] < width:
                raise ValueError(
                    f"ShortConvolution under context_parallel: this rank's slice has {x.shape[-1]} positions, fewer "
                    f"than the kernel's {width} earlier taps; give every rank >= {width} positions"
                )
            tail = context_parallel.exchange_halo(x[..., x.shape[-1] - width :])
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], width)
        xp = torch.cat([tail.to(x.dtype), x], dim=-1)
        y = F.conv1d(xp, self.conv.weight, self.conv.bias, groups=x.shape[1])
        return self._act(y).transpose(1, 2), xp[..., xp.shape[-1] - width :]

    def _act(self, y):
        return F.silu(y) if self.activation else y

    def _packed(self, x, tail, cu_seqlens):
        from hf_seqmodels.kernels._varlen import check_cu_seqlens

        packed = check_cu_seqlens("ShortConvolution", cu_seqlens, x.shape[0], x.shape[1])
        if tail is not None:
            raise ValueError(
                "ShortConvolution: packed sequences (`cu_seqlens`) start from an empty state; pass no `tail`"
            )
        pos = packed.positions(x.device)  # place of each token in its sequence
        w = self.conv.weight[:, 0].to(x.dtype)  # [D, W]; tap j reads the input W - 1 - j steps back
        W = self.kernel_size
        y = x * w[:, W - 1]
        for lag in range(1, min(W, x.shape[1])):
            shifted = F.pad(x[:, :-lag], (0, 0, lag, 0))
            y = y + shifted * (pos >= lag).to(x.dtype)[None, :, None] * w[:, W - 1 - lag]
        return self._act(y if self.conv.bias is None else y + self.conv.bias.to(x.dtype))
