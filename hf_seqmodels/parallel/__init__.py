"""Training past one device: FSDP wrap policies (:mod:`.fsdp`) and context parallelism (:mod:`.context`)."""

from .context import context_parallel
from .fsdp import block_classes, save_pretrained_sharded, shard_model

__all__ = ["block_classes", "context_parallel", "shard_model", "save_pretrained_sharded"]
