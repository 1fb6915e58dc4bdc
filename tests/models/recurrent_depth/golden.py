"""Loader for the Huginn golden fixture (tests/fixtures/huginn, made by the reference model file; see its README)."""

import json
from pathlib import Path

from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "huginn"


def load_golden():
    """Returns (folder, meta, tensors).

    folder: the published-style checkpoint folder (config.json, model.safetensors) for `from_pretrained`.
    meta: golden.json (seed, config, versions, one entry per forward case and per generation run).
    tensors: every tensor of golden.safetensors by name (inputs "ids_7", "state_7", ...; outputs
    "forward.<case>.logits", "forward.<case>.latent_states", "generate.<run>.sequences", "generate.<run>.draw.<i>").
    """
    meta = json.loads((GOLDEN_DIR / "golden.json").read_text())
    return GOLDEN_DIR, meta, load_file(str(GOLDEN_DIR / "golden.safetensors"))


def forward_case(meta, tensors, name):
    """The inputs and reference outputs of one forward case, as tensors (None where the case has none)."""
    case = meta["forward"][name]
    prefix = f"forward.{name}."
    outputs = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    return {
        "input_ids": tensors[case["input_ids"]],
        "input_states": tensors[case["input_states"]] if case["input_states"] else None,
        "labels": tensors[case["labels"]] if case.get("labels") else None,
        "num_steps": tuple(case["num_steps"]) if isinstance(case["num_steps"], list) else case["num_steps"],
        "init_scale": case["init_scale"],
        "position_ids": case["position_ids"],
        "outputs": outputs,
    }


def generation_run(meta, tensors, name):
    """One generation run: its settings, the reference's sequences and the latents it drew, in order."""
    run = meta["generate"][name]
    draws = [tensors[f"generate.{name}.draw.{i}"] for i in range(run.get("num_draws", 0))]
    return run, tensors[f"generate.{name}.sequences"], draws
