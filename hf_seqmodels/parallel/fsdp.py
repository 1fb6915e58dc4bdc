"""FSDP wrap policies: torch's ``fully_shard`` (FSDP2) applied to every block class a model names in
``_no_split_modules`` (the attribute accelerate and transformers read to keep a block on one device), then to the
root. Runs wherever torch.distributed does, the CPU with gloo included."""

from __future__ import annotations

from torch import nn


def block_classes(model: nn.Module) -> tuple[type, ...]:
    """The classes of ``model``'s submodules whose names appear in ``model._no_split_modules`` (one unit of FSDP each).
    Raises ValueError if the attribute is missing or names no submodule's class (the policy would shard nothing)."""
    names = getattr(model, "_no_split_modules", None)
    if not names:
        raise ValueError(f"{type(model).__name__} has no `_no_split_modules`: no block classes to shard")
    found = {type(m) for m in model.modules() if type(m).__name__ in set(names)}
    if not found:
        raise ValueError(
            f"{type(model).__name__}._no_split_modules = {list(names)} names no submodule's class: nothing to shard"
        )
    return tuple(sorted(found, key=lambda c: c.__name__))


def shard_model(model: nn.Module, mesh=None, **fully_shard_kwargs) -> nn.Module:
    """Shard ``model`` over the ranks of ``mesh`` (default: every rank of the default process group) with torch's
    ``fully_shard``: each block named by ``_no_split_modules`` is its own unit (its parameters gathered just before it
    runs and freed after), and the root holds the rest (embeddings, a tied head, final norm). ``fully_shard_kwargs``
    (``reshard_after_forward``, ``mp_policy``, ``offload_policy``) go to every call. The model is changed in place
    and returned; its parameters become DTensors (``model.state_dict()`` holds shards: save with
    :func:`save_pretrained_sharded`).

    A block nested in another block is sharded once, with its outer block (H-Net's stages hold their blocks in
    lists, never in another block)."""
    from torch.distributed.fsdp import fully_shard

    if getattr(model, "_memory_state", None) is not None:
        # FSDP2 reduce-scatters only the parameters that have a gradient: ranks whose batches fetched different
        # blocks would send buffers of different sizes (a collective mismatch), and zero gradients instead would
        # decay the unfetched blocks.
        raise ValueError(
            "shard_model: this model has a memory bank, whose blocks get gradients only where a rank's batch fetched "
            "them; FSDP cannot reduce them. Train it with DDP and find_unused_parameters=True (the bank's blocks are "
            "small; the anchor is frozen by default)"
        )
    classes = block_classes(model)
    blocks = [m for m in model.modules() if isinstance(m, classes)]
    inner = {id(sub) for b in blocks for sub in b.modules() if sub is not b}
    for block in blocks:
        if id(block) not in inner:
            fully_shard(block, mesh=mesh, **fully_shard_kwargs)
    fully_shard(model, mesh=mesh, **fully_shard_kwargs)
    return model


def save_pretrained_sharded(model, save_directory, **save_pretrained_kwargs) -> None:
    """``save_pretrained`` for a model sharded by :func:`shard_model` (collective: call it in every rank). Each
    parameter's shards are gathered into rank 0's CPU memory (``get_model_state_dict`` with
    ``full_state_dict=True, cpu_offload=True``; the other ranks hold nothing), and rank 0 writes an ordinary
    safetensors folder that ``from_pretrained`` loads into any number of processes, one included. (torch's own sharded
    format, ``torch.distributed.checkpoint``, keeps its metadata as a pickle, which this package never loads.)"""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if not dist.is_initialized() or dist.get_rank() == 0:
        model.save_pretrained(save_directory, state_dict=state, **save_pretrained_kwargs)
    if dist.is_initialized():
        dist.barrier()
