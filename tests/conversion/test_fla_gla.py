"""fla's GLA checkpoints load into our GLAForCausalLM (``from_pretrained(fla_folder)`` and ``hf-seqmodels convert``)
and compute what fla computes.

External reference: fla itself (flash-linear-attention, which imports on a CPU): its GLAForCausalLM, built from a
small config, saved with its own ``save_pretrained``, run with its Triton-only pieces swapped for plain torch ones,
fla's own references where it has them (the list is in ``fla_reference.py``: naive_recurrent_gla for the GLA
kernels, rms_norm_ref for RMSNorm and the gated norm, F.silu for the output gate and SwiGLU, torch's Conv1d for the
short convolution). Logits must agree in fp32 (rel < 1e-5), and greedy generation with our cache must equal fla's
greedy decoding by full recomputation, for each layout fla has written. The fused MLP of fla before February 2025
(one ``gate_proj`` [2I, H]) and the ``rms_norm_eps`` of configs before May 2024 are produced by rewriting what
current fla saved.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("fla", reason="flash-linear-attention is not installed (it imports on a CPU)")

from fla_reference import fla_gla_model, fla_on_cpu, greedy, rel_err, word_tokenizer  # noqa: E402

import hf_seqmodels  # noqa: E402,F401  (registers the architectures and the checkpoint formats)
from hf_seqmodels import GLAForCausalLM  # noqa: E402
from hf_seqmodels.conversion import convert, detect_format  # noqa: E402

VOCAB = 61
BASE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2, bos_token_id=1, eos_token_id=2)

LAYOUTS = {
    # fused gated norm (g_norm_swish_gate), split MLP, untied, intermediate_size from fla's rule (2/3*32*4 -> 256)
    "fused_norm": dict(norm_eps=0.05),
    # unfused gated norm (g_norm, the gate applied apart), tied embeddings, hidden_ratio 2 (rule: 43 -> 256)
    "unfused_norm_tied": dict(fuse_norm=False, tie_word_embeddings=True, hidden_ratio=2, norm_eps=0.02),
    # short convolutions on q, k, v; one key/value head for two query heads; an explicit MLP width; expand_k 1
    "short_conv_kv_heads": dict(
        use_short_conv=True, conv_size=3, num_kv_heads=1, intermediate_size=40, expand_k=1.0, norm_eps=1e-3
    ),
    # gated norms without weights
    "no_affine": dict(elementwise_affine=False, intermediate_size=48),
    # before February 2025: one fused gate_proj [2I, H]; before May 2024: rms_norm_eps
    "old_fused_mlp_rms_norm_eps": dict(norm_eps=0.03, intermediate_size=40),
}


@pytest.fixture(scope="module")
def fla_cpu():
    with fla_on_cpu():
        yield


def save_fla(folder, layout: str, tokenizer: bool = False, **extra):
    """fla's model for ``layout`` saved (by fla) into ``folder``; returns the model, in eval mode."""
    model = fla_gla_model(**{**BASE, **LAYOUTS[layout], **extra})
    model.save_pretrained(folder)
    if layout == "old_fused_mlp_rms_norm_eps":
        _rewrite_as_old(folder)
    if tokenizer:
        word_tokenizer(VOCAB, folder)
    return model


def _rewrite_as_old(folder):
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    for name in [n for n in state if n.endswith("mlp.up_proj.weight")]:
        gate = name.replace("up_proj", "gate_proj")
        state[gate] = torch.cat([state[gate], state.pop(name)], 0)  # [2I, H]: gate rows, then up rows
    save_file(state, path, metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["rms_norm_eps"] = cfg.pop("norm_eps")
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))


def edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    cfg = json.load(open(path))
    for key, value in changes.items():
        if value is _DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    json.dump(cfg, open(path, "w"))


