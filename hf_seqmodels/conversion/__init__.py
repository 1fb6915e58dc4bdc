"""Published checkpoints in other formats -> hf-seqmodels models, one module per source format.

:data:`FORMATS` maps a format's name to its :class:`CheckpointFormat` (``detect(folder)`` from config.json alone,
``load(folder)`` -> our config + state dict). The table lives in the leaf registry, so that ``from_pretrained`` of
our classes converts a folder in a known format on load (``GLAForCausalLM.from_pretrained(fla_folder)``) without the
models importing this package. :func:`convert` writes a native folder once, for the Auto classes and pipelines.

A new format: a module here with ``detect``, ``load`` and ``FORMAT = CheckpointFormat(...)``, registered below.
"""

from __future__ import annotations

import os
import shutil

from hf_seqmodels.compat import transformers_progress_bars
from hf_seqmodels.registry import CHECKPOINT_FORMATS, classes_for_config
from hf_seqmodels.saving import safe_output_folder

from . import fla_gla, hnet, liger
from .common import TOKENIZER_FILES, CheckpointFormat, Converted

#: name -> CheckpointFormat of every format hf-seqmodels converts (the registry's table)
FORMATS: dict = CHECKPOINT_FORMATS


def register_format(fmt: CheckpointFormat) -> None:
    if not isinstance(fmt, CheckpointFormat):
        raise TypeError(f"register_format: expected a CheckpointFormat, got {type(fmt).__name__}")
    FORMATS[fmt.name] = fmt


for _fmt in (fla_gla.FORMAT, liger.FORMAT, hnet.FORMAT):
    register_format(_fmt)


def detect_format(folder) -> CheckpointFormat | None:
    """The format of the checkpoint folder ``folder``, or None."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return None
    for fmt in FORMATS.values():
        if fmt.detect(folder):
            return fmt
    return None


def load_checkpoint(folder, progress: bool = False) -> Converted:
    """Read a checkpoint folder in a known format as our config and state dict (``ValueError`` if it is in none, or
    uses an option the format refuses)."""
    fmt = detect_format(folder)
    if fmt is None:
        raise ValueError(_unknown(folder))
    return fmt.load(os.fspath(folder), progress=progress)


def _unknown(folder) -> str:
    from .common import model_type_of

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return f"SRC {folder!r} is not a folder (a checkpoint folder with config.json and safetensors weights)"
    known = "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())
    return (
        f"SRC {folder!r} (config.json model_type {model_type_of(folder)!r}) is not in a format hf-seqmodels "
        f"converts. Known formats: {known}"
    )


def convert(src, dst, *, overwrite: bool = False, progress: bool = True) -> str:
    """Convert the checkpoint folder ``src`` (a known format: :data:`FORMATS`) into an hf-seqmodels folder ``dst``:
    safetensors weights, our config.json with ``auto_map``, a model card naming the source, and the tokenizer files
    ``src`` carries (without any, the card and the printed summary say a tokenizer must be added). Written through
    :func:`~hf_seqmodels.saving.safe_output_folder`: ``dst`` must not be or overlap ``src``; an existing non-empty
    ``dst`` needs ``overwrite`` and is replaced only once the new folder is complete. Returns ``dst``.

    Then ``AutoModelForCausalLM.from_pretrained(dst)`` (after ``import hf_seqmodels``) and
    ``pipeline("text-generation", model=dst)`` load it.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    fmt = detect_format(src)
    if fmt is None:
        raise ValueError(_unknown(src))
    with (
        safe_output_folder(dst, inputs=(src,), overwrite=overwrite, flag="DST") as tmp,
        transformers_progress_bars(progress),
    ):
        converted = fmt.load(src, progress=progress)
        lm_class = classes_for_config(converted.config)[2]
        if progress:
            print(f"converting {src} ({converted.description}) -> {lm_class.__name__}")
        model = lm_class.from_pretrained(None, config=converted.config, state_dict=converted.state_dict)
        model.card_data = converted.card_data
        model.save_pretrained(tmp)
        copied = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
        for name in copied:
            shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        tokenizer = f"copied from the source ({', '.join(copied)})" if copied else None
        if not copied and converted.tokenizer is not None:
            converted.tokenizer.save_pretrained(tmp)
            tokenizer = f"the format's {type(converted.tokenizer).__name__} (the source folder holds none)"
        with open(os.path.join(tmp, "README.md"), "a", encoding="utf-8") as f:
            f.write(_card_section(fmt, converted, tokenizer))
    print(
        f"wrote {dst}: {lm_class.__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"({next(model.parameters()).dtype}), converted from {converted.description}"
    )
    for note in converted.notes:
        print(f"  {note}")
    if tokenizer:
        print(f"  tokenizer: {tokenizer}")
    else:
        print(
            f"  {src} has no tokenizer files: save one into {dst} (tokenizer.save_pretrained) before using "
            "pipeline() or AutoTokenizer there"
        )
    return dst


def _card_section(fmt: CheckpointFormat, converted: Converted, tokenizer: str | None) -> str:
    lines = [
        "",
        "## Conversion",
        "",
        f"Converted by `hf-seqmodels convert` from `{converted.source}` (format `{fmt.name}`:",
        f"{converted.description}): the same computation under our names, the weights in their original dtype.",
        "",
    ]
    lines += [f"- {note}" for note in converted.notes]
    if tokenizer:
        lines.append(f"- tokenizer: {tokenizer}")
    else:
        lines.append(
            "- tokenizer: none in the source folder; this folder needs one (`tokenizer.save_pretrained(folder)`)"
        )
    lines.append("- saving this model again rewrites this card without this section")
    return "\n".join(lines) + "\n"


__all__ = ["FORMATS", "CheckpointFormat", "Converted", "register_format", "detect_format", "load_checkpoint", "convert"]
