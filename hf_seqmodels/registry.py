"""The leaf registry of architectures (``(config class, base model class, causal-LM class)`` triples) and of the
published checkpoint formats converted on load.

``hf_seqmodels.models`` fills it; code that needs every architecture (the Hub files, the Auto-class registration)
reads it. It imports nothing of the package, so no module depends on the registry of its own subclasses.
"""

from __future__ import annotations

import os

#: (config, base model, causal LM) for every registered architecture, in registration order
ARCHITECTURES: list[tuple[type, type, type]] = []


def register_architecture(config_class: type, model_class: type, lm_class: type) -> None:
    entry = (config_class, model_class, lm_class)
    if entry not in ARCHITECTURES:
        ARCHITECTURES.append(entry)


def classes_for_config(config) -> tuple[type, type, type]:
    """The registered triple of ``config``'s exact class (a subclass of a registered config is not a match)."""
    for entry in ARCHITECTURES:
        if type(config) is entry[0]:
            return entry
    raise ValueError(f"{type(config).__name__} is not a registered hf-seqmodels architecture")


#: name -> format record of every published checkpoint format converted on load (filled by hf_seqmodels.conversion;
#: each record has ``detect(folder) -> bool``, ``load(folder) -> converted config and state dict`` and
#: ``model_types``, the config.json model types of the format)
CHECKPOINT_FORMATS: dict[str, object] = {}


def checkpoint_format_of(path):
    """The registered checkpoint format of the local folder ``path`` (None for anything else: our own folders, Hub
    ids, files)."""
    if not CHECKPOINT_FORMATS or not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return None
    for fmt in CHECKPOINT_FORMATS.values():
        if fmt.detect(os.fspath(path)):
            return fmt
    return None


def checkpoint_format_for_model_type(model_type):
    """The registered checkpoint format whose config.json carries ``model_type`` (None if none does)."""
    for fmt in CHECKPOINT_FORMATS.values():
        if model_type in getattr(fmt, "model_types", ()):
            return fmt
    return None