_DELETE = object()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_logits_and_greedy_generation_match_fla(tmp_path, fla_cpu, layout):
    fla_model = save_fla(tmp_path, layout)
    if layout == "old_fused_mlp_rms_norm_eps":
        keys = load_file(tmp_path / "model.safetensors")
        assert "model.layers.0.mlp.up_proj.weight" not in keys
        assert keys["model.layers.0.mlp.gate_proj.weight"].shape == (80, 32)
    ours = GLAForCausalLM.from_pretrained(tmp_path).eval()
    assert ours.config.tie_word_embeddings == bool(LAYOUTS[layout].get("tie_word_embeddings", False))
    ids = torch.randint(3, VOCAB, (2, 37))
    with torch.no_grad():
        expected = fla_model(input_ids=ids, use_cache=False).logits
        got = ours(input_ids=ids).logits
    assert rel_err(got, expected) < 1e-5
    prompt = ids[:, :9]
    want = greedy(fla_model, prompt, 7)
    ours.generation_config.eos_token_id = None  # the reference does not stop at EOS either
    out = ours.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=7, do_sample=False)
    assert torch.equal(out, want)


def test_kv_heads_are_repeated_per_query_head(tmp_path, fla_cpu):
    """num_kv_heads < num_heads with several key/value heads: fla repeats each shared head in place
    (``(h d) -> (h g) d``), so query heads 0, 1 read key head 0 and 2, 3 read key head 1; the weights are repeated
    the same way (a tiled repeat, 0 1 0 1, would fail here and in the logits)."""
    fla_model = save_fla(tmp_path, "short_conv_kv_heads", num_heads=4, num_kv_heads=2)
    ours = GLAForCausalLM.from_pretrained(tmp_path)
    src = fla_model.model.layers[0].attn.k_proj.weight  # [2 key heads * 8, 32] (key width 32, 4 heads of 8)
    got = ours.model.layers[0].mixer.k_proj.weight  # [4 heads * 8, 32]
    assert src.shape == (16, 32) and got.shape == (32, 32)
    assert torch.equal(got, src.reshape(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32))
    ids = torch.randint(3, VOCAB, (1, 21))
    with torch.no_grad():
        assert rel_err(ours(input_ids=ids).logits, fla_model(input_ids=ids, use_cache=False).logits) < 1e-5


REFUSED = [
    ("feature_map", "relu"),
    ("clamp_min", -1.0),
    ("use_output_gate", False),
    ("hidden_act", "powlu"),
    ("attn", {"layers": [1], "num_heads": 2, "num_kv_heads": 2}),
    ("attnres_block_size", 2),
    ("attn_mode", "parallel"),
]


@pytest.mark.parametrize("option,value", REFUSED, ids=[o for o, _ in REFUSED])
def test_unsupported_options_are_refused_by_name(tmp_path, fla_cpu, option, value):
    save_fla(tmp_path, "fused_norm")
    edit_config(tmp_path, **{option: value})
    with pytest.raises(ValueError, match=rf"{option}={value!r}".replace("[", r"\[").replace("(", r"\(")):
        GLAForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=option):
        convert(tmp_path, tmp_path.parent / f"out-{option}", progress=False)
    assert not (tmp_path.parent / f"out-{option}").exists()


def test_old_layouts_are_refused_by_name(tmp_path, fla_cpu):
    save_fla(tmp_path, "short_conv_kv_heads")
    edit_config(tmp_path, share_conv_kernel=True)  # mid-2024: one convolution on the hidden states
    with pytest.raises(ValueError, match="share_conv_kernel=True"):
        GLAForCausalLM.from_pretrained(tmp_path)
    edit_config(tmp_path, share_conv_kernel=_DELETE, num_heads=_DELETE, num_attention_heads=2)  # February 2024
    with pytest.raises(ValueError, match="num_attention_heads=2"):
        GLAForCausalLM.from_pretrained(tmp_path)
    edit_config(tmp_path, num_heads=2, num_attention_heads=_DELETE)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    state["model.layers.0.attn.q_conv1d.bias"] = torch.zeros(16)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="conv_bias"):
        GLAForCausalLM.from_pretrained(tmp_path)


