"""Padding-free training (transformers' DataCollatorWithFlattening): a packed row of several sequences gives, per
sequence, the logits and loss of running each sequence alone; Trainer runs with the collator; what cannot be packed
(cached decoding, padding masks, H-Net) is refused by name."""

import pytest
import torch
from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

import hf_seqmodels
from hf_seqmodels.models.causal_lm import packed_sequences

LENGTHS = [5, 1, 9, 3, 7]  # a length-1 sequence, odd lengths, longer than the window (4)


def _configs():
    common = dict(vocab_size=64, num_hidden_layers=2, initializer_range=0.2)
    lin = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, window_size=4)
    return {
        "gla": lambda: hf_seqmodels.GLAConfig(hidden_size=32, num_heads=2, use_short_conv=True, **common),
        "pararnn-gru": lambda: hf_seqmodels.ParaRNNConfig(cell="gru", hidden_size=16, num_heads=2, **common),
        "pararnn-lstm": lambda: hf_seqmodels.ParaRNNConfig(cell="lstm", hidden_size=16, num_heads=2, **common),
        "s4d": lambda: hf_seqmodels.S4DConfig(hidden_size=16, d_state=6, **common),
        "liger": lambda: hf_seqmodels.LigerConfig(**lin, **common),
        "lizard": lambda: hf_seqmodels.LizardConfig(**lin, num_sinks=2, **common),
        "liger-hybrid": lambda: hf_seqmodels.LigerConfig(**lin, softmax_layers=[1], base_model_type="qwen2", **common),
    }


ARCHS = list(_configs())


def _model(arch):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(_configs()[arch]()).eval()


def _features(lengths, vocab=64):
    return [{"input_ids": torch.randint(0, vocab, (n,)).tolist()} for n in lengths]


@pytest.mark.parametrize("flash_kwargs", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_forward_equals_each_sequence_alone(arch, flash_kwargs):
    model = _model(arch).double()  # fp64: a packed solve and a lone one agree to rounding, not to Newton's fp32 tol
    feats = _features(LENGTHS)
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)(feats)
    assert batch["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in batch
    with torch.no_grad():
        out = model(**batch)
        s, logits, nll, count = 0, [], 0.0, 0
        for f in feats:
            ids = torch.tensor(f["input_ids"])[None]
            alone = model(ids, labels=ids if ids.shape[1] > 1 else None)
            logits.append(alone.logits)
            if alone.loss is not None:  # mean over its len - 1 predicted tokens
                nll, count = nll + alone.loss * (ids.shape[1] - 1), count + ids.shape[1] - 1
            s += ids.shape[1]
    torch.testing.assert_close(out.logits, torch.cat(logits, 1), atol=1e-9, rtol=1e-9)
    # the collator puts -100 at each sequence's first token, so no prediction crosses a boundary
    labels = batch["labels"][0]
    starts = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0)[:-1].tolist())
    assert bool((labels[starts] == -100).all()) and int((labels != -100).sum()) == count
    torch.testing.assert_close(out.loss, nll / count, atol=1e-6, rtol=1e-6)  # the loss is computed in fp32


@pytest.mark.parametrize("arch", ["gla", "pararnn-lstm", "lizard"])
def test_packed_gradients_equal_each_sequence_alone(arch):
    model = _model(arch).train()
    feats = _features([4, 1, 6])
    batch = DataCollatorWithFlattening()(feats)
    model(**batch).logits.pow(2).mean().backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = sum(len(f["input_ids"]) for f in feats)
    for f in feats:
        ids = torch.tensor(f["input_ids"])[None]
        (model(ids).logits.pow(2).sum() / (total * model.config.vocab_size)).backward()
    for n, p in model.named_parameters():
        if n in packed:
            torch.testing.assert_close(packed[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_packing_is_read_from_position_ids_seq_idx_or_cu_seq_lens():
    pos = torch.tensor([[0, 1, 2, 0, 0, 1]])
    assert packed_sequences(1, 6, pos, {}).offsets == [0, 3, 4, 6]
    assert packed_sequences(1, 6, torch.arange(6)[None], {}) is None  # one sequence
    assert packed_sequences(2, 3, torch.tensor([[0, 1, 0], [0, 1, 0]]), {}) is None  # batch > 1: not packed
    assert packed_sequences(1, 6, None, {"seq_idx": torch.tensor([[0, 0, 1, 1, 1, 2]], dtype=torch.int32)}).offsets == [
        0,
        2,
        5,
        6,
    ]
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    assert packed_sequences(1, 6, None, {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu}).offsets == [0, 2, 6]
    with pytest.raises(ValueError, match="cu_seq_lens_q.*end at the sequence length"):
        packed_sequences(1, 7, None, {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu})
    with pytest.raises(ValueError, match="cu_seq_lens_q.*batch size 1"):
        packed_sequences(2, 6, None, {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu})
    with pytest.raises(ValueError, match="cu_seq_lens_k"):
        packed_sequences(1, 6, None, {"cu_seq_lens_q": cu})


def test_packed_input_refuses_cache_and_padding_and_hnet():
    model = _model("gla")
    batch = DataCollatorWithFlattening()(_features([3, 4]))
    with pytest.raises(ValueError, match="cached decoding with packed input is not supported"):
        model(**batch, use_cache=True)
    with pytest.raises(ValueError, match="padding"):
        model(**batch, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 0]]))
    out = model(**batch)  # eval mode: no cache is made for packed input
    assert getattr(out, "past_key_values", None) is None and getattr(out, "cache", None) is None
    hnet = hf_seqmodels.HNetForCausalLM(
        hf_seqmodels.HNetConfig(
            arch_layout=["m1", ["T1"], "m1"],
            d_model=[16, 24],
            d_intermediate=[0, 32],
            ssm_cfg={"d_state": 8, "head_dim": 8, "expand": 2},
            attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [4, 6], "window_size": [3, -1]},
        )
    ).eval()
    hbatch = DataCollatorWithFlattening()(_features([3, 4], vocab=256))
    with pytest.raises(ValueError, match="HNetModel does not support packed sequences"):
        hnet(**hbatch)


@pytest.mark.parametrize("arch", ARCHS)
def test_trainer_with_data_collator_with_flattening(arch, tmp_path):
    model = _model(arch).train()
    data = _features([3 + (i * 5) % 11 for i in range(12)])
    seen = []

    class Spy(DataCollatorWithFlattening):
        def __call__(self, features, *a, **k):
            out = super().__call__(features, *a, **k)
            seen.append(out["input_ids"].shape)
            return out

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=Spy(return_flash_attn_kwargs=True))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert all(s[0] == 1 for s in seen)  # padding-free batches: one packed row
