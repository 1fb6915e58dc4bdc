"""Run a pretrained decoder along a layer path: its layers skipped or repeated per input (CoLa, "Skip a Layer or Loop
it?", arXiv 2507.07996).

A layer path is a list of layer indices in the order they run: ``[0, 1, 3, 3, 4]`` on a 5-layer model skips layer 2
and runs layer 3 twice. ``with with_layer_path(model, path): ...`` makes ``model(...)`` and ``model.generate(...)``
run that path, and puts the model back on exit (also after an exception).

How (transformers' Llama family: Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, Qwen3, Phi-3; their decoder loops over
``model.model.layers[: config.num_hidden_layers]`` and each attention writes the cache slot ``self_attn.layer_idx``):

- ``model.model.layers`` is temporarily an ``nn.ModuleList`` with one entry per position of the path. Each entry is a
  shallow copy of the pretrained decoder layer (the same parameters, buffers and hooks; no weight is copied) whose
  attention is a shallow copy with ``layer_idx`` set to the entry's position. So **every position of the path has
  its own KV-cache slot**: a repeated layer caches the keys and values of each of its runs apart, and cached decoding
  equals the full forward pass. (The reference implementation, tianyi-lab/PoLar's ``llm_depth_router`` patches,
  calls ``self.layers[i]`` with its own ``layer_idx``: a repeated layer's second run appends its keys to the first
  run's slot, so a decoding step attends to twice the keys and the cache's length is wrong; see the tests.)
- ``config.num_hidden_layers`` becomes the path's length, and ``config.layer_types`` (Qwen2/3: full or sliding
  attention, read by the decoder's loop and by ``DynamicCache(config=...)``) the types of the path's layers, so the
  cache that ``generate`` builds has one slot per position with the right kind.

Per-row paths: pass one path per batch row (a list of lists). Rows with the same path are grouped and each group runs
as its own batch (its own cache), in the order the paths first appear; ``forward`` puts each group's logits back in
its rows (a call with per-row paths takes no ``cache``/``labels``: each group would need its own), and ``generate``
puts each group's sequences back in their rows, right-padded with the pad token to the longest (a group may stop
early at EOS). Left-padded prompts keep their positions: the same padding mask goes with each row.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from torch import nn

from hf_seqmodels.layers.families import FAMILIES


def decoder_layers(model, where: str = "with_layer_path") -> nn.ModuleList:
    """``model.model.layers`` of a supported decoder, or a ValueError naming ``model``."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if (
        not isinstance(layers, nn.ModuleList)
        or not len(layers)
        or not all(isinstance(getattr(getattr(l, "self_attn", None), "layer_idx", None), int) for l in layers)
    ):
        raise ValueError(
            f"{where}: model ({type(model).__name__}) is not a supported decoder: expected transformers' "
            f"decoder layers in model.model.layers, each with self_attn.layer_idx ({sorted(FAMILIES)} families)"
        )
    if model_type not in FAMILIES:
        raise ValueError(
            f"{where}: model ({type(model).__name__}) has model_type {model_type!r}; supported: {sorted(FAMILIES)} "
            "(Llama 2/3.x and SmolLM2 are 'llama', Qwen2.5 is 'qwen2', Phi-3 is 'phi3')"
        )
    return layers


def check_path(path, num_layers: int, name: str = "path") -> list[int]:
    """``path`` as a list of ints in ``[0, num_layers)``, or a ValueError naming ``name``."""
    if isinstance(path, torch.Tensor):
        path = path.tolist()
    if isinstance(path, (str, bytes)) or not isinstance(path, Sequence):
        raise ValueError(f"{name} must be a list of layer indices, got {type(path).__name__}")
    if len(path) == 0:
        raise ValueError(f"{name} is empty: a layer path runs at least one layer")
    out = []
    for i, idx in enumerate(path):
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ValueError(f"{name}[{i}] must be an int layer index, got {idx!r}")
        if not 0 <= idx < num_layers:
            raise ValueError(
                f"{name}[{i}] = {idx} is out of range: the model has {num_layers} layers (0..{num_layers - 1})"
            )
        out.append(int(idx))
    return out


def _slot(layer: nn.Module, position: int) -> nn.Module:
    """A shallow copy of a decoder layer whose attention writes cache slot ``position`` (weights shared)."""
    entry = copy.copy(layer)
    entry._modules = dict(layer._modules)
    attn = copy.copy(layer.self_attn)
    attn.layer_idx = position
    entry._modules["self_attn"] = attn
    return entry