def test_unknown_or_missing_weights_are_named(tmp_path, fla_cpu):
    save_fla(tmp_path, "fused_norm")
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    del state["model.layers.1.attn.o_proj.weight"]
    state["model.layers.0.attn.extra.weight"] = torch.zeros(2)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.attn\.extra\.weight"):
        GLAForCausalLM.from_pretrained(tmp_path)
    del state["model.layers.0.attn.extra.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \[model\.layers\.1\.mixer\.o_proj\.weight\]"):
        GLAForCausalLM.from_pretrained(tmp_path)


def test_pickle_only_folder_is_refused(tmp_path, fla_cpu):
    model = fla_gla_model(**BASE)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # as older transformers saved by default
    assert (tmp_path / "pytorch_model.bin").is_file() and not list(tmp_path.glob("*.safetensors"))
    assert detect_format(tmp_path) is not None
    with pytest.raises(ValueError, match="pickle"):
        GLAForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pickle"):
        convert(tmp_path, tmp_path.parent / "out", progress=False)
    assert not (tmp_path.parent / "out").exists()


def test_wrong_class_is_named(tmp_path, fla_cpu):
    from hf_seqmodels import LigerForCausalLM

    save_fla(tmp_path, "fused_norm")
    with pytest.raises(ValueError, match="converts to GLAForCausalLM, not LigerForCausalLM"):
        LigerForCausalLM.from_pretrained(tmp_path)


def test_our_config_refuses_an_fla_config(tmp_path, fla_cpu):
    """The path a Hub id takes (config first): our GLAConfig would read fla's fields wrongly (``norm_eps``...)."""
    from hf_seqmodels import GLAConfig

    save_fla(tmp_path, "fused_norm")
    with pytest.raises(ValueError, match="fla GLA .*model_type 'gla'.*hf-seqmodels convert"):
        GLAConfig.from_pretrained(tmp_path)


def test_convert_round_trip_auto_class_and_pipeline(tmp_path, fla_cpu):
    from transformers import AutoModelForCausalLM, pipeline

    src, dst = tmp_path / "fla", tmp_path / "ours"
    fla_model = save_fla(src, "unfused_norm_tied", tokenizer=True)
    convert(src, dst, progress=False)
    names = set(os.listdir(dst))
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    config = json.load(open(dst / "config.json"))
    assert config["model_type"] == "hf_seqmodels_gla" and "AutoModelForCausalLM" in config["auto_map"]
    card = (dst / "README.md").read_text()
    assert "## Conversion" in card and str(src) in card and "fla GLA" in card
    model = AutoModelForCausalLM.from_pretrained(dst).eval()
    assert type(model) is GLAForCausalLM
    ids = torch.randint(3, VOCAB, (2, 23))
    with torch.no_grad():
        assert rel_err(model(input_ids=ids).logits, fla_model(input_ids=ids, use_cache=False).logits) < 1e-5
    generator = pipeline("text-generation", model=str(dst))
    generator.model.generation_config.eos_token_id = None  # the reference does not stop at EOS either
    out = generator("w5 w9 w17", max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    prompt = word_tokenizer(VOCAB)("w5 w9 w17", return_tensors="pt").input_ids
    assert list(out) == greedy(fla_model, prompt, 4)[0].tolist()


def test_convert_command(tmp_path, fla_cpu, capsys):
    from hf_seqmodels.commands.main import main

    src, dst = tmp_path / "fla", tmp_path / "ours"
    save_fla(src, "fused_norm")
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "GLAForCausalLM" in out and "no tokenizer files" in out
    assert "needs one" in (dst / "README.md").read_text()
    with pytest.raises(SystemExit) as exit_info:  # DST exists and is not empty
        main(["convert", str(src), str(dst), "--no-progress"])
    assert exit_info.value.code == 2
    assert "DST" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # DST inside SRC
        main(["convert", str(src), str(src / "sub"), "--no-progress"])
    assert "is inside the input" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--no-progress", "--overwrite"]) == 0
    with pytest.raises(SystemExit):  # not a known format: our own folder
        main(["convert", str(dst), str(tmp_path / "again"), "--no-progress"])
    assert "not in a format hf-seqmodels converts" in capsys.readouterr().err
