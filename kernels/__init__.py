"""hf_seqmodels.kernels: the shared engine (torch + triton only, never transformers).

Every op has a Triton kernel for CUDA tensors and a PyTorch implementation for any device, chosen by device;
``HF_SEQMODELS_BACKEND=torch|triton`` forces one.
"""
from ._dispatch import select_backend
from .gla import chunk_gla, fused_recurrent_gla

__all__ = ["chunk_gla", "fused_recurrent_gla", "select_backend"]
