"""Lizard: conversion (Llama weights + new parameters), decoding with the cache, attention transfer, LoRA, save/load."""

import pytest
import torch
from tiny_llama import tiny_llama as shared_tiny_llama
from transformers import AutoModelForCausalLM

import hf_seqmodels  # noqa: F401
from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.layers.lizard import HedgehogFeatureMap, LizardAttention
from hf_seqmodels.linearize import add_lora, attention_transfer, finetune, linearize
from hf_seqmodels.linearize.train import TRANSFER_PARAMETERS
from hf_seqmodels.models.lizard import LizardConfig, LizardForCausalLM

NEW_PARAMETERS = {
    "q_feature_map.weight",
    "k_feature_map.weight",
    "decay_proj.weight",
    "decay_proj.bias",
    "sink_logits",
    "window_weight",
}


def tiny_llama(**overrides):
    return shared_tiny_llama(**{"tie_word_embeddings": True, **overrides})


def test_llama_weights_plus_documented_new_parameters():
    llama = tiny_llama()
    model = linearize(llama, "lizard", window_size=8, num_sinks=3)
    assert isinstance(model, LizardForCausalLM) and model.config.model_type == "hf_seqmodels_lizard"
    names = set(model.state_dict())
    llama_names = set(llama.state_dict())
    assert llama_names <= names
    assert {n.split("self_attn.")[-1] for n in names - llama_names} == NEW_PARAMETERS
    for name, p in llama.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name
    mixer = model.model.layers[0].self_attn
    assert mixer.sink_logits.shape == (6, 3) and torch.all(mixer.sink_logits == -4.0)
    assert torch.all(mixer.window_weight == 1.0)
    assert mixer.q_feature_map.weight.shape == (6, 8, 8) and mixer.k_feature_map.weight.shape == (2, 8, 8)
    assert torch.equal(mixer.q_feature_map.weight[3], torch.eye(8))  # identity init


def test_hedgehog_feature_map_is_two_softmaxes():
    fmap = HedgehogFeatureMap(num_heads=3, head_dim=4, feature_dim=5)
    fmap.init_extra_weights()
    x = torch.randn(2, 7, 3, 4)
    phi = fmap(x)
    assert phi.shape == (2, 7, 3, 10) and (phi > 0).all()
    torch.testing.assert_close(phi.sum(-1), torch.full((2, 7, 3), 2.0))
    z = torch.cat([x, torch.zeros(2, 7, 3, 1)], -1)  # the identity init pads the extra feature with zeros
    torch.testing.assert_close(phi, torch.cat([z.softmax(-1), (-z).softmax(-1)], -1))


def test_decoding_with_cache_equals_full_forward():
    model = linearize(tiny_llama(), "lizard", window_size=4).double()
    with torch.no_grad():  # move the new parameters off their init so every one of them matters
        for n, p in model.named_parameters():
            if any(t in n for t in TRANSFER_PARAMETERS):
                p.add_(torch.randn_like(p) * 0.3)
    ids = torch.randint(3, 96, (2, 15))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache, outs, seen = RecurrentCache(2), [], 0
        for n in (5, 1, 1, 4, 1, 1, 1, 1):
            outs.append(
                model(ids[:, seen : seen + n], attention_mask=mask[:, : seen + n], cache=cache, use_cache=True).logits
            )
            seen += n
    stepped = torch.cat(outs, 1)
    torch.testing.assert_close(stepped[0, 4:], full[0, 4:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stepped[1], full[1], rtol=1e-10, atol=1e-10)


def test_attention_transfer_trains_only_new_parameters_against_the_teacher_in_one_pass():
    llama = tiny_llama()
    model = linearize(llama, "lizard", window_size=4)
    ids = torch.randint(3, 96, (2, 20))
    mixers = [m for m in model.modules() if isinstance(m, LizardAttention)]
    for m in mixers:
        m.attention_transfer = True
    with torch.no_grad():  # in transfer mode every layer passes the teacher's output on: the logits are the Llama's
        torch.testing.assert_close(model(ids, use_cache=False).logits, llama(ids).logits, rtol=1e-5, atol=1e-5)
    assert all(m.transfer_loss is not None and m.transfer_loss > 0 for m in mixers)
    for m in mixers:
        m.attention_transfer = False
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    blocks = torch.randint(3, 96, (6, 24))
    losses = attention_transfer(model, blocks, steps=30, lr=3e-2, batch_size=2, progress=False)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == any(t in n for t in TRANSFER_PARAMETERS), n
        assert p.requires_grad  # requires_grad restored afterwards
    assert all(not m.attention_transfer and m.transfer_loss is None for m in mixers)


def test_lora_stage_freezes_lizard_parameters_and_merges_exactly(tmp_path):
    model = linearize(tiny_llama(), "lizard", window_size=4, base_model="org/tiny")
    peft_model = add_lora(model, r=4)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    finetune(peft_model, torch.randint(3, 96, (4, 12)), steps=2, lr=1e-2, progress=False)
    ids = torch.randint(3, 96, (2, 11))
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
        merged_model = peft_model.merge_and_unload()
        torch.testing.assert_close(merged_model(input_ids=ids).logits, unmerged, rtol=1e-5, atol=1e-5)
    merged_model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LizardForCausalLM and loaded.config.base_model_name_or_path == "org/tiny"
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, unmerged, rtol=1e-5, atol=1e-5)
    card = (tmp_path / "README.md").read_text()
    assert "Lizard" in card and "base_model: org/tiny" in card


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="window_size must be a positive int"):
        LizardConfig(window_size=0)
    with pytest.raises(ValueError, match="feature_dim"):
        LizardConfig(feature_dim=-1)
    with pytest.raises(ValueError, match="num_sinks"):
        LizardConfig(num_sinks=-2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['gla_weight'\]"):
        linearize(tiny_llama(), "lizard", gla_weight=0.5)
    with pytest.raises(ValueError, match="has no Lizard attention"):
        attention_transfer(linearize(tiny_llama(), "liger"), torch.zeros(1, 4, dtype=torch.long), steps=1)


def test_transfer_loss_is_the_mse_of_the_layer_output_after_o_proj():
    llama = tiny_llama()
    model = linearize(llama, "lizard", window_size=3)
    teacher_model = linearize(llama, "liger", gla_weight=0.0, window_size=64)  # exactly Llama's attention
    h = torch.randn(2, 10, 48)
    mixer, teacher_mixer = model.model.layers[1].self_attn, teacher_model.model.layers[1].self_attn
    assert mixer.decay_proj.weight.shape == (6, 48)  # one scalar gate per head and position
    with torch.no_grad():
        student, teacher = mixer(h), teacher_mixer(h)
        mixer.attention_transfer = True
        passed_on = mixer(h)
    torch.testing.assert_close(passed_on, teacher)
    torch.testing.assert_close(mixer.transfer_loss, (student - teacher).pow(2).mean())
