from .chunk_torch import chunk_plstm

__all__ = ["chunk_plstm"]
