"""Liger-GLA checkpoints (OpenSparseLLMs/Linearization, ``model_type "liger_gla"``) load into our LigerForCausalLM
with the semantics of the reference code.

A released Liger-GLA folder is a Llama folder (Llama's weights under Llama's names, Llama's config fields plus
``pool_size``/``expand_k``/``expand_v``/``hidden_ratio``, ``model_type "liger_gla"``). The test saves a small random
Llama in that layout. The reference is transformers' own LlamaForCausalLM with the same weights, each attention's
forward replaced by the computation of ``LigerGatedLinearAttention.forward`` (liger/models/liger_gla/
modeling_liger_gla.py), written here in plain torch:

- ``g = nn.AdaptiveAvgPool1d(head_dim * num_key_value_heads)(k)`` (the module the reference builds);
- key/value/gate heads repeated with transformers' ``repeat_kv``; ``softmax`` feature maps on q and k;
  ``logsigmoid(g) / 16``; gated linear attention by fla's ``naive_recurrent_gla`` with score scale 1 (its fixed scale
  ``head_k_dim ** -0.5`` undone by multiplying q by ``head_k_dim ** 0.5``);
- flash-attn's causal attention with ``window_size=(64, 64)`` (what ``_flash_attention_forward(sliding_window=64)``
  passes in transformers 4.47): an explicit mask ``i - 64 <= j <= i`` with softmax scale ``head_dim ** -0.5``, on q
  and k after Llama's RoPE (``apply_rotary_pos_emb``);
- ``o_proj(0.5 * window + 0.5 * linear)``. Swapped: the reference's bf16 cast before ``o_proj`` (it only runs in
  bf16) is left out, all in fp32.

Sequences of 150 tokens reach past the window.
"""

from __future__ import annotations

import json
import os
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

import hf_seqmodels  # noqa: F401  (registers the architectures and the checkpoint formats)
from hf_seqmodels import GLAForCausalLM, LigerForCausalLM
from hf_seqmodels.conversion import convert

pytest.importorskip("fla", reason="flash-linear-attention is not installed (it imports on a CPU)")
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402

VOCAB = 71
LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    initializer_range=0.2,
)


