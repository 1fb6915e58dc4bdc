"""PyTorch path of the gathered per-sample SwiGLU FFN: batched matmuls with an explicit backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import compute_dtype


def _silu_and_grad(g: torch.Tensor):
    s = torch.sigmoid(g)
    return g * s, s * (1 + g * (1 - s))


def memory_ffn_backward(x, w_gate, w_up, w_down, dy, g, u, bmm=torch.bmm):
    """Gradients of the gathered SwiGLU FFN, all in the compute dtype of the inputs (fp32 or fp64).

    ``g = x w_gate^T`` and ``u = x w_up^T`` are the saved pre-activations ``[B, T, S]``; ``bmm`` is the batched
    matmul to use (the Triton path passes its own kernel).
    """
    act, dact = _silu_and_grad(g)
    h = act * u
    dh = bmm(dy, w_down.transpose(1, 2))  # [B, T, S]
    dw_down = bmm(h.transpose(1, 2), dy)  # [B, S, d]
    dg = dh * u * dact
    du = dh * act
    dx = bmm(dg, w_gate) + bmm(du, w_up)  # [B, T, d]
    dw_gate = bmm(dg.transpose(1, 2), x)  # [B, S, d]
    dw_up = bmm(du.transpose(1, 2), x)
    return dx, dw_gate, dw_up, dw_down


class MemoryFFNTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        cdt = compute_dtype(x, w_gate, w_up, w_down)
        xc, wg, wu, wd = (t.to(cdt) for t in (x, w_gate, w_up, w_down))
        g = torch.bmm(xc, wg.transpose(1, 2))
        u = torch.bmm(xc, wu.transpose(1, 2))
        y = torch.bmm(F.silu(g) * u, wd)
        ctx.save_for_backward(x, w_gate, w_up, w_down, g, u)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, w_gate, w_up, w_down, g, u = ctx.saved_tensors
        cdt = g.dtype
        grads = memory_ffn_backward(*(t.to(cdt) for t in (x, w_gate, w_up, w_down, dy)), g, u)
        return tuple(gr.to(t.dtype) for gr, t in zip(grads, (x, w_gate, w_up, w_down)))


def memory_ffn_torch(x, w_gate, w_up, w_down):
    return MemoryFFNTorch.apply(x, w_gate, w_up, w_down)
