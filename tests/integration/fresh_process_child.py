"""Run by the ``fresh_processes`` fixture (conftest.py) as ``python -c <this file's text> MODE ROOT`` in an empty
directory: an interpreter that has not imported hf_seqmodels. ROOT/spec.json names the saved model folders under ROOT
(each holds ``inputs.safetensors``) and whether flash-linear-attention (fla) is installed. Prints one JSON report as
its last line and writes ``logits_<MODE>.safetensors`` into every model folder.

MODE "import" (hf_seqmodels imported before fla):
  archs    the Auto classes do not know our model types before ``import hf_seqmodels`` and map them to our classes after
  kernels  where a top-level ``kernels`` module would come from (none of ours may be importable)
  loads    each folder loaded after a plain ``import hf_seqmodels`` (no remote code)
  fla      fla imported after hf_seqmodels: fla keeps its own ``gla``, our configs still resolve to our classes
MODE "remote" (fla imported before hf_seqmodels):
  refused_without_trust, imported_without_trust   the loader files are not run without trust_remote_code=True
  loads    each folder loaded with trust_remote_code=True, hf_seqmodels never imported by us
  fla      as above, fla having been imported first
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING, AutoConfig, AutoModelForCausalLM


def registry(before):
    import hf_seqmodels

    archs = []
    for config_class, model_class, lm_class in hf_seqmodels.ARCHITECTURES:
        t = config_class.model_type
        archs.append(
            dict(
                model_type=t,
                known_before=t in before,
                config=CONFIG_MAPPING[t] is config_class,
                model=MODEL_MAPPING[config_class] is model_class,
                lm=MODEL_FOR_CAUSAL_LM_MAPPING[config_class] is lm_class,
            )
        )
    return archs


def kernels_spec():
    import hf_seqmodels.kernels as k

    s = importlib.util.find_spec("kernels")
    return dict(
        origin=s and s.origin,
        locations=s and list(s.submodule_search_locations or []),
        ours=k.__file__,
        package_dir=list(importlib.util.find_spec("hf_seqmodels").submodule_search_locations),
    )


def load_all(mode, root, names, **kwargs):
    loads = {}
    for name in names:
        model = AutoModelForCausalLM.from_pretrained(f"{root}/{name}", **kwargs).eval()
        ids = load_file(f"{root}/{name}/inputs.safetensors")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits
        save_file({"logits": logits.contiguous()}, f"{root}/{name}/logits_{mode}.safetensors")
        loads[name] = type(model).__module__ + "." + type(model).__name__
    return loads


def fla_side_by_side(root, names):
    from fla.models import GLAConfig as FlaGLAConfig
    from fla.models import GLAForCausalLM as FlaGLAForCausalLM

    import hf_seqmodels

    fla_cfg = AutoConfig.for_model("gla", hidden_size=64, num_heads=2, num_hidden_layers=1, vocab_size=128)
    fla_lm = AutoModelForCausalLM.from_config(fla_cfg)
    out = dict(fla_config=type(fla_cfg) is FlaGLAConfig, fla_lm=type(fla_lm) is FlaGLAForCausalLM, ours=[])
    for name in names:
        cfg = AutoConfig.from_pretrained(f"{root}/{name}")
        entry = [e for e in hf_seqmodels.ARCHITECTURES if type(cfg) is e[0]]
        lm = AutoModelForCausalLM.from_config(cfg).eval()
        ids = torch.randint(3, cfg.vocab_size, (1, 5))
        with torch.no_grad():
            logits = lm(ids).logits
        out["ours"].append(
            dict(
                config=type(cfg).__module__ + "." + type(cfg).__name__,
                registered=len(entry) == 1,
                lm=bool(entry) and type(lm) is entry[0][2],
                finite=bool(torch.isfinite(logits).all()),
            )
        )
    return out


def main():
    mode, root = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(root, "spec.json").read_text())
    names = spec["names"]
    assert "hf_seqmodels" not in sys.modules
    report = dict(mode=mode)
    if mode == "import":
        before = set(CONFIG_MAPPING.keys())
        report["archs"] = registry(before)
        report["kernels"] = kernels_spec()
        report["loads"] = load_all(mode, root, names)
        if spec["fla"]:
            import fla  # noqa: F401

            report["fla"] = fla_side_by_side(root, names)
    elif mode == "remote":
        if spec["fla"]:
            import fla  # noqa: F401
        try:  # without consent the loader files are not run
            AutoModelForCausalLM.from_pretrained(f"{root}/{names[0]}", trust_remote_code=False)
            report["refused_without_trust"] = False
        except ValueError:
            report["refused_without_trust"] = True
        report["imported_without_trust"] = "hf_seqmodels" in sys.modules
        report["loads"] = load_all(mode, root, names, trust_remote_code=True)
        if spec["fla"]:
            report["fla"] = fla_side_by_side(root, names)
    else:
        raise SystemExit(f"MODE must be 'import' or 'remote', not {mode!r}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
