"""``import hf_seqmodels`` registers every architecture with the Auto classes, under prefixed model types (and a
published checkpoint's own type where it names no transformers class), beside fla;
the kernels install as ``hf_seqmodels.kernels`` and never as a top-level ``kernels`` module."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch
from integration_utils import REPO_ROOT, build_lm, classes_for, random_ids
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import hf_seqmodels

PREFIX = "hf_seqmodels_"
#: unprefixed model types we register on purpose: a published checkpoint's own (remote-code) type, so that its folder
#: loads through the Auto classes without remote code; transformers has no class of that name
PUBLISHED_MODEL_TYPES = {"huginn_raven"}  # tomg-group-umd/huginn-0125 -> RecurrentDepthForCausalLM


@pytest.mark.subprocess
def test_import_registers_every_architecture_in_a_fresh_process(fresh_processes):
    """In an interpreter that has not imported hf_seqmodels (fresh_process_child.py, mode "import"), the Auto classes
    do not know our model types before ``import hf_seqmodels`` and map each to our classes after."""
    out = fresh_processes.report("import")["archs"]
    assert [o["model_type"] for o in out] == [c.model_type for c, _, _ in hf_seqmodels.ARCHITECTURES]
    for o in out:
        assert o["model_type"].startswith(PREFIX) or o["model_type"] in PUBLISHED_MODEL_TYPES, o
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


@pytest.mark.subprocess
@pytest.mark.skipif(
    importlib.util.find_spec("fla") is None,
    reason="flash-linear-attention is not installed (pip install flash-linear-attention==0.6.0; it imports on CPU)",
)
def test_fla_side_by_side(fresh_processes):
    """fla imported after hf_seqmodels (the "import" child) and before it (the "remote" child, whose loader files
    import hf_seqmodels): fla keeps its own ``gla``, our configs and models still resolve to our classes and run."""
    for mode, order in (("import", "ours-first"), ("remote", "fla-first")):
        out = fresh_processes.report(mode)["fla"]
        assert out["fla_config"] and out["fla_lm"], (order, out)
        assert len(out["ours"]) == len(fresh_processes.expected)
        for o in out["ours"]:
            assert o["config"].startswith("hf_seqmodels.") and o["registered"] and o["lm"] and o["finite"], (order, o)


def test_kernels_are_a_subpackage_and_no_top_level_kernels_module():
    import hf_seqmodels.kernels as kernels

    assert kernels.__name__ == "hf_seqmodels.kernels"
    assert callable(kernels.chunk_gla) and callable(kernels.fused_recurrent_gla)

    # What the installed distribution declares: only `hf_seqmodels` at the top level.
    dist = importlib.metadata.distribution("hf-seqmodels")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert "kernels" not in top_level, top_level
    assert "hf-seqmodels" not in importlib.metadata.packages_distributions().get("kernels", [])


@pytest.mark.subprocess
def test_no_top_level_kernels_module_of_ours_in_a_fresh_process(fresh_processes):
    """What an interpreter outside the repository finds (fresh_process_child.py, mode "import", in an empty directory;
    pytest's own sys.path holds the repository root, so only a fresh process can tell): no `kernels`, or one from
    another distribution (the kernel-hub library), never anything inside our package."""
    out = fresh_processes.report("import")["kernels"]
    ours = [str(REPO_ROOT / "kernels"), str(REPO_ROOT / "hf_seqmodels"), *out["package_dir"]]
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
