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

Save / load: ``model.save_pretrained(out)`` writes the anchor's files (no bank keys in its weights) plus
``memory_config.json``, ``memory_index.{json,safetensors}`` and the bank shards, and marks config.json as a memory
model's (:mod:`.folder`: ``model_type`` ``hf_seqmodels_memory``, the anchor's in a ``memory_bank`` entry), so the
folder never loads as the bare anchor by accident. ``load_memory_model(out)`` loads the anchor, checks and opens the
bank (blocks stay on disk) and re-attaches; ``AutoModelForCausalLM.from_pretrained(out)`` and ``pipeline`` call it
(:class:`MemoryModelForCausalLM`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import textwrap
import types

import torch

from hf_seqmodels.compat import CACHE_NAMES
from hf_seqmodels.kernels.memory import memory_ffn

from .bank import MemoryBank, MemoryBankError
from .config import MemoryBankConfig
from .embedders import AnchorEmbedder
from .folder import MEMORY_MODEL_TYPE, MemoryModelConfig, is_memory_folder, mark_memory_folder
from .index import MemoryIndex
from .state import MemoryState, check_paths, memory_state, use_memory_paths


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


def route_input_ids(model, input_ids, attention_mask=None) -> torch.Tensor:
    """Paths ``[B, levels]`` for token ids, with the attached index's embedder (decoding with the tokenizer)."""
    st = memory_state(model)
    emb = st.index.embedder(model, st.tokenizer)
    if hasattr(emb, "embed_ids"):
        return st.index.route_embeddings(emb.embed_ids(input_ids, attention_mask))
    if st.tokenizer is None:
        raise ValueError(
            "the model was called without `memory_paths` and cannot route its input: the index's embedder "
            f"{st.index.embedder_name!r} needs text; attach_memory_bank(..., tokenizer=tok) to route token ids, or "
            "pass "
            "memory_paths=index.route(texts)"
        )
    ids = input_ids.tolist()
    if attention_mask is not None:
        ids = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(ids, attention_mask.tolist())]
    texts = st.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return st.index.route(texts)


def _past_length(kwargs):
    for name in CACHE_NAMES:
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
        if given is None or torch.equal(check_paths(given, st.config, B), st.source):
            return args, kwargs  # decode step: reuse the prefill's fetched blocks
    if given is not None:
        paths = check_paths(given, st.config, B)
    else:
        if input_ids is None:
            raise ValueError("memory model: with `inputs_embeds`, pass `memory_paths` (nothing to route)")
        if callable(getattr(model, "check_inputs", None)):  # this package's models: bad ids named before routing
            model.check_inputs(input_ids, None)
        paths = check_paths(route_input_ids(model, input_ids, kwargs.get("attention_mask")), st.config, B)
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
            raise ValueError(
                f"memory model: layer {layer_idx} sees a batch of {x.shape[0]} but {st.paths.shape[0]} "
                "memory paths are set"
            )
        w = st.fetched[layer_idx]
        if w[0].dtype != x.dtype or w[0].device != x.device:
            w = tuple(t.to(device=x.device, dtype=x.dtype) for t in w)
        return output + memory_ffn(x, *w)

    return hook


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
        _write_memory_model_files(self, save_directory)


def _write_memory_model_files(model, directory):
    """config.json marked as a memory model's (:mod:`.folder`), the loader files, the card's memory section."""
    from hf_seqmodels import hub

    refs = hub.write_loader_files(directory, MemoryModelConfig, MemoryModelForCausalLM)
    mark_memory_folder(directory, refs["MemoryModelConfig"], refs["MemoryModelForCausalLM"])
    extra = dict(hub.card_data_of(model))
    anchor_type = model.config.model_type
    name = model.config.name_or_path
    if (
        not anchor_type.startswith("hf_seqmodels_")
        and "base_model" not in extra
        and name
        and os.path.abspath(name) != os.path.abspath(directory)
    ):
        extra["base_model"] = name  # another library's anchor (a Llama): it came from there
    hub.write_card(model, directory, extra, section=_card_section(model, anchor_type))


