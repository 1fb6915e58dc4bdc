"""Attach a memory bank to a causal LM; route, fetch, train, save and load it.

``attach_memory_bank(model, config, index, tokenizer=None, bank=None, embedder=None)`` works for this package's
models and for transformers' Llama (any model whose decoder layers sit in ``model.model.layers`` and whose layers'
``mlp`` has ``gate_proj``/``up_proj``/``down_proj``). Every chosen layer's MLP gets an extra SwiGLU branch::

    y = mlp(x) + memory_ffn(x, W_gate_m, W_up_m, W_down_m)

whose weights are the current sequence's fetched blocks (one per level, concatenated along the inner dimension).
The anchor's modules, names and weights are untouched (forward hooks; the bank is the submodule ``memory_bank``).

Which blocks a sequence fetches (``memory_paths``: LongTensor ``[B, levels]`` of cluster ids, ``-1`` = generic):

1. ``model(input_ids, memory_paths=paths)``: explicit (a forward pre-hook takes the keyword).
2. ``with use_memory_paths(model, paths): ...``: explicit, for code that cannot pass keywords.
3. otherwise routed from the input: the index's embedder on the input text (decoded with ``tokenizer``) or, for
   the anchor embedder, on the token ids directly. Without a tokenizer this is an error.

``model.generate(input_ids, memory_paths=None, ...)``: the prompt is routed once (or ``memory_paths`` used), its
blocks are fetched at prefill and every decode step reuses them (a forward with a non-empty cache re-uses the
fetched weights). In training (``model.training``) each sample uses the generic memory instead of its path with
probability ``config.generic_memory_prob``.

Training: :func:`memory_parameter_groups` / :func:`memory_optimizer` (AdamW; the bank at ``config.memory_lr`` and
``config.memory_weight_decay``, the anchor, if co-trained, at ``anchor_lr``). Blocks not fetched in a step get no
gradient (``None``), hence no update and no decay. Under ``Trainer``: ``Trainer(model, ..., optimizers=
(memory_optimizer(model), None))``; batches may carry a ``memory_paths`` column (``remove_unused_columns=False`` for
``datasets.Dataset``), or attach with a tokenizer to route inside the model.

Save / load: ``model.save_pretrained(out)`` writes the anchor exactly as without memory (its own files, no bank
keys) plus ``memory_config.json``, ``memory_index.{json,safetensors}`` and the bank shards.
``load_memory_model(out)`` loads the anchor, checks and opens the bank (blocks stay on disk) and re-attaches.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import types

import torch

from hf_seqmodels.kernels.memory import memory_ffn

from .bank import MemoryBank, MemoryBankError
from .config import MemoryBankConfig
from .embedders import AnchorEmbedder
from .index import MemoryIndex

_CACHE_NAMES = ("cache", "past_key_values")


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


def _decoder_layers(model):
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if layers is not None and len(layers) and all(hasattr(l, "mlp") for l in layers):
            mlp = layers[0].mlp
            if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
                return layers
    raise ValueError(
        f"attach_memory_bank: {type(model).__name__} has no Llama-style decoder layers (model.model.layers[i].mlp "
        "with gate_proj/up_proj/down_proj)"
    )


def _state(model) -> MemoryState:
    st = getattr(model, "_memory_state", None)
    if st is None:
        raise ValueError(f"{type(model).__name__} has no memory bank attached (attach_memory_bank first)")
    return st


def _check_paths(paths, config, batch=None):
    if not isinstance(paths, torch.Tensor):
        paths = torch.as_tensor(paths)
    if paths.dim() == 1:
        paths = paths.unsqueeze(0)
    if paths.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"memory_paths must be an integer tensor [B, levels], got dtype {paths.dtype}")
    paths = paths.long().cpu()
    if paths.dim() != 2 or paths.shape[1] != config.levels:
        raise ValueError(f"memory_paths must be [B, {config.levels}] (one cluster id per level), got {tuple(paths.shape)}")
    for l in range(config.levels):
        col = paths[:, l]
        n = config.clusters(l + 1)
        if bool(((col < -1) | (col >= n)).any()):
            raise ValueError(f"memory_paths: level {l + 1} ids must be in [0, {n}) or -1 (generic), got "
                             f"{col.tolist()}")
    if batch is not None and paths.shape[0] != batch:
        if paths.shape[0] and batch % paths.shape[0] == 0:  # e.g. num_return_sequences expanded the batch
            paths = paths.repeat_interleave(batch // paths.shape[0], dim=0)
        else:
            raise ValueError(f"memory_paths has {paths.shape[0]} rows but the batch has {batch} sequences")
    return paths


def route_input_ids(model, input_ids, attention_mask=None) -> torch.Tensor:
    """Paths ``[B, levels]`` for token ids, with the attached index's embedder (decoding with the tokenizer)."""
    st = _state(model)
    emb = st.index.embedder(model, st.tokenizer)
    if hasattr(emb, "embed_ids"):
        return st.index.route_embeddings(emb.embed_ids(input_ids, attention_mask))
    if st.tokenizer is None:
        raise ValueError(
            "the model was called without `memory_paths` and cannot route its input: the index's embedder "
            f"{st.index.embedder_name!r} needs text; attach_memory_bank(..., tokenizer=tok) to route token ids, or pass "
            "memory_paths=index.route(texts)"
        )
    ids = input_ids.tolist()
    if attention_mask is not None:
        ids = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(ids, attention_mask.tolist())]
    texts = st.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return st.index.route(texts)


