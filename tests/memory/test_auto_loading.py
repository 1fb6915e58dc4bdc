"""A folder saved with a memory bank never loads as the bare anchor by accident: its config.json says it is a memory
model (``model_type`` ``hf_seqmodels_memory``), so after ``import hf_seqmodels`` the Auto classes and ``pipeline``
load anchor + bank, and transformers alone refuses it (or, with ``trust_remote_code=True``, loads anchor + bank).
Checked for an anchor of this package (GLA) and for transformers' Llama, whose class we do not own."""

import json
import os
import subprocess
import sys

import pytest
import torch
from memory_helpers import MODELS, ByteTokenizer, corpus, randomize_bank
from transformers import AutoConfig, AutoModelForCausalLM, pipeline

import hf_seqmodels
from hf_seqmodels.memory import (
    MemoryBankConfig,
    attach_memory_bank,
    build_memory_index,
    detach_memory_bank,
    load_memory_model,
    memory_disabled,
)

TEXTS = corpus(6)
NEW = ["The element qq1 has atomic number 77.", "def h(z):\n    return z", "The river Oda flows past 3 villages"]


@pytest.fixture(scope="module")
def index():
    return build_memory_index(TEXTS, levels=2, branching=3, embed_dim=64, progress=False)


def saved(tmp_path, index, arch, tok):
    model = MODELS[arch]()
    attach_memory_bank(model, MemoryBankConfig(block_sizes=(5, 3), branching=3), index, tokenizer=tok)
    randomize_bank(model, 0.3)
    out = tmp_path / arch
    model.save_pretrained(out)
    return model, out


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_auto_class_loads_anchor_and_bank(tmp_path, index, arch):
    tok = ByteTokenizer()
    model, out = saved(tmp_path, index, arch, tok)
    anchor_type = model.config.model_type
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hf_seqmodels_memory"
    assert config["memory_bank"]["anchor_model_type"] == anchor_type
    assert config["memory_bank"]["load_with"] == "hf_seqmodels.memory.load_memory_model"
    card = (out / "README.md").read_text()
    assert "## Memory bank" in card and "load_memory_model" in card and "hf_seqmodels_memory" in card

    loaded = AutoModelForCausalLM.from_pretrained(out, tokenizer=tok)
    assert type(loaded) is type(model) and loaded.config.model_type == anchor_type
    assert not loaded.memory_bank.trainable  # load_memory_model's default: the bank stays on disk
    enc = tok(NEW)
    with torch.no_grad():
        want = model(**enc).logits
        with memory_disabled(model):
            bare = model(**enc).logits
        got = loaded(**enc).logits
    assert (want - bare).abs().max() > 1e-2  # the bank matters here, so loading without it would show
    assert torch.equal(got, want)
    assert torch.equal(loaded.memory_index.route(NEW), model.memory_index.route(NEW))

    # the same through load_memory_model, and the anchor's own config back after detaching
    again = load_memory_model(out, tokenizer=tok, trainable=True)
    with torch.no_grad():
        assert torch.equal(again(**enc).logits, want)
    bare_model = detach_memory_bank(again)
    assert bare_model.config.model_type == anchor_type
    with torch.no_grad():
        assert torch.equal(bare_model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits, bare)
    assert isinstance(AutoConfig.from_pretrained(out), hf_seqmodels.memory.MemoryModelConfig)

    # re-saving a loaded model keeps it a memory model
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == "hf_seqmodels_memory"
    with torch.no_grad():
        assert torch.equal(load_memory_model(tmp_path / "again", tokenizer=tok)(**enc).logits, want)


def test_detached_model_saves_as_the_plain_anchor(tmp_path, index):
    tok = ByteTokenizer()
    model, _ = saved(tmp_path, index, "llama", tok)
    detach_memory_bank(model).save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["model_type"] == "llama" and "memory_bank" not in config


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_pipeline_generates_with_the_bank(tmp_path, index, arch):
    tok = hf_seqmodels.ByteTokenizer()  # a tokenizer saved in the folder: both the pipeline and routing load it
    model, out = saved(tmp_path, index, arch, tok)
    tok.save_pretrained(out)
    prompt = "The river Oda flows"
    ids = tok([prompt], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        with memory_disabled(model):
            bare = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert not torch.equal(want, bare)
    pipe = pipeline("text-generation", model=str(out))
    assert hasattr(pipe.model, "memory_bank")
    text = pipe(prompt, max_new_tokens=6, do_sample=False, return_full_text=True)[0]["generated_text"]
    assert text == tok.decode(want[0], skip_special_tokens=True)


def test_old_folder_without_the_marker_still_loads(tmp_path, index):
    """Folders saved before config.json was marked hold the anchor's own config: load_memory_model reads them."""
    tok = ByteTokenizer()
    model, out = saved(tmp_path, index, "llama", tok)
    config = json.loads((out / "config.json").read_text())
    marker = config.pop("memory_bank")
    config.update(model_type=marker["anchor_model_type"], architectures=marker["anchor_architectures"])
    config.pop("auto_map", None)
    (out / "config.json").write_text(json.dumps(config))
    enc = tok(NEW)
    with torch.no_grad():
        assert torch.equal(load_memory_model(out, tokenizer=tok)(**enc).logits, model(**enc).logits)


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda c: c["memory_bank"].update(anchor_model_type="no_such_model"),
            "anchor_model_type 'no_such_model' is not",
        ),
        (lambda c: c.pop("memory_bank"), "needs a 'memory_bank' entry"),
    ],
)
@pytest.mark.parametrize("load", ["load_memory_model", "auto"])
def test_a_damaged_marker_is_a_clear_error(tmp_path, index, damage, match, load):
    tok = ByteTokenizer()
    _, out = saved(tmp_path, index, "llama", tok)
    config = json.loads((out / "config.json").read_text())
    damage(config)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        if load == "auto":
            AutoModelForCausalLM.from_pretrained(out, tokenizer=tok)
        else:
            load_memory_model(out, tokenizer=tok)


CHILD = """
import sys
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1])
except ValueError as err:
    print("REFUSED:", " ".join(str(err).split())[:300])
else:
    print("LOADED THE BARE ANCHOR")
assert "hf_seqmodels" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
print("REMOTE:", type(model).__name__, type(model.memory_bank).__name__)
"""


@pytest.mark.subprocess
def test_transformers_alone_refuses_a_llama_with_memory(tmp_path, index):
    """Without hf_seqmodels imported nothing of ours runs, so config.json itself must stop the bare load."""
    _, out = saved(tmp_path, index, "llama", ByteTokenizer())
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }  # the loader files are copied there
    res = subprocess.run([sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "REFUSED:" in res.stdout and "trust_remote_code" in res.stdout, res.stdout
    assert "REMOTE: LlamaForCausalLM MemoryBank" in res.stdout, res.stdout
