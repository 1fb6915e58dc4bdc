"""argparse types shared by the subcommands, and the checks a command runs before it loads anything: the error names
the flag and what was expected."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def positive_int(flag: str):
    return bounded_int(flag, 1)


def bounded_int(flag: str, low: int):
    """An integer ``>= low``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {low}, got {value}")
        return value

    return parse


def non_negative_int(flag: str):
    return bounded_int(flag, 0)


def positive_float(flag: str):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number > 0, got {text}")
        return value

    return parse


def positive_list(kind, flag: str):
    """A comma-separated list of positive ``kind`` values (int or float)."""

    def parse(text):
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a comma-separated list of {kind.__name__}, got {text!r}"
            ) from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} must hold positive values, got {text!r}")
        return values

    return parse


def existing_file(flag: str):
    """A path to a readable file (checked when the flags are parsed, before any work)."""

    def parse(text):
        if not os.path.isfile(text):
            what = "a folder" if os.path.isdir(text) else "not found"
            raise argparse.ArgumentTypeError(f"{flag} must be a readable file, got {text!r} ({what})")
        if not os.access(text, os.R_OK):
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not readable")
        return text

    return parse


def device(flag: str = "--device"):
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""

    def parse(text):
        import torch

        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError) as err:
            raise argparse.ArgumentTypeError(f"{flag}: {text!r} is not a torch device ({err})") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise argparse.ArgumentTypeError(
                    f"{flag} {text}: CUDA is not available on this machine (use --device cpu)"
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise argparse.ArgumentTypeError(
                    f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
                )
        elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{flag} {text}: MPS is not available on this machine")
        return text

    return parse


def add_decoder_arguments(parser) -> None:
    """``--model`` and ``--gguf-file``: a Llama-family checkpoint, for the commands that take one (linearize,
    cola-search); checked by :func:`check_model_folder` before any work."""
    parser.add_argument(
        "--model",
        required=True,
        help="Llama, Mistral, Qwen2/2.5, Qwen3 or Phi-3 checkpoint: a safetensors folder or Hub id, or the "
        "folder of --gguf-file",
    )
    parser.add_argument("--gguf-file", default=None, help="GGUF file (in --model's folder, or an absolute path)")


def check_output_folder(flag: str, path: str) -> None:
    """Raise ``ValueError`` unless ``path`` is (or can be created as) a writable folder: checked before the work that
    ends in saving there. Nothing is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path!r} exists and is not a folder")
    probe = p
    while not probe.exists():  # the nearest existing ancestor must let us create the rest
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {path!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: {str(probe)!r} is not writable")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


def check_model_folder(
    flag: str, path: str, gguf_file: str | None, gguf_flag: str = "--gguf-file", need_tokenizer: bool = True
) -> str | None:
    """Check a local model folder (and its GGUF file) before loading anything; a Hub id (not a local path) is left
    to transformers. Returns the full path of the GGUF file, if any. Raises ``ValueError`` naming what is wrong:
    a missing folder, a GGUF-only folder without ``--gguf-file``, a truncated GGUF file, weights only as a pickle
    (``pytorch_model.bin``, never loaded), no tokenizer."""
    from ..gguf import check_gguf_file
    from ..hub import looks_like_hub_id

    folder = Path(path)
    if gguf_file is not None:
        full = gguf_file if os.path.isabs(gguf_file) else os.path.join(path, gguf_file)
        if not os.path.isfile(full):
            raise ValueError(f"{gguf_flag} {full!r} is not a file")
        check_gguf_file(full)
        return full
    if not folder.exists():
        if looks_like_hub_id(path):
            return None
        raise ValueError(
            f"{flag} {path!r} does not exist (a model folder or a Hub id such as HuggingFaceTB/SmolLM2-135M)"
        )
    if not folder.is_dir():
        if folder.suffix == ".gguf":
            raise ValueError(
                f"{flag} {path!r} is a GGUF file: pass its folder as {flag} and the file name as "
                f"{gguf_flag} ({flag} {str(folder.parent)!r} {gguf_flag} {folder.name!r})"
            )
        raise ValueError(f"{flag} {path!r} is not a folder")
    names = sorted(os.listdir(folder))
    ggufs = [n for n in names if n.endswith(".gguf")]
    if not (folder / "config.json").is_file():
        if ggufs:
            raise ValueError(
                f"{flag} {path!r} holds GGUF file(s) and no config.json: pass the file with "
                f"{gguf_flag} (e.g. {gguf_flag} {ggufs[0]})"
            )
        raise ValueError(f"{flag} {path!r} holds no config.json: not a saved model folder")
    has_safetensors = any(n in WEIGHT_FILES or (n.startswith("model-") and n.endswith(".safetensors")) for n in names)
    pickles = [n for n in names if n in PICKLE_WEIGHT_FILES or (n.startswith("pytorch_model-") and n.endswith(".bin"))]
    if not has_safetensors and pickles:
        raise ValueError(
            f"{flag} {path!r} holds its weights only as {pickles[0]}, a pickle file; hf-seqmodels loads "
            "safetensors only (unpickling can run arbitrary code). Convert it once where you trust it: "
            "AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False)"
            ".save_pretrained(folder)"
        )
    if need_tokenizer and not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise ValueError(
            f"{flag} {path!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the "
            "model's tokenizer into the folder with tokenizer.save_pretrained(folder)"
        )
    return None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default; descriptions keep their line breaks (they hold command examples)."""

    def _fill_text(self, text, width, indent):
        text = text.replace("``", "`")  # descriptions come from docstrings: no reST literals on a terminal
        if "\n" not in text.strip():  # a one-paragraph description: wrapped as usual
            return argparse.HelpFormatter._fill_text(self, text, width, indent)
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        help_text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
            or "%(default)" in help_text
            or "default:" in help_text
        ):
            return help_text  # "(default: None)" / "(default: False)" say nothing
        return super()._get_help_string(action)


def check_output_file(flag: str, path: str) -> None:
    """Raise ``ValueError`` unless a file can be written at ``path`` (checked before the work that ends in writing
    it). Nothing is created."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path!r} is a folder; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {path!r} is not writable")
    check_output_folder(flag, str(p.parent) if str(p.parent) else ".")


def read_text(flag: str, path: str) -> str:
    """The UTF-8 text of the file a flag names, or a ``ValueError`` naming the flag."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{flag} {path!r} is not UTF-8 text ({err})") from None


#: optional dependency (import name) -> the extra of hf-seqmodels that installs it
EXTRAS = {
    "peft": "train",
    "accelerate": "train",
    "datasets": "train",
    "matplotlib": "plot",
    "gguf": "gguf",
    "triton": "triton",
}


def require_packages(command: str, needs: dict[str, str]) -> None:
    """Raise ``ValueError`` with the install line if a package the command will need is missing: checked before any
    work, not after it. ``needs`` maps an import name to what it is needed for."""
    import importlib.util

    missing = [(name, why) for name, why in needs.items() if importlib.util.find_spec(name) is None]
    if missing:
        extras = sorted({EXTRAS.get(name, name) for name, _ in missing})
        what = "; ".join(f"{name} ({why})" for name, why in missing)
        raise ValueError(
            f"{command} needs {what}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'hf-seqmodels[{','.join(extras)}]'"
        )
