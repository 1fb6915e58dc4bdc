"""What ``save_pretrained`` writes for the Hub, bit-exact safetensors round trips, loading in a fresh process (with
``trust_remote_code=True`` and no prior import, or with a plain ``import hf_seqmodels``), and never unpickling."""

from __future__ import annotations

import ast
import json
import os

import pytest
import torch
import yaml
from integration_utils import assert_logits_close, build_lm, classes_for, random_ids
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM

from hf_seqmodels.hub import CONFIG_FILE, MODELING_FILE

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _front_matter(readme: str) -> dict:
    lines = readme.splitlines()
    assert lines[0] == "---", "README.md must start with YAML front matter"
    end = lines.index("---", 1)
    meta = yaml.safe_load("\n".join(lines[1:end]))
    assert isinstance(meta, dict), meta
    return meta


def _imports_of(path) -> list[tuple[str, str]]:
    """(module, name) of every import in a loader file, which must hold nothing but a docstring and imports."""
    tree = ast.parse(open(path).read())
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # docstring
    out = []
    for node in body:
        assert isinstance(node, ast.ImportFrom), f"{path} executes more than imports: {ast.dump(node)[:200]}"
        out += [(node.module, alias.name) for alias in node.names]
    return out


def test_save_pretrained_writes_hub_files(tiny_config, tmp_path):
    config_class, model_class, lm_class = classes_for(tiny_config)
    model = build_lm(tiny_config)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", CONFIG_FILE, MODELING_FILE, "README.md"} <= files, files
    assert not [f for f in files if f.endswith(PICKLE_SUFFIXES)], f"pickle files written: {files}"

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == config_class.model_type
    assert config["architectures"] == [lm_class.__name__]
    assert config["auto_map"] == {
        "AutoConfig": f"{CONFIG_FILE[:-3]}.{config_class.__name__}",
        "AutoModel": f"{MODELING_FILE[:-3]}.{model_class.__name__}",
        "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{lm_class.__name__}",
    }
    # The loader files only import the very classes auto_map names, from the installed package.
    assert _imports_of(tmp_path / CONFIG_FILE) == [(config_class.__module__, config_class.__name__)]
    assert _imports_of(tmp_path / MODELING_FILE) == [
        (model_class.__module__, model_class.__name__),
        (lm_class.__module__, lm_class.__name__),
    ]
    assert all(module.startswith("hf_seqmodels.") for module, _ in _imports_of(tmp_path / MODELING_FILE))

    readme = (tmp_path / "README.md").read_text()
    meta = _front_matter(readme)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"
    arch = config_class.model_type.removeprefix("hf_seqmodels_")
    assert isinstance(meta["tags"], list) and {"hf-seqmodels", arch} <= set(meta["tags"]), meta["tags"]
    assert "base_model" not in meta, "a model trained from scratch has no base_model"
    assert lm_class.__name__ in readme

    # safetensors holds every parameter bit-exact, stored once (a tied head is not written twice).
    state = model.state_dict()
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
        assert f.metadata().get("format") == "pt"
    tied = {"lm_head.weight"} if tiny_config.tie_word_embeddings else set()
    assert set(stored) == set(state) - tied
    for k, t in stored.items():
        assert torch.equal(t, state[k]), k


def test_model_card_names_a_base_model_when_there_is_one(tiny_config, tmp_path):
    model = build_lm(tiny_config)
    model.config.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M"
    model.save_pretrained(tmp_path)
    assert _front_matter((tmp_path / "README.md").read_text())["base_model"] == "HuggingFaceTB/SmolLM2-135M"


def test_safetensors_round_trip_is_bit_exact(tiny_config, tmp_path):
    config_class, model_class, lm_class = classes_for(tiny_config)
    model = build_lm(tiny_config, perturb=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is lm_class
    assert (loaded.lm_head.weight is loaded.get_input_embeddings().weight) == bool(tiny_config.tie_word_embeddings)

    ref, got = model.state_dict(), loaded.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), f"{k} changed in the round trip"
    ids = random_ids(tiny_config, 2, 11)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
        # AutoModel loads the backbone out of the causal-LM checkpoint (prefix "model.").
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is model_class
        assert torch.equal(base(ids).last_hidden_state, model.model(ids).last_hidden_state)


@pytest.mark.subprocess
def test_fresh_process_loads_with_remote_code(fresh_processes):
    """The saved folders of every tiny config, loaded through their loader files (trust_remote_code=True) by an
    interpreter that never imported hf_seqmodels (fresh_process_child.py, mode "remote")."""
    report = fresh_processes.report("remote")
    assert report["refused_without_trust"] and not report["imported_without_trust"], report
    _check_loads(fresh_processes, "remote", report)


@pytest.mark.subprocess
def test_fresh_process_loads_with_plain_import(fresh_processes):
    """The same folders loaded after a plain ``import hf_seqmodels`` (mode "import")."""
    _check_loads(fresh_processes, "import", fresh_processes.report("import"))


def _check_loads(fresh, mode, report):
    assert report["loads"] == fresh.classes, (mode, report["loads"])
    for name, logits in fresh.expected.items():
        # the same weights in another process: equal up to float rounding (matmul paths may differ there)
        assert_logits_close(fresh.logits(name, mode), logits, f"{mode}/{name} (seed={fresh.seed})")


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_loading_never_unpickles(tiny_config, tmp_path):
    model = build_lm(tiny_config)
    # A folder whose only weights are a benign pytorch_model.bin: refused (safetensors only), not unpickled.
    benign = tmp_path / "benign"
    model.config.save_pretrained(benign)
    torch.save(model.state_dict(), benign / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        AutoModelForCausalLM.from_pretrained(benign)

    # A malicious pytorch_model.bin: its code never runs, by default or when .bin loading is explicitly allowed
    # (torch's weights-only unpickler refuses the call).
    evil, marker = tmp_path / "evil", tmp_path / "payload_ran"
    model.config.save_pretrained(evil)
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, evil / "pytorch_model.bin")
    for kwargs in ({}, {"use_safetensors": False}):
        with pytest.raises(Exception):
            AutoModelForCausalLM.from_pretrained(evil, **kwargs)
        assert not marker.exists(), f"from_pretrained({kwargs}) executed pickled code"
    # The payload is live: a plain unpickling runs it (so the checks above can fail).
    torch.load(evil / "pytorch_model.bin", weights_only=False)
    assert marker.exists()
