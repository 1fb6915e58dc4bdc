"""Save and load what HMT adds (``hmt_config.json`` + ``hmt.safetensors``, and a PEFT model's adapter), never the
base's weights; read the reference's (OswaldHe/HMT-pytorch) ``PyTorchModelHubMixin`` state dict."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from .config import HMTConfig
from .modeling import _base, _hmt_config, _is_peft, attach_hmt

HMT_WEIGHTS_NAME = "hmt.safetensors"


class HMTCheckpointError(ValueError):
    """A checkpoint that does not map onto HMT here (the message names the key and the reason)."""


def save_hmt(model, save_directory, **kwargs) -> None:
    """Write HMT's config and weights into ``save_directory`` (and a PEFT model's adapter, with PEFT's own
    ``save_pretrained``); the base's weights are not written. Also ``model.save_pretrained`` after attach."""
    cfg = _hmt_config(model)
    os.makedirs(save_directory, exist_ok=True)
    if _is_peft(model):
        type(model).save_pretrained(model, save_directory, **kwargs)
    elif kwargs:
        raise TypeError(f"save_hmt: unsupported arguments {sorted(kwargs)} (only HMT's files are written)")
    base = _base(model)
    hmt = model.hmt
    cfg.save_pretrained(
        save_directory,
        hidden_size=base.config.hidden_size,
        recall_width=hmt.recall_q.out_features,
        base_model_name_or_path=getattr(base.config, "name_or_path", "") or "",
    )
    state = {k: v.detach().contiguous().cpu() for k, v in hmt.state_dict().items()}
    save_file(state, os.path.join(save_directory, HMT_WEIGHTS_NAME), metadata={"format": "pt"})


def load_hmt(model, path, is_trainable: bool = False):
    """Attach HMT saved in ``path`` to ``model`` (the same base it was trained on) and load its weights; a PEFT
    adapter saved beside it (``adapter_config.json``) is loaded first (``is_trainable`` as in PEFT). Safetensors
    only: nothing is unpickled. Returns the model (a ``PeftModel`` when an adapter was loaded)."""
    cfg, extra = HMTConfig.from_pretrained(path)
    base = _base(model)
    if extra.get("hidden_size") not in (None, base.config.hidden_size):
        raise HMTCheckpointError(
            f"load_hmt: {path} was saved for hidden_size {extra['hidden_size']}, the model has "
            f"{base.config.hidden_size}"
        )
    weights = os.path.join(path, HMT_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"load_hmt: no {HMT_WEIGHTS_NAME} in {path}")
    if os.path.isfile(os.path.join(path, "adapter_config.json")) and not _is_peft(model):
        if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
            raise HMTCheckpointError(f"load_hmt: {path} has an adapter config but no adapter_model.safetensors")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=is_trainable)
    state = load_file(weights)
    attach_hmt(model, cfg)
    _load_into(model.hmt, state, f"load_hmt({path})")
    return model