def _past_length(kwargs):
    for name in _CACHE_NAMES:
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0


def _pre_hook(model, args, kwargs):
    st = model._memory_state
    given = kwargs.pop("memory_paths", None)
    if not st.enabled:
        return args, kwargs
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
    if ref is None:
        raise ValueError("memory model: pass `input_ids` or `inputs_embeds`")
    B = ref.shape[0]
    if given is None:
        given = st.pending
    if _past_length(kwargs) > 0 and st.paths is not None and st.paths.shape[0] == B:
        if given is None or torch.equal(_check_paths(given, st.config, B), st.source):
            return args, kwargs  # decode step: reuse the prefill's fetched blocks
    if given is not None:
        paths = _check_paths(given, st.config, B)
    else:
        if input_ids is None:
            raise ValueError("memory model: with `inputs_embeds`, pass `memory_paths` (nothing to route)")
        if callable(getattr(model, "check_inputs", None)):  # this package's models: bad ids named before routing
            model.check_inputs(input_ids, None)
        paths = _check_paths(route_input_ids(model, input_ids, kwargs.get("attention_mask")), st.config, B)
    st.source = paths
    if model.training and st.config.generic_memory_prob > 0:
        generic = torch.rand(B) < st.config.generic_memory_prob
        paths = paths.masked_fill(generic.unsqueeze(1), -1)
    st.paths = paths
    # fetch every layer's blocks here, outside any (gradient-checkpointed) layer, so the autograd graph from the
    # fetched weights to the bank's parameters exists whatever recomputation the layers do
    ref_param = model.get_input_embeddings().weight
    bank = model.memory_bank
    st.fetched = {i: bank.fetch(i, paths, device=ref_param.device, dtype=ref_param.dtype) for i in bank.layer_ids}
    st.fetch_count += 1
    return args, kwargs


def _make_mlp_hook(model, layer_idx):
    def hook(module, args, output):
        st = model._memory_state
        if not st.enabled:
            return output
        if st.paths is None:
            raise ValueError("memory model: no memory paths set (call the top-level model, not its submodules)")
        x = args[0]
        if x.shape[0] != st.paths.shape[0]:
            raise ValueError(f"memory model: layer {layer_idx} sees a batch of {x.shape[0]} but {st.paths.shape[0]} "
                             "memory paths are set")
        w = st.fetched[layer_idx]
        if w[0].dtype != x.dtype or w[0].device != x.device:
            w = tuple(t.to(device=x.device, dtype=x.dtype) for t in w)
        return output + memory_ffn(x, *w)

    return hook


@contextlib.contextmanager
def use_memory_paths(model, paths):
    """Within the block, forwards without ``memory_paths`` use ``paths`` ([B, levels]; -1 rows: generic)."""
    st = _state(model)
    before = st.pending
    st.pending = None if paths is None else _check_paths(paths, st.config)
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


def _forward_with_memory_signature(model):
    """The model's own forward, advertising a ``memory_paths`` keyword (Trainer keeps only batch columns that the
    forward signature names; generate() validates its keywords the same way). The pre-hook consumes the keyword."""
    orig = model.forward
    sig = inspect.signature(orig)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    var_kw = [p for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD]
    extra = inspect.Parameter("memory_paths", inspect.Parameter.KEYWORD_ONLY, default=None)

    @functools.wraps(orig)
    def forward(*args, **kwargs):
        kwargs.pop("memory_paths", None)
        return orig(*args, **kwargs)

    forward.__signature__ = sig.replace(parameters=params + [extra] + var_kw)
    return forward


