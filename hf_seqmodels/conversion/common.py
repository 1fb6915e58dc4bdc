"""What every checkpoint format shares: the format record, reading config.json and safetensors weights (never a
pickle), refusing an option by name, and the strict check that converted weights fit the model they are for."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

#: tokenizer files a converted folder takes over from its source, when present
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class CheckpointFormat:
    """A published checkpoint format hf-seqmodels converts.

    ``detect(folder)`` says cheaply (config.json, file names; no weights read) whether ``folder`` is in this format,
    including variants the format then refuses by name; ``load(folder, progress=False)`` returns a :class:`Converted`
    or raises ``ValueError`` saying what cannot be converted and why. ``model_types``: the config.json
    ``model_type`` values of the format, if it has any (our configs refuse to be read from such a config).
    """

    name: str
    description: str
    detect: Callable[[str], bool]
    load: Callable[..., "Converted"]
    model_types: tuple = ()


@dataclass
class Converted:
    """A checkpoint in our terms: the config of one of our architectures, the state dict its causal-LM class loads
    (checked key by key and shape by shape), and notes on what the conversion did (for the model card)."""

    config: object
    state_dict: dict
    source: str
    description: str
    notes: list = field(default_factory=list)
    #: the tokenizer the source implies when its folder holds no tokenizer files (H-Net: the byte tokenizer)
    tokenizer: object = None

    @property
    def card_data(self) -> dict:
        return {"base_model": self.source, "tags": ["converted"]}


def read_config(folder) -> dict | None:
    """config.json of ``folder`` as a dict, or None when there is none (or it is not a JSON object)."""
    path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_type_of(folder) -> str | None:
    data = read_config(folder)
    value = data.get("model_type") if data else None
    return value if isinstance(value, str) else None


def refuse(what: str, option: str, value, why: str) -> ValueError:
    """The error for an option of the source we do not convert: names the option, its value and the reason."""
    return ValueError(f"{what}: {option}={value!r} is not supported: {why}")


def weight_files(folder) -> list[str]:
    """The safetensors files of ``folder`` (a single ``model.safetensors``, or the shards its index names). A folder
    with weights only as pickle files is refused (unpickling can run arbitrary code)."""
    from hf_seqmodels.hub import pickle_only_message

    folder = os.fspath(folder)
    why = pickle_only_message(folder)
    if why is not None:
        raise ValueError(why)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{folder!r} holds no safetensors weights (model.safetensors or an index of shards)")
    missing = [n for n in files if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise ValueError(f"{folder!r}: weight file(s) {missing} named by model.safetensors.index.json are missing")
    return [os.path.join(folder, n) for n in files]


def read_safetensors(folder, progress: bool = False) -> dict:
    """Every tensor of the safetensors weights of ``folder`` (memory-mapped; see :func:`weight_files`)."""
    from safetensors import safe_open
    from tqdm.auto import tqdm

    state = {}
    files = weight_files(folder)
    handles = [safe_open(path, framework="pt") for path in files]
    total = sum(len(list(h.keys())) for h in handles)
    with tqdm(total=total, desc="reading weights", unit="tensor", disable=not progress) as bar:
        for path, handle in zip(files, handles):
            for name in handle.keys():
                if name in state:
                    raise ValueError(f"{os.fspath(folder)!r}: tensor {name!r} is in more than one weight file")
                state[name] = handle.get_tensor(name)
                bar.update(1)
    return state


def check_state_dict(model_class, config, state: dict, what: str) -> None:
    """Raise ``ValueError`` unless ``state`` holds exactly the weights ``model_class(config)`` has, with the same
    shapes (a tied ``lm_head.weight`` may be absent). Built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = model_class(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{n} {tuple(state[n].shape)} (expected {expected[n]})"
        for n in set(state) & set(expected)
        if tuple(state[n].shape) != expected[n]
    )
    if missing or unexpected or wrong:
        parts = [
            f"missing {_few(missing)}" if missing else "",
            f"not converted {_few(unexpected)}" if unexpected else "",
            f"wrong shapes {_few(wrong)}" if wrong else "",
        ]
        raise ValueError(f"{what}: the weights do not match the converted config: " + "; ".join(p for p in parts if p))


def _few(names, n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > n else ''}]"
