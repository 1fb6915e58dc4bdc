"""Gathered per-sample SwiGLU FFN (hierarchical memory banks): ``memory_ffn``.

Each sample ``b`` of a batch applies its own fetched FFN weights::

    y[b] = (silu(x[b] @ w_gate[b].T) * (x[b] @ w_up[b].T)) @ w_down[b]

with ``x [B, T, d]`` and ``w_gate, w_up, w_down [B, S, d]`` (all three in the same ``[S, d]`` layout, so the
blocks of every memory level concatenate along ``S``; ``w_down[b]`` is the transpose of an ``nn.Linear(S, d)``
weight). A Triton kernel serves CUDA tensors, PyTorch everything else; ``HF_SEQMODELS_BACKEND`` forces one.
"""

from .ops import memory_ffn

__all__ = ["memory_ffn"]
