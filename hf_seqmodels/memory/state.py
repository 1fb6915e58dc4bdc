"""The per-model memory state and its switches, imported by :mod:`.embedders` and :mod:`.attach` alike.

:func:`~hf_seqmodels.memory.attach.attach_memory_bank` puts a :class:`MemoryState` on the model
(``model._memory_state``); the forward hooks read it, and :func:`use_memory_paths` / :func:`memory_disabled` change
it for the length of a ``with`` block. This module imports nothing else of the memory package.
"""

from __future__ import annotations

import contextlib

import torch


class MemoryState:
    """Per-model routing state: current paths, fetched weights, switches."""

    def __init__(self, model, config, index, tokenizer):
        self.config, self.index, self.tokenizer = config, index, tokenizer
        self.enabled = True
        self.paths = None  # paths in use (after generic replacement)
        self.source = None  # paths as given or routed
        self.pending = None  # paths set by use_memory_paths() / generate()
        self.fetched = {}
        self.handles = []
        self.fetch_count = 0


def memory_state(model) -> MemoryState:
    """The model's :class:`MemoryState`; a clear error when no bank is attached."""
    st = getattr(model, "_memory_state", None)
    if st is None:
        raise ValueError(f"{type(model).__name__} has no memory bank attached (attach_memory_bank first)")
    return st


def check_paths(paths, config, batch=None) -> torch.Tensor:
    """``memory_paths`` as a CPU LongTensor ``[B, levels]`` (a 1-D path: one row), each level's ids in
    ``[0, clusters)`` or -1 (generic). With ``batch``, ``B`` must be ``batch`` or divide it (rows repeated, as
    ``num_return_sequences`` expands a batch)."""
    if not isinstance(paths, torch.Tensor):
        paths = torch.as_tensor(paths)
    if paths.dim() == 1:
        paths = paths.unsqueeze(0)
    if paths.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"memory_paths must be an integer tensor [B, levels], got dtype {paths.dtype}")
    paths = paths.long().cpu()
    if paths.dim() != 2 or paths.shape[1] != config.levels:
        raise ValueError(
            f"memory_paths must be [B, {config.levels}] (one cluster id per level), got {tuple(paths.shape)}"
        )
    for l in range(config.levels):
        col = paths[:, l]
        n = config.clusters(l + 1)
        if bool(((col < -1) | (col >= n)).any()):
            raise ValueError(f"memory_paths: level {l + 1} ids must be in [0, {n}) or -1 (generic), got {col.tolist()}")
    if batch is not None and paths.shape[0] != batch:
        if paths.shape[0] and batch % paths.shape[0] == 0:  # e.g. num_return_sequences expanded the batch
            paths = paths.repeat_interleave(batch // paths.shape[0], dim=0)
        else:
            raise ValueError(f"memory_paths has {paths.shape[0]} rows but the batch has {batch} sequences")
    return paths


@contextlib.contextmanager
def use_memory_paths(model, paths):
    """Within the block, forwards without ``memory_paths`` use ``paths`` ([B, levels]; -1 rows: generic)."""
    st = memory_state(model)
    before = st.pending
    st.pending = None if paths is None else check_paths(paths, st.config)
    try:
        yield
    finally:
        st.pending = before


@contextlib.contextmanager
def memory_disabled(model):
    """Within the block the model runs as the bare anchor (no memory branch)."""
    st = getattr(model, "_memory_state", None)
    if st is None:
        yield
        return
    before = st.enabled
    st.enabled = False
    try:
        yield
    finally:
        st.enabled = before