@contextlib.contextmanager
def _single_path(model, path: list[int]):
    inner, config = model.model, model.config
    originals = inner.layers
    saved = {k: config.__dict__[k] for k in ("num_hidden_layers", "layer_types") if k in config.__dict__}
    layer_types = saved.get("layer_types")
    try:
        inner.layers = nn.ModuleList([_slot(originals[i], p) for p, i in enumerate(path)])
        if layer_types is not None:
            config.__dict__["layer_types"] = [layer_types[i] for i in path]
        config.__dict__["num_hidden_layers"] = len(path)
        yield model
    finally:
        inner.layers = originals
        config.__dict__.update(saved)


def _rows_of(paths: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """(path, row indices) per distinct path, in the order the paths first appear."""
    groups: dict[tuple, list[int]] = {}
    for row, p in enumerate(paths):
        groups.setdefault(tuple(p), []).append(row)
    return [(list(p), rows) for p, rows in groups.items()]


def _batch_size(args, kwargs) -> int:
    ref = kwargs.get("input_ids", args[0] if args else None)
    if ref is None:
        ref = kwargs.get("inputs_embeds")
    if ref is None:
        raise ValueError("with_layer_path (per-row paths): pass input_ids or inputs_embeds")
    return ref.shape[0]


def _take(value, rows, B):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == B:
        return value[torch.tensor(rows, device=value.device)]
    return value


@contextlib.contextmanager
def _per_row_paths(model, paths: list[list[int]]):
    groups = _rows_of(paths)
    cls = type(model)
    in_group = [False]  # generate's own forward calls, on one group's rows, run the class's forward

    def forward(*args, **kwargs):
        if in_group[0]:
            return cls.forward(model, *args, **kwargs)
        B = _batch_size(args, kwargs)
        if B != len(paths):
            raise ValueError(f"with_layer_path: {len(paths)} per-row paths but the batch has {B} rows")
        for name in ("cache", "past_key_values", "labels"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"with_layer_path: `{name}` is not supported with per-row paths (each group of rows runs apart); "
                    "call the model once per path instead"
                )
        logits = None
        for path, rows in groups:
            a = [_take(v, rows, B) for v in args]
            kw = {k: _take(v, rows, B) for k, v in kwargs.items()}
            kw["use_cache"] = False
            with _single_path(model, path):
                out = cls.forward(model, *a, **kw)
            if logits is None:
                logits = out.logits.new_zeros((B, *out.logits.shape[1:]))
            logits[torch.tensor(rows, device=logits.device)] = out.logits
        out.logits = logits
        return out

    def generate(inputs=None, **kwargs):
        ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if ids is None:
            raise ValueError("with_layer_path (per-row paths): generate needs input_ids")
        B = ids.shape[0]
        if B != len(paths):
            raise ValueError(f"with_layer_path: {len(paths)} per-row paths but the batch has {B} rows")
        if kwargs.get("return_dict_in_generate"):
            raise ValueError("with_layer_path: return_dict_in_generate is not supported with per-row paths")
        pad = kwargs.get("pad_token_id", model.generation_config.pad_token_id)
        if pad is None:
            eos = model.generation_config.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        parts = []
        for path, rows in groups:
            kw = {k: _take(v, rows, B) for k, v in kwargs.items()}
            in_group[0] = True
            try:
                with _single_path(model, path):
                    parts.append((rows, cls.generate(model, _take(ids, rows, B), **kw)))
            finally:
                in_group[0] = False
        width = max(seq.shape[1] for _, seq in parts)
        out = ids.new_full((B, width), 0 if pad is None else int(pad))
        for rows, seq in parts:
            out[torch.tensor(rows, device=out.device), : seq.shape[1]] = seq
        return out

    model.forward, model.generate = forward, generate
    try:
        yield model
    finally:
        del model.forward, model.generate


@contextlib.contextmanager
def with_layer_path(model, path):
    """Run ``model`` (a transformers Llama-family causal LM) along ``path``: one list of layer indices for every row,
    or a list of such lists, one per batch row. Restores the model on exit. See the module's doc for how."""
    layers = decoder_layers(model)
    if getattr(model, "_cola_active", False):
        raise ValueError("with_layer_path: the model already runs a layer path (nested with_layer_path)")
    if isinstance(path, torch.Tensor):
        path = path.tolist()
    per_row = isinstance(path, Sequence) and len(path) > 0 and all(isinstance(p, (list, tuple)) for p in path)
    model._cola_active = True
    try:
        if per_row:
            paths = [check_path(p, len(layers), f"path[{r}]") for r, p in enumerate(path)]
            if all(p == paths[0] for p in paths):
                ctx = _single_path(model, paths[0])
            else:
                ctx = _per_row_paths(model, paths)
        else:
            ctx = _single_path(model, check_path(path, len(layers)))
        with ctx:
            yield model
    finally:
        del model._cola_active
