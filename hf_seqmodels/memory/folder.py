"""What config.json says in a folder saved with a memory bank, and the config class the Auto classes read it with.

The folder holds the anchor's files (config.json, model.safetensors, ...) and the memory's (``memory_config.json``,
``memory_index.*``, ``memory_bank*``). Loaded as the anchor alone it would silently be the bare anchor, so saving
rewrites config.json (:func:`mark_memory_folder`): ``model_type`` becomes ``"hf_seqmodels_memory"``, the anchor's
``model_type`` and ``architectures`` move into a ``"memory_bank"`` entry that also names the loader, and ``auto_map``
points at the memory loader files. Then:

- after ``import hf_seqmodels``, ``AutoModelForCausalLM.from_pretrained(folder)`` and ``pipeline(model=folder)``
  load anchor + bank (:class:`MemoryModelConfig`, then :class:`~hf_seqmodels.memory.attach.MemoryModelForCausalLM`,
  which is :func:`~hf_seqmodels.memory.attach.load_memory_model`);
- transformers alone refuses the folder (``trust_remote_code=True``: the loader files import hf_seqmodels, which
  loads anchor + bank);
- only the anchor's own class (``LlamaForCausalLM.from_pretrained(folder)``) still loads the bare anchor, with
  transformers' warning that the folder's model type is another.

Every other field of config.json is the anchor's, unchanged; :meth:`MemoryModelConfig.anchor_config` gives the
anchor's config back.
"""

from __future__ import annotations

import json
import os

from transformers import PretrainedConfig

MEMORY_MODEL_TYPE = "hf_seqmodels_memory"
#: the config.json entry that marks a memory model's folder
MARKER = "memory_bank"
LOAD_WITH = "hf_seqmodels.memory.load_memory_model"


class MemoryModelConfig(PretrainedConfig):
    """config.json of a folder saved with a memory bank: the anchor's fields, ``model_type`` ``hf_seqmodels_memory``
    and the ``memory_bank`` entry (``anchor_model_type``, ``anchor_architectures``, ``load_with``)."""

    model_type = MEMORY_MODEL_TYPE

    def anchor_config(self) -> PretrainedConfig:
        """The anchor's own config (its class, its ``model_type``), as saved before the folder was marked."""
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        data = self.to_dict()
        marker = data.pop(MARKER, None)
        if not isinstance(marker, dict) or not isinstance(marker.get("anchor_model_type"), str):
            raise ValueError(
                f"config.json of {self.name_or_path!r}: model_type {MEMORY_MODEL_TYPE!r} needs a "
                f"{MARKER!r} entry naming the anchor's model type (anchor_model_type)"
            )
        anchor_type = marker["anchor_model_type"]
        if anchor_type not in CONFIG_MAPPING:
            raise ValueError(
                f"config.json of {self.name_or_path!r}: anchor_model_type {anchor_type!r} is not a model "
                "type this transformers knows (import the package that defines it first)"
            )
        data.pop("auto_map", None)  # the memory loader's; the anchor's own class is registered
        data["model_type"] = anchor_type
        data["architectures"] = marker.get("anchor_architectures")
        return CONFIG_MAPPING[anchor_type].from_dict(data)


def is_memory_folder(path) -> bool:
    """Whether ``path`` is a local folder whose config.json is a memory model's (False for one saved before
    config.json was marked: it holds the anchor's own config)."""
    config_file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(config_file):
        return False
    try:
        with open(config_file, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from None
    return isinstance(data, dict) and data.get("model_type") == MEMORY_MODEL_TYPE


def mark_memory_folder(directory, config_class_ref: str, model_class_ref: str) -> None:
    """Rewrite the anchor's config.json in ``directory`` as a memory model's (see the module docstring);
    ``*_class_ref``: the ``auto_map`` entries (``"module.Class"`` of the folder's loader files)."""
    config_file = os.path.join(os.fspath(directory), "config.json")
    with open(config_file, encoding="utf-8") as f:
        data = json.load(f)
    data[MARKER] = {
        "anchor_model_type": data.get("model_type"),
        "anchor_architectures": data.get("architectures"),
        "load_with": LOAD_WITH,
        "note": "a model with a hierarchical memory bank (memory_config.json, memory_index.*, memory_bank*): load "
        f"it with {LOAD_WITH}(folder, tokenizer=...) or, after `import hf_seqmodels`, "
        "AutoModelForCausalLM.from_pretrained(folder); the anchor's files alone are the model without its "
        "memory",
    }
    data["model_type"] = MEMORY_MODEL_TYPE
    data["architectures"] = ["MemoryModelForCausalLM"]  # nothing pipeline() could fall back to as the bare anchor
    data["auto_map"] = {"AutoConfig": config_class_ref, "AutoModelForCausalLM": model_class_ref}
    tmp = config_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, config_file)