def _card_section(model, anchor_type):
    cfg = memory_state(model).config
    layers = _decoder_layers(model)
    d, n = layers[0].mlp.gate_proj.in_features, len(layers)
    anchor = type(model).__name__
    about = (
        f"This is a `{anchor}` anchor with a hierarchical FFN memory bank (hf-seqmodels; Pouransari et al., 2025, "
        "arXiv 2510.02375): per sequence it fetches one block per level on the sequence's cluster path (block sizes "
        f"{list(cfg.block_sizes)}, branching {cfg.branching}, layers {cfg.layer_indices(n)}), "
        f"{cfg.fetched_parameters(d, n):,} of the bank's {cfg.bank_parameters(d, n):,} parameters. The memory is in "
        "`memory_config.json`, `memory_index.json`, `memory_index.safetensors` and the `memory_bank*` files; "
        f'config.json says `"model_type": "{MEMORY_MODEL_TYPE}"` (the anchor\'s, `{anchor_type}`, is in its '
        "`memory_bank` entry), so that nothing loads the anchor without its memory by accident."
    )
    other = (
        'After `import hf_seqmodels`, `AutoModelForCausalLM.from_pretrained("folder", tokenizer=tokenizer)` and '
        '`pipeline("text-generation", model="folder")` load the same (without `tokenizer=`, the folder\'s tokenizer '
        "routes the input, if it has one). transformers alone refuses the folder; with `trust_remote_code=True` it "
        f'loads anchor and bank. `{anchor}.from_pretrained("folder")` gives the bare anchor (transformers warns that '
        "the model type differs)."
    )
    code = (
        "```python\nfrom hf_seqmodels.memory import load_memory_model\n\n"
        'model = load_memory_model("folder", tokenizer=tokenizer)  # bank stays on disk; trainable=True to train it'
        "\n```"
    )
    fill = functools.partial(textwrap.fill, width=120, break_on_hyphens=False, break_long_words=False)
    return "\n\n".join(["## Memory bank", fill(about), code, fill(other)]) + "\n"


def save_memory(model, directory, max_shard_size: int = 2 << 30, part_size: int = 256 << 20) -> None:
    """Write the bank shards, memory config and index of ``model`` into ``directory`` (the anchor not).

    ``max_shard_size``: bytes per shard file; ``part_size``: bytes per stored tensor (clusters are grouped into
    parts of at most this size; a part is the unit a shard holds)."""
    st = memory_state(model)
    st.config.save_pretrained(directory)
    st.index.save_pretrained(directory)
    model.memory_bank.save_pretrained(directory, max_shard_size=max_shard_size, part_size=part_size)


def _check_index(config: MemoryBankConfig, index: MemoryIndex, where="attach_memory_bank"):
    if index.levels != config.levels:
        raise ValueError(
            f"{where}: the index has {index.levels} levels but block_sizes {config.block_sizes} ask for {config.levels}"
        )
    if index.branching != config.branching:
        raise ValueError(f"{where}: the index has branching {index.branching} but the config {config.branching}")
    if config.embedder is not None and config.embedder != index.embedder_name:
        raise ValueError(
            f"{where}: the config expects embedder {config.embedder!r} but the index was built with "
            f"{index.embedder_name!r} (dim {index.dim})"
        )


def attach_memory_bank(model, config: MemoryBankConfig, index: MemoryIndex, tokenizer=None, bank=None, embedder=None):
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
            raise ValueError(
                f"attach_memory_bank: the index was built with {index.embedder_name!r} (dim {index.dim}) "
                f"but this model's embedding is {want.name!r} (dim {want.dim})"
            )
        index.set_embedder(want)
    if embedder is not None:
        index.set_embedder(embedder)
    param = next(model.parameters())
    if bank is None:
        bank = MemoryBank(config, d, layer_ids, dtype=param.dtype, device=param.device)
    else:
        if bank.hidden_size != d:
            raise MemoryBankError(
                f"attach_memory_bank: the bank's blocks are {bank.hidden_size} wide, the model's MLPs take {d}"
            )
        if list(bank.layer_ids) != list(layer_ids):
            raise MemoryBankError(
                f"attach_memory_bank: the bank covers layers {bank.layer_ids}, the config selects "
                f"{layer_ids} of {len(layers)}"
            )
        if tuple(bank.config.block_sizes) != config.block_sizes or bank.config.branching != config.branching:
            raise MemoryBankError(
                f"attach_memory_bank: the bank has block_sizes {bank.config.block_sizes} / branching "
                f"{bank.config.branching}, the config {config.block_sizes} / {config.branching}"
            )
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
    st = memory_state(model)
    for h in st.handles:
        h.remove()
    del model._modules["memory_bank"]
    for name in ("forward", "generate", "save_pretrained", "memory_config", "memory_index", "_memory_state"):
        model.__dict__.pop(name, None)
    return model


