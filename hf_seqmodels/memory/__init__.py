"""Hierarchical parametric memory banks (Pouransari et al., 2025, arXiv 2510.02375) for any Llama-style causal LM.

A small anchor model fetches, per sequence, a few context-dependent FFN blocks from a large bank organized by a
hierarchical clustering of the training data: one block per level on the sequence's cluster path, concatenated onto
each chosen layer's SwiGLU inner dimension (``y = mlp(x) + W_down_m(silu(W_gate_m x) * W_up_m x)``).

Public API::

    from hf_seqmodels.memory import MemoryBankConfig, build_memory_index, attach_memory_bank, load_memory_model

    index = build_memory_index(texts, levels=3, branching=16)          # embed windows, hierarchical k-means
    paths = index.route(texts)                                          # LongTensor [N, levels]
    model = attach_memory_bank(model, MemoryBankConfig(block_sizes=(64, 16, 4)), index, tokenizer=tok)
    out = model(input_ids, memory_paths=paths[:B], labels=input_ids)   # or routed from the text via tok
    opt = memory_optimizer(model)                                       # unfetched blocks: no update, no decay
    model.generate(prompt_ids, max_new_tokens=20)                       # prompt routed once, blocks reused
    model.save_pretrained(out_dir)                                      # anchor files + bank shards + index
    model = load_memory_model(out_dir, tokenizer=tok)                   # bank stays on disk, blocks read on fetch
    model = AutoModelForCausalLM.from_pretrained(out_dir, tokenizer=tok)  # the same (config.json says so)

Modules: :mod:`.config` (sizes), :mod:`.state` (the per-model state, ``use_memory_paths``, ``memory_disabled``),
:mod:`.embedders`, :mod:`.index` (clustering, routing), :mod:`.bank` (storage), :mod:`.folder` (what a saved
folder's config.json says), :mod:`.attach` (hooks, training helpers, save/load, the Auto loader); each imports only
those named before it. The per-sample FFN is
:func:`hf_seqmodels.kernels.memory.memory_ffn` (Triton on CUDA, PyTorch elsewhere).
"""

from .attach import (
    MemoryModelForCausalLM,
    attach_memory_bank,
    detach_memory_bank,
    load_memory_model,
    memory_optimizer,
    memory_parameter_groups,
    register_memory_auto_classes,
    route_input_ids,
    save_memory,
)
from .bank import MemoryBank, MemoryBankError
from .config import MemoryBankConfig
from .embedders import AnchorEmbedder, HashedNgramEmbedder, MiniLMEmbedder
from .folder import MemoryModelConfig
from .index import GENERIC, MemoryIndex, build_memory_index
from .state import memory_disabled, use_memory_paths

__all__ = [
    "MemoryBankConfig",
    "MemoryIndex",
    "build_memory_index",
    "MemoryBank",
    "MemoryBankError",
    "attach_memory_bank",
    "detach_memory_bank",
    "load_memory_model",
    "MemoryModelConfig",
    "MemoryModelForCausalLM",
    "register_memory_auto_classes",
    "save_memory",
    "memory_optimizer",
    "memory_parameter_groups",
    "use_memory_paths",
    "memory_disabled",
    "route_input_ids",
    "HashedNgramEmbedder",
    "AnchorEmbedder",
    "MiniLMEmbedder",
    "GENERIC",
]