def _generate(self, inputs=None, *args, memory_paths=None, **kwargs):
    st = self._memory_state
    if memory_paths is None and st.pending is None and st.enabled:
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if ids is None:
            raise ValueError("generate with memory: pass input_ids or memory_paths")
        memory_paths = route_input_ids(self, ids, kwargs.get("attention_mask"))
    paths = memory_paths if memory_paths is not None else st.pending
    with use_memory_paths(self, paths):
        return type(self).generate(self, inputs, *args, **kwargs)


def _save_pretrained(self, save_directory, *args, **kwargs):
    state_dict = kwargs.pop("state_dict", None)
    if state_dict is None:
        state_dict = self.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("memory_bank.")}
    type(self).save_pretrained(self, save_directory, *args, state_dict=state_dict, **kwargs)
    if kwargs.get("is_main_process", True):
        save_memory(self, save_directory)


def save_memory(model, directory, max_shard_size: int = 2 << 30, part_size: int = 256 << 20) -> None:
    """Write the bank shards, memory config and index of ``model`` into ``directory`` (the anchor not).

    ``max_shard_size``: bytes per shard file; ``part_size``: bytes per stored tensor (clusters are grouped into
    parts of at most this size; a part is the unit a shard holds)."""
    st = _state(model)
    st.config.save_pretrained(directory)
    st.index.save_pretrained(directory)
    model.memory_bank.save_pretrained(directory, max_shard_size=max_shard_size, part_size=part_size)


def _check_index(config: MemoryBankConfig, index: MemoryIndex, where="attach_memory_bank"):
    if index.levels != config.levels:
        raise ValueError(f"{where}: the index has {index.levels} levels but block_sizes {config.block_sizes} "
                         f"ask for {config.levels}")
    if index.branching != config.branching:
        raise ValueError(f"{where}: the index has branching {index.branching} but the config {config.branching}")
    if config.embedder is not None and config.embedder != index.embedder_name:
        raise ValueError(f"{where}: the config expects embedder {config.embedder!r} but the index was built with "
                         f"{index.embedder_name!r} (dim {index.dim})")


def attach_memory_bank(model, config: MemoryBankConfig, index: MemoryIndex, tokenizer=None, bank=None,
                       embedder=None):
    """Give ``model`` a hierarchical FFN memory (in place; returns ``model``). See the module docstring."""
    if getattr(model, "_memory_state", None) is not None:
        raise ValueError("attach_memory_bank: this model already has a memory bank")
    if not isinstance(config, MemoryBankConfig):
        raise TypeError(f"attach_memory_bank: `config` must be a MemoryBankConfig, got {type(config).__name__}")
    if not isinstance(index, MemoryIndex):
        raise TypeError(f"attach_memory_bank: `index` must be a MemoryIndex, got {type(index).__name__}")
    _check_index(config, index)
    if config.embedder is None:  # record it: a model saved with this bank only routes with this embedder
        config = dataclasses.replace(config, embedder=index.embedder_name)
    layers = _decoder_layers(model)
    layer_ids = config.layer_indices(len(layers))
    d = layers[0].mlp.gate_proj.in_features
    if index.embedder_spec.get("type") == "anchor-meanpool":
        want = AnchorEmbedder(model, tokenizer)
        if want.name != index.embedder_name:
            raise ValueError(f"attach_memory_bank: the index was built with {index.embedder_name!r} (dim {index.dim}) "
                             f"but this model's embedding is {want.name!r} (dim {want.dim})")
        index.set_embedder(want)
    if embedder is not None:
        index.set_embedder(embedder)
    param = next(model.parameters())
    if bank is None:
        bank = MemoryBank(config, d, layer_ids, dtype=param.dtype, device=param.device)
    else:
        if bank.hidden_size != d:
            raise MemoryBankError(f"attach_memory_bank: the bank's blocks are {bank.hidden_size} wide, the model's MLPs "
                                  f"take {d}")
        if list(bank.layer_ids) != list(layer_ids):
            raise MemoryBankError(f"attach_memory_bank: the bank covers layers {bank.layer_ids}, the config selects "
                                  f"{layer_ids} of {len(layers)}")
        if tuple(bank.config.block_sizes) != config.block_sizes or bank.config.branching != config.branching:
            raise MemoryBankError(f"attach_memory_bank: the bank has block_sizes {bank.config.block_sizes} / branching "
                                  f"{bank.config.branching}, the config {config.block_sizes} / {config.branching}")
    if config.freeze_anchor:
        for p in model.parameters():
            p.requires_grad_(False)
    model.add_module("memory_bank", bank)
    st = MemoryState(model, config, index, tokenizer)
    model._memory_state = st
    st.handles.append(model.register_forward_pre_hook(_pre_hook, with_kwargs=True))
    for i in layer_ids:
        st.handles.append(layers[i].mlp.register_forward_hook(_make_mlp_hook(model, i)))
    model.forward = _forward_with_memory_signature(model)
    model.generate = types.MethodType(_generate, model)
    model.save_pretrained = types.MethodType(_save_pretrained, model)
    model.memory_config, model.memory_index = config, index
    return model