def liger_reference_attention(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    """LigerGatedLinearAttention.forward of the reference, in plain fp32 torch (see the module docstring)."""
    config = self.config
    B, T, _ = hidden_states.shape
    H, Hkv, D = config.num_attention_heads, config.num_key_value_heads, self.head_dim
    q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
    g = nn.AdaptiveAvgPool1d(output_size=D * Hkv)(k)
    q = q.view(B, T, H, D).transpose(1, 2)
    k, v, g = (x.view(B, T, Hkv, D).transpose(1, 2) for x in (k, v, g))
    k, v, g = (repeat_kv(x, H // Hkv) for x in (k, v, g))
    sq, sk, sv = q, k, v
    qf, kf = F.softmax(q, dim=-1), F.softmax(k, dim=-1)
    g = F.logsigmoid(g) / 16
    linear, _ = naive_recurrent_gla(*(x.transpose(1, 2) for x in (qf * D**0.5, kf, v, g)))  # [B, T, H, D]
    cos, sin = position_embeddings
    sq, sk = apply_rotary_pos_emb(sq, sk, cos, sin)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & (i - j <= 64)
    scores = (sq @ sk.transpose(-1, -2)) * D**-0.5
    window = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ sv  # [B, H, T, D]
    o = 0.5 * window.transpose(1, 2) + 0.5 * linear
    return self.o_proj(o.reshape(B, T, H * D)), None


def reference_model(llama: LlamaForCausalLM) -> LlamaForCausalLM:
    for layer in llama.model.layers:
        layer.self_attn.forward = types.MethodType(liger_reference_attention, layer.self_attn)
    return llama


def save_liger(folder, **overrides):
    """A random Llama saved as a Liger-GLA checkpoint; returns the reference model (Liger's attention)."""
    llama = LlamaForCausalLM(LlamaConfig(**{**LLAMA, **overrides})).eval()
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    llama.save_pretrained(folder)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg.update(
        model_type="liger_gla",
        architectures=["LigerGLAForCausalLM"],
        pool_size=128,
        expand_k=1,
        expand_v=1,
        hidden_ratio=4,
        rope_scaling=None,
        rope_theta=LLAMA["rope_theta"],
    )
    cfg.pop("rope_parameters", None)  # the released config: transformers 4.47 fields
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    return reference_model(llama)


@torch.no_grad()
def greedy(model, ids, steps):
    for _ in range(steps):
        ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    return ids


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_liger_gla_matches_the_reference(tmp_path):
    reference = save_liger(tmp_path)
    ours = LigerForCausalLM.from_pretrained(tmp_path).eval()
    cfg = ours.config
    assert (cfg.window_size, cfg.gla_weight, cfg.gla_scale, cfg.gate_logit_normalizer) == (65, 0.5, 1.0, 16.0)
    assert cfg.rope_parameters["rope_theta"] == LLAMA["rope_theta"]
    assert "pool_size" not in cfg.base_config
    ids = torch.randint(3, VOCAB, (2, 150))
    with torch.no_grad():
        want = reference(input_ids=ids, use_cache=False).logits
        got = ours(input_ids=ids).logits
    assert rel_err(got, want) < 1e-5
    prompt = ids[:, :60]  # decoding crosses the 65-key window
    ours.generation_config.eos_token_id = None
    out = ours.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False)
    assert torch.equal(out, greedy(reference, prompt, 9))


def test_window_and_scale_matter(tmp_path):
    """The checks above can fail: a 64-key window (the newer transformers convention) or fla's default score scale
    give different logits."""
    reference = save_liger(tmp_path)
    ids = torch.randint(3, VOCAB, (1, 150))
    with torch.no_grad():
        want = reference(input_ids=ids, use_cache=False).logits
        for change in (dict(window_size=64), dict(gla_scale=None)):
            ours = LigerForCausalLM.from_pretrained(tmp_path).eval()
            for layer in ours.model.layers:
                for name, value in change.items():
                    setattr(layer.self_attn, name, value)
            assert rel_err(ours(input_ids=ids).logits, want) > 1e-4, change


def test_convert_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    reference = save_liger(tmp_path / "liger")
    convert(tmp_path / "liger", tmp_path / "ours", progress=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(model) is LigerForCausalLM
    ids = torch.randint(3, VOCAB, (1, 90))
    with torch.no_grad():
        assert rel_err(model(input_ids=ids).logits, reference(input_ids=ids, use_cache=False).logits) < 1e-5
    assert "Liger-GLA" in (tmp_path / "ours" / "README.md").read_text()


@pytest.mark.parametrize(
    "model_type,reason",
    [
        ("liger_gsa", "Gated Slot Attention"),
        ("liger_hgrn2", "HGRN2"),
        ("liger_qwen3_gla", "q/k norms"),
        ("liger_mistral_gla", "only the Llama-based Liger-GLA"),
    ],
)
def test_other_variants_are_refused_by_name(tmp_path, model_type, reason):
    save_liger(tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["model_type"] = model_type
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match=rf"model_type='{model_type}'.*{reason}"):
        LigerForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=model_type):
        convert(tmp_path, tmp_path.parent / "out", progress=False)
    assert not (tmp_path.parent / "out").exists()


def test_attention_bias_and_unmerged_lora_are_refused(tmp_path):
    save_liger(tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    json.dump({**cfg, "attention_bias": True}, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="attention_bias=True"):
        LigerForCausalLM.from_pretrained(tmp_path)
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(8, 48)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unmerged LoRA"):
        LigerForCausalLM.from_pretrained(tmp_path)


def test_liger_folder_with_gla_class_is_named(tmp_path):
    save_liger(tmp_path)
    with pytest.raises(ValueError, match="converts to LigerForCausalLM, not GLAForCausalLM"):
        GLAForCausalLM.from_pretrained(tmp_path)
