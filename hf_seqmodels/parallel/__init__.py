"""Training past one device: FSDP wrap policies (:mod:`.fsdp`), context parallelism (:mod:`.context`) and its
``Trainer`` (:mod:`.trainer`, imported on first use: it imports transformers' Trainer)."""

from .context import context_parallel
from .fsdp import block_classes, save_pretrained_sharded, shard_model

__all__ = ["ContextParallelTrainer", "block_classes", "context_parallel", "shard_model", "save_pretrained_sharded"]


def __getattr__(name):
    if name == "ContextParallelTrainer":
        from .trainer import ContextParallelTrainer

        return ContextParallelTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