def detach_memory_bank(model):
    """Remove the memory (hooks, bank, patched methods); returns the bare anchor."""
    st = _state(model)
    for h in st.handles:
        h.remove()
    del model._modules["memory_bank"]
    for name in ("forward", "generate", "save_pretrained", "memory_config", "memory_index", "_memory_state"):
        model.__dict__.pop(name, None)
    return model


def memory_parameter_groups(model, lr=None, weight_decay=None, anchor_lr=None, anchor_weight_decay=0.0):
    """Optimizer parameter groups: the bank's blocks (``lr``/``weight_decay``, default the config's memory values)
    and, when the anchor is co-trained, its trainable parameters (``anchor_lr``, default ``lr``)."""
    st = _state(model)
    if not model.memory_bank.trainable:
        raise ValueError("memory_parameter_groups: the bank was loaded read-only from disk; load_memory_model(..., "
                         "trainable=True) to train it")
    lr = st.config.memory_lr if lr is None else lr
    wd = st.config.memory_weight_decay if weight_decay is None else weight_decay
    groups = [{"params": list(model.memory_bank.parameters()), "lr": lr, "weight_decay": wd, "name": "memory"}]
    anchor = [p for n, p in model.named_parameters() if not n.startswith("memory_bank.") and p.requires_grad]
    if anchor:
        groups.append({"params": anchor, "lr": lr if anchor_lr is None else anchor_lr,
                       "weight_decay": anchor_weight_decay, "name": "anchor"})
    return groups


def memory_optimizer(model, lr=None, weight_decay=None, anchor_lr=None, anchor_weight_decay=0.0, **adamw_kwargs):
    """``torch.optim.AdamW`` over :func:`memory_parameter_groups` (unfetched blocks: no update, no decay)."""
    groups = memory_parameter_groups(model, lr, weight_decay, anchor_lr, anchor_weight_decay)
    return torch.optim.AdamW(groups, **adamw_kwargs)


def load_memory_model(path, model_class=None, tokenizer=None, trainable=False, reader="pread", verify=True,
                      embedder=None, **from_pretrained_kwargs):
    """Load a model saved with memory: anchor + bank (on disk unless ``trainable``) + index, re-attached.

    Everything about the memory is checked before the anchor is loaded; nothing is ever written.
    """
    import hf_seqmodels  # noqa: F401  (registers this package's architectures)

    config = MemoryBankConfig.from_pretrained(path)
    index = MemoryIndex.from_pretrained(path)
    _check_index(config, index, where=f"load_memory_model({path})")
    meta = MemoryBank.read_index(path)
    MemoryBank.check_files(path, meta, config, verify=verify)
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    from_pretrained_kwargs.setdefault("use_safetensors", True)  # never unpickle
    model = model_class.from_pretrained(path, **from_pretrained_kwargs)
    layers = _decoder_layers(model)
    d = layers[0].mlp.gate_proj.in_features
    bank = MemoryBank.from_pretrained(path, config, hidden_size=d, layer_ids=config.layer_indices(len(layers)),
                                      trainable=trainable, reader=reader, verify=False,
                                      device=next(model.parameters()).device if trainable else None)
    return attach_memory_bank(model, config, index, tokenizer=tokenizer, bank=bank, embedder=embedder)
