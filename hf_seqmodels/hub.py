"""What ``save_pretrained`` writes beside the weights for the Hub: ``auto_map`` with two small loader files (so
``trust_remote_code=True`` works without importing hf_seqmodels first), and a model card from ``model_cards/``."""
from __future__ import annotations

import os
from importlib import resources
from string import Template

CONFIG_FILE = "configuration_hf_seqmodels.py"
MODELING_FILE = "modeling_hf_seqmodels.py"
_HEADER = '"""Loads hf-seqmodels classes for `trust_remote_code=True`; needs `pip install hf-seqmodels`."""\n'


def _classes_for(model):
    from hf_seqmodels.registry import classes_for_config

    return classes_for_config(model.config)


def prepare_auto_map(model) -> None:
    config_class, model_class, lm_class = _classes_for(model)
    model.config.auto_map = {
        "AutoConfig": f"{CONFIG_FILE[:-3]}.{config_class.__name__}",
        "AutoModel": f"{MODELING_FILE[:-3]}.{model_class.__name__}",
        "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{lm_class.__name__}",
    }


def _imports(*classes) -> str:
    return "".join(f"from {c.__module__} import {c.__name__}  # noqa: F401\n" for c in classes)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_card_text(model, extra: dict | None = None) -> str:
    config = model.config
    arch = type(config).model_type.removeprefix("hf_seqmodels_")
    cards = resources.files("hf_seqmodels.model_cards")
    description_file = cards / f"{arch}.md"
    description = description_file.read_text() if description_file.is_file() else ""
    extra = dict(extra or getattr(config, "card_data", None) or {})
    base_model = extra.pop("base_model", None) or getattr(config, "base_model_name_or_path", None)
    tags = ["hf-seqmodels", arch, "custom_code", "text-generation"] + list(extra.pop("tags", []))
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", f"license: {extra.pop('license', 'apache-2.0')}"]
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("tags:")
    front += [f"- {t}" for t in dict.fromkeys(tags)]
    front.append("---")
    results = "".join(f"| {k} | {v} |\n" for k, v in extra.items())
    params = count_parameters(model)
    return Template((cards / "template.md").read_text()).substitute(
        front_matter="\n".join(front),
        model_class=type(model).__name__,
        arch=arch,
        description=description.strip(),
        params=f"{params / 1e6:.2f}M",
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        vocab=config.vocab_size,
        base_model=base_model or "none (trained from scratch)",
        results=results or "| (none recorded) | |\n",
    )


def write_hub_files(model, save_directory) -> None:
    config_class, model_class, lm_class = _classes_for(model)
    with open(os.path.join(save_directory, CONFIG_FILE), "w") as f:
        f.write(_HEADER + _imports(config_class))
    with open(os.path.join(save_directory, MODELING_FILE), "w") as f:
        f.write(_HEADER + _imports(model_class, lm_class))
    readme = os.path.join(save_directory, "README.md")
    if not os.path.exists(readme):
        with open(readme, "w") as f:
            f.write(model_card_text(model))
