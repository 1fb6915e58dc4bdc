"""``import hf_seqmodels`` registers every architecture with the Auto classes, under prefixed model types, beside fla;
the kernels install as ``hf_seqmodels.kernels`` and never as a top-level ``kernels`` module."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import hf_seqmodels
from integration_utils import REPO_ROOT, build_lm, classes_for, clean_env, random_ids, run_python

PREFIX = "hf_seqmodels_"

# Runs in a fresh interpreter in an empty directory: the Auto classes do not know our model types before
# `import hf_seqmodels` and do after; and no top-level `kernels` module of ours is importable (pytest's own sys.path
# holds the repository root, where the kernels/ source folder lives, so only a fresh process can tell).
_FRESH_CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys
    from transformers import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING
    before = set(CONFIG_MAPPING.keys())
    assert "hf_seqmodels" not in sys.modules
    import hf_seqmodels
    import hf_seqmodels.kernels as k
    archs = []
    for config_class, model_class, lm_class in hf_seqmodels.ARCHITECTURES:
        t = config_class.model_type
        archs.append(dict(model_type=t, known_before=t in before, config=CONFIG_MAPPING[t] is config_class,
                          model=MODEL_MAPPING[config_class] is model_class,
                          lm=MODEL_FOR_CAUSAL_LM_MAPPING[config_class] is lm_class))
    s = importlib.util.find_spec("kernels")
    kernels = dict(origin=s and s.origin, locations=s and list(s.submodule_search_locations or []), ours=k.__file__,
                   package_dir=list(importlib.util.find_spec("hf_seqmodels").submodule_search_locations))
    print(json.dumps(dict(archs=archs, kernels=kernels)))
    """
)


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("fresh")
    return json.loads(run_python(["-c", _FRESH_CHILD], cwd=cwd).stdout.strip().splitlines()[-1])


def test_import_registers_every_architecture_in_a_fresh_process(fresh_process):
    out = fresh_process["archs"]
    assert [o["model_type"] for o in out] == [c.model_type for c, _, _ in hf_seqmodels.ARCHITECTURES]
    for o in out:
        assert o["model_type"].startswith(PREFIX), o
        assert not o["known_before"], f"{o['model_type']} was known to transformers before importing hf_seqmodels"
        assert o["config"] and o["model"] and o["lm"], o


def test_auto_classes_from_config(tiny_config):
    config_class, model_class, lm_class = classes_for(tiny_config)
    model_type = type(tiny_config).model_type
    assert model_type.startswith(PREFIX)

    fields = {k: v for k, v in tiny_config.to_dict().items() if k not in ("model_type", "transformers_version")}
    rebuilt = AutoConfig.for_model(model_type, **fields)
    assert type(rebuilt) is config_class
    assert rebuilt.to_dict() == tiny_config.to_dict()

    base = AutoModel.from_config(tiny_config).eval()
    lm = AutoModelForCausalLM.from_config(tiny_config).eval()
    assert type(base) is model_class and type(lm) is lm_class
    tied = lm.lm_head.weight is lm.get_input_embeddings().weight
    assert tied == bool(tiny_config.tie_word_embeddings)

    # AutoModel builds the same backbone the causal LM wraps: with the LM's weights it gives the LM's logits.
    missing, unexpected = base.load_state_dict(lm.model.state_dict(), strict=True)
    assert not missing and not unexpected
    ids = random_ids(tiny_config, 2, 9)
    with torch.no_grad():
        hidden = base(ids).last_hidden_state
        logits = lm(ids).logits
    assert hidden.shape == (2, 9, tiny_config.hidden_size)
    assert logits.shape == (2, 9, tiny_config.vocab_size)
    torch.testing.assert_close(lm.lm_head(hidden), logits, rtol=0, atol=0)


