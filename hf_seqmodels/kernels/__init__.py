"""hf_seqmodels.kernels: the shared engine (torch + triton only, never transformers).

Every op has a Triton kernel for CUDA tensors and a PyTorch implementation for any device, chosen by device;
``HF_SEQMODELS_BACKEND=torch|triton`` forces one.
"""

from ._dispatch import select_backend
from .attention import sliding_window_attention, sliding_window_decode
from .gla import chunk_gla, fused_recurrent_gla
from .memory import memory_ffn
from .pararnn import NewtonConvergenceError, NewtonInfo, adjoint_solve, newton_solve, sequential_solve
from .scan import block2_scan, linear_scan

__all__ = [
    "chunk_gla",
    "fused_recurrent_gla",
    "memory_ffn",
    "linear_scan",
    "block2_scan",
    "newton_solve",
    "adjoint_solve",
    "sequential_solve",
    "NewtonInfo",
    "NewtonConvergenceError",
    "sliding_window_attention",
    "sliding_window_decode",
    "select_backend",
]