def memory_parameter_groups(model, lr=None, weight_decay=None, anchor_lr=None, anchor_weight_decay=0.0):
    """Optimizer parameter groups: the bank's blocks (``lr``/``weight_decay``, default the config's memory values)
    and, when the anchor is co-trained, its trainable parameters (``anchor_lr``, default ``lr``)."""
    st = memory_state(model)
    if not model.memory_bank.trainable:
        raise ValueError(
            "memory_parameter_groups: the bank was loaded read-only from disk; load_memory_model(..., "
            "trainable=True) to train it"
        )
    lr = st.config.memory_lr if lr is None else lr
    wd = st.config.memory_weight_decay if weight_decay is None else weight_decay
    groups = [{"params": list(model.memory_bank.parameters()), "lr": lr, "weight_decay": wd, "name": "memory"}]
    anchor = [p for n, p in model.named_parameters() if not n.startswith("memory_bank.") and p.requires_grad]
    if anchor:
        groups.append(
            {
                "params": anchor,
                "lr": lr if anchor_lr is None else anchor_lr,
                "weight_decay": anchor_weight_decay,
                "name": "anchor",
            }
        )
    return groups


def memory_optimizer(model, lr=None, weight_decay=None, anchor_lr=None, anchor_weight_decay=0.0, **adamw_kwargs):
    """``torch.optim.AdamW`` over :func:`memory_parameter_groups` (unfetched blocks: no update, no decay)."""
    groups = memory_parameter_groups(model, lr, weight_decay, anchor_lr, anchor_weight_decay)
    return torch.optim.AdamW(groups, **adamw_kwargs)


def load_memory_model(
    path,
    model_class=None,
    tokenizer=None,
    trainable=False,
    reader="pread",
    verify=True,
    embedder=None,
    **from_pretrained_kwargs,
):
    """Load a model saved with memory: anchor + bank (on disk unless ``trainable``) + index, re-attached.

    Everything about the memory is checked before the anchor is loaded; nothing is ever written. The anchor's
    config is the one config.json records (see :mod:`.folder`) unless ``config=`` is given. Without ``tokenizer``,
    the folder's own tokenizer (if it has one) routes the input.
    """
    import hf_seqmodels  # noqa: F401  (registers this package's architectures)

    anchor_config = from_pretrained_kwargs.pop("config", None)
    if isinstance(anchor_config, MemoryModelConfig):
        anchor_config = anchor_config.anchor_config()
    elif anchor_config is None and is_memory_folder(path):  # (a folder saved before the marker: the anchor's config)
        anchor_config = MemoryModelConfig.from_pretrained(path).anchor_config()
    config = MemoryBankConfig.from_pretrained(path)
    index = MemoryIndex.from_pretrained(path)
    _check_index(config, index, where=f"load_memory_model({path})")
    meta = MemoryBank.read_index(path)
    MemoryBank.check_files(path, meta, config, verify=verify)
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    from_pretrained_kwargs.setdefault("use_safetensors", True)  # never unpickle
    if anchor_config is not None:
        from_pretrained_kwargs["config"] = anchor_config
    model = model_class.from_pretrained(path, **from_pretrained_kwargs)
    if tokenizer is None and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    layers = _decoder_layers(model)
    d = layers[0].mlp.gate_proj.in_features
    bank = MemoryBank.from_pretrained(
        path,
        config,
        hidden_size=d,
        layer_ids=config.layer_indices(len(layers)),
        trainable=trainable,
        reader=reader,
        verify=False,
        device=next(model.parameters()).device if trainable else None,
    )
    return attach_memory_bank(model, config, index, tokenizer=tokenizer, bank=bank, embedder=embedder)


class MemoryModelForCausalLM:
    """What ``AutoModelForCausalLM`` loads a folder saved with a memory bank with (config.json ``model_type``
    ``hf_seqmodels_memory``; registered by ``import hf_seqmodels``): ``from_pretrained`` is
    :func:`load_memory_model`, whose keywords (``tokenizer``, ``trainable``, ``reader``, ...) it takes. It returns the
    anchor's own class with the bank attached; this class itself is never instantiated."""

    config_class = MemoryModelConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        if model_args:
            raise TypeError("MemoryModelForCausalLM.from_pretrained takes the folder and keywords only")
        return load_memory_model(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModelForCausalLM"):
        """(called by transformers on remote code: nothing to record, the loader files name this class)"""


def register_memory_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` read memory models' folders (``import hf_seqmodels`` does)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(MEMORY_MODEL_TYPE, MemoryModelConfig, exist_ok=True)
    AutoModelForCausalLM.register(MemoryModelConfig, MemoryModelForCausalLM, exist_ok=True)