# Runs in a fresh interpreter with fla imported before or after hf_seqmodels: fla keeps its own `gla`, our configs
# and models still resolve to our classes and run on the CPU.
_FLA_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoConfig, AutoModelForCausalLM
    order, config_dirs = sys.argv[1], sys.argv[2:]
    if order == "fla-first":
        import fla; import hf_seqmodels
    else:
        import hf_seqmodels; import fla
    from fla.models import GLAConfig as FlaGLAConfig, GLAForCausalLM as FlaGLAForCausalLM
    fla_cfg = AutoConfig.for_model("gla", hidden_size=64, num_heads=2, num_hidden_layers=1, vocab_size=128)
    fla_lm = AutoModelForCausalLM.from_config(fla_cfg)
    out = dict(fla_config=type(fla_cfg) is FlaGLAConfig, fla_lm=type(fla_lm) is FlaGLAForCausalLM, ours=[])
    for d in config_dirs:
        cfg = AutoConfig.from_pretrained(d)
        entry = [e for e in hf_seqmodels.ARCHITECTURES if type(cfg) is e[0]]
        lm = AutoModelForCausalLM.from_config(cfg).eval()
        ids = torch.randint(3, cfg.vocab_size, (1, 5))
        with torch.no_grad():
            logits = lm(ids).logits
        out["ours"].append(dict(config=type(cfg).__module__ + "." + type(cfg).__name__, registered=len(entry) == 1,
                                lm=bool(entry) and type(lm) is entry[0][2], finite=bool(torch.isfinite(logits).all())))
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    importlib.util.find_spec("fla") is None,
    reason="flash-linear-attention is not installed (pip install flash-linear-attention==0.6.0; it imports on CPU)",
)
def test_fla_side_by_side(tmp_path, tiny_configs):
    dirs = []
    for name, factory in tiny_configs.items():
        factory().save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    # the two orders in parallel (each import of fla takes seconds)
    procs = {
        order: subprocess.Popen([sys.executable, "-c", _FLA_CHILD, order, *dirs], cwd=tmp_path, env=clean_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for order in ("fla-first", "ours-first")
    }
    for order, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{order}:\n{stdout[-3000:]}\n{stderr[-6000:]}"
        out = json.loads(stdout.strip().splitlines()[-1])
        assert out["fla_config"] and out["fla_lm"], (order, out)
        assert len(out["ours"]) == len(tiny_configs)
        for o in out["ours"]:
            assert o["config"].startswith("hf_seqmodels.") and o["registered"] and o["lm"] and o["finite"], (order, o)


def test_kernels_are_a_subpackage_and_no_top_level_kernels_module(fresh_process):
    import hf_seqmodels.kernels as kernels

    assert kernels.__name__ == "hf_seqmodels.kernels"
    assert callable(kernels.chunk_gla) and callable(kernels.fused_recurrent_gla)

    # What the installed distribution declares: only `hf_seqmodels` at the top level.
    dist = importlib.metadata.distribution("hf-seqmodels")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert "kernels" not in top_level, top_level
    assert "hf-seqmodels" not in importlib.metadata.packages_distributions().get("kernels", [])

    # What an interpreter outside the repository finds: no `kernels`, or one from another distribution (the
    # kernel-hub library), never our kernels/ folder or anything inside our package.
    out = fresh_process["kernels"]
    ours = [str(REPO_ROOT / "kernels"), *out["package_dir"]]
    found = [p for p in [out["origin"], *(out["locations"] or [])] if p]
    for path in found:
        assert not any(path.startswith(o) for o in ours), f"a top-level `kernels` module of ours is importable: {out}"
    assert out["ours"].endswith("__init__.py")


def test_return_dict_false_and_config_output_hidden_states(tiny_config):
    """Tuples for ``return_dict=False`` (or ``config.return_dict = False``) and hidden states when the config asks."""
    lm = build_lm(tiny_config)
    ids = random_ids(tiny_config, 2, 7)
    with torch.no_grad():
        full = lm(ids, labels=ids, use_cache=False)
        loss, logits = lm(ids, labels=ids, use_cache=False, return_dict=False)[:2]
        torch.testing.assert_close(loss, full.loss)
        torch.testing.assert_close(logits, full.logits)
        lm.config.return_dict = False
        assert isinstance(lm(ids, use_cache=False), tuple)
        assert isinstance(lm.model(ids, use_cache=False), tuple)
        lm.config.return_dict = True
        lm.config.output_hidden_states = True
        out = lm(ids, use_cache=False)
    assert out.hidden_states is not None and out.hidden_states[-1].shape[:2] == (2, 7)