def _load_into(hmt, state, where):
    own = hmt.state_dict()
    missing = sorted(set(own) - set(state))
    unknown = sorted(set(state) - set(own))
    if missing or unknown:
        raise HMTCheckpointError(f"{where}: missing HMT weights {missing}, unknown {unknown}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise HMTCheckpointError(f"{where}: `{k}` has shape {tuple(v.shape)}, HMT here {tuple(own[k].shape)}")
    hmt.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# the reference's RecurrentWrapper state dict -> HMTMemory
_REFERENCE_KEYS = {
    "mem": "memory_query",
    "memory_cell.memory": "initial_memory",
    "cross_attn.wq.weight": "recall_q.weight",
    "cross_attn.wk.weight": "recall_k.weight",
}
# the reference's memory map: used only by its dynamic-reading ("switch") experiment, not by HMT's forward
_REFERENCE_UNUSED = ("memory_cell.mem_map.linear.weight", "memory_cell.mem_map.inv_linear.weight")


def load_reference_hmt(model, checkpoint, config: HMTConfig):
    """Attach HMT to ``model`` with the weights of a reference checkpoint (``RecurrentWrapper`` saved by
    ``PyTorchModelHubMixin``: ``model.safetensors``, or a state dict already in memory).

    ``mem`` -> ``memory_query``, ``memory_cell.memory`` -> ``initial_memory``, ``cross_attn.w{q,k}.weight`` ->
    ``recall_{q,k}.weight``; the reference's memory map (``memory_cell.mem_map.*``) is not HMT's and is ignored;
    ``memory_cell.model.*`` is the base, fine-tuned in full by the reference's training: loaded into the base (all
    of its weights, shapes checked). Refused by name: pickled files (``.pth``/``.bin``: convert them to safetensors
    where you trust them), PEFT adapter weights (merge them first), a stage-1 checkpoint (no recall weights) for a
    config with recall, more than one memory token, and recall trained with the 1/h score scale (d and h >= 4096).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if os.path.isdir(path):
            path = os.path.join(path, "model.safetensors")
        if not path.endswith(".safetensors"):
            raise HMTCheckpointError(
                f"load_reference_hmt: {path} is not a safetensors file; the reference's .pth/.bin checkpoints are "
                "pickled and are never loaded here (convert one you trust to safetensors first)"
            )
        checkpoint = load_file(path)
    state = dict(checkpoint)
    base = _base(model)
    d = base.config.hidden_size
    lora = sorted(k for k in state if "lora_" in k)
    if lora:
        raise HMTCheckpointError(f"load_reference_hmt: PEFT adapter weights ({lora[0]}, ...): merge them first")
    base_state = {k[len("memory_cell.model.") :]: v for k, v in state.items() if k.startswith("memory_cell.model.")}
    known = set(_REFERENCE_KEYS) | set(_REFERENCE_UNUSED)
    unknown = sorted(k for k in state if k not in known and not k.startswith("memory_cell.model."))
    if unknown:
        raise HMTCheckpointError(f"load_reference_hmt: keys HMT does not have: {unknown[:5]}")
    for key in ("mem", "memory_cell.memory"):
        if key not in state:
            raise HMTCheckpointError(f"load_reference_hmt: `{key}` missing")
        if tuple(state[key].shape) != (1, d):
            raise HMTCheckpointError(
                f"load_reference_hmt: `{key}` has shape {tuple(state[key].shape)}; HMT here has one memory "
                f"embedding of the model's width: (1, {d})"
            )
    has_recall = "cross_attn.wq.weight" in state and "cross_attn.wk.weight" in state
    if config.recall and not has_recall:
        raise HMTCheckpointError(
            "load_reference_hmt: no `cross_attn.wq.weight`/`cross_attn.wk.weight` (a stage-1 checkpoint): pass a "
            "config with recall=False, or train stage 2"
        )
    h = config.recall_hidden_size or d
    if has_recall:
        h = state["cross_attn.wq.weight"].shape[0]
        for key in ("cross_attn.wq.weight", "cross_attn.wk.weight"):
            if tuple(state[key].shape) != (h, d):
                raise HMTCheckpointError(f"load_reference_hmt: `{key}` has shape {tuple(state[key].shape)}")
        if d >= 4096 and h >= 4096:
            raise HMTCheckpointError(
                "load_reference_hmt: recall was trained with scores scaled by 1/h (the reference does that when "
                "the model and recall widths are both >= 4096, and 1/sqrt(h) in generation); HMT here always uses "
                "1/sqrt(h), so this recall would not compute what it was trained to"
            )
        if config.recall_hidden_size not in (None, h):
            raise HMTCheckpointError(
                f"load_reference_hmt: `cross_attn.wq.weight` is {h} wide, config.recall_hidden_size is "
                f"{config.recall_hidden_size}"
            )
    if base_state:
        own = base.state_dict()
        tied = {k for k in own if k.endswith("lm_head.weight")} if base.config.tie_word_embeddings else set()
        missing = sorted(set(own) - set(base_state) - tied)
        extra = sorted(set(base_state) - set(own))
        if missing or extra:
            raise HMTCheckpointError(
                f"load_reference_hmt: the checkpoint's base (memory_cell.model.*) does not match the model: missing "
                f"{missing[:3]}, unknown {extra[:3]}"
            )
        for k, v in base_state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise HMTCheckpointError(
                    f"load_reference_hmt: `memory_cell.model.{k}` has shape {tuple(v.shape)}, the model "
                    f"{tuple(own[k].shape)}"
                )
    if config.recall_hidden_size is None and h != d:
        import dataclasses

        config = dataclasses.replace(config, recall_hidden_size=h)
    attach_hmt(model, config)
    if base_state:
        with torch.no_grad():
            own = base.state_dict()
            for k, v in base_state.items():
                own[k].copy_(v.to(own[k].dtype))
    hmt_state = {new: state[old] for old, new in _REFERENCE_KEYS.items() if old in state}
    if not has_recall:
        hmt_state.update({k: v for k, v in model.hmt.state_dict().items() if k.startswith("recall_")})
    _load_into(model.hmt, hmt_state, "load_reference_hmt")
    return model
