"""Nested sub-models by depth (SortedNet / sorted fine-tuning): a truncated run equals the first n layers + norm + head
computed by hand (this package's GLA) or by transformers' own n-layer Llama; the depth sampling; sorted training
lowers the shallow sub-models' perplexity against plain training on the same budget."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_seqmodels import (
    GLAConfig,
    GLAForCausalLM,
    SortedDepthCallback,
    SummedDepthLossCallback,
    depth_perplexities,
    truncated_depth,
)
from hf_seqmodels.compat import CACHE_KWARG
from hf_seqmodels.training import sample_depth, summed_depth_loss


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _gla(layers=3, **kw):
    config = GLAConfig(vocab_size=64, hidden_size=32, num_heads=2, num_hidden_layers=layers, use_short_conv=True, **kw)
    return GLAForCausalLM(config).eval()


def _llama(layers=3):
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_truncated_gla_equals_the_first_layers_by_hand(depth):
    model = _gla(initializer_range=0.2)
    ids = torch.randint(0, 64, (2, 13))
    with torch.no_grad():
        full = model(ids).logits
        h = model.model.embed_tokens(ids)
        for block in list(model.model.layers)[:depth]:
            h = block(h)
        expected = model.lm_head(model.model.norm(h))
        with truncated_depth(model, depth):
            assert len(model.model.layers) == depth == model.config.num_hidden_layers
            out = model(ids)  # eval: with a cache, sized from config.num_hidden_layers
            logits = out.logits
            # cached decoding at that depth continues the truncated model
            step = model(ids[:, -1:], cache=out.cache).logits
            ref_step = model(torch.cat([ids, ids[:, -1:]], 1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, ref_step, rtol=1e-4, atol=1e-5)
    # restored on leaving
    assert len(model.model.layers) == 3 == model.config.num_hidden_layers
    with torch.no_grad():
        assert torch.equal(model(ids).logits, full)
    if depth < 3:
        assert (logits - full).abs().max() > 1e-2


@pytest.mark.parametrize("depth", [1, 2])
def test_truncated_llama_equals_transformers_shallower_llama(depth):
    model = _llama()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms off 1: every term matters
    shallow = _llama(layers=depth)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(f"model.layers.{depth}.")}
    state = {k: v for k, v in state.items() if not any(k.startswith(f"model.layers.{i}.") for i in range(depth, 3))}
    shallow.load_state_dict(state)
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad(), truncated_depth(model, depth):
        out = model(ids, use_cache=True)
        step = model(ids[:, -1:], **{CACHE_KWARG: getattr(out, CACHE_KWARG)}).logits
    with torch.no_grad():
        ref = shallow(ids, use_cache=True)
        ref_step = shallow(ids[:, -1:], **{CACHE_KWARG: getattr(ref, CACHE_KWARG)}).logits
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, ref_step, rtol=1e-5, atol=1e-5)
    assert len(model.model.layers) == 3 == model.config.num_hidden_layers


def test_bad_depth_is_refused():
    model = _gla()
    with pytest.raises(ValueError, match="num_layers"):
        with truncated_depth(model, 4):
            pass
    with pytest.raises(ValueError, match="num_layers"):
        with truncated_depth(model, 0):
            pass
    assert len(model.model.layers) == 3


def test_sampled_depths_cover_every_depth_and_agree_across_processes():
    depths = [1, 2, 3, 5]
    seed = int(torch.randint(0, 2**31, ()))
    drawn = [sample_depth(depths, seed, t) for t in range(400)]
    counts = {d: drawn.count(d) for d in depths}
    assert all(60 <= c <= 140 for c in counts.values()), counts  # uniform: 100 each, sd ~8.7
    # a second process (same seed) draws the same sequence; another seed draws another
    assert drawn == [sample_depth(depths, seed, t) for t in range(400)]
    assert drawn != [sample_depth(depths, seed + 1, t) for t in range(400)]


def _text_windows(count, length, offset=0):
    from pydoc_data.topics import topics

    data = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    data = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    return data[offset : offset + count * length].view(count, length)


def test_sorted_training_trains_the_shallow_sub_models(tmp_path):
    steps, batch, length = 60, 8, 48
    train = _text_windows(steps * batch, length)
    held_out = _text_windows(24, length, offset=train.numel())
    data = [{"input_ids": r, "labels": r.clone()} for r in train]
    config = dict(vocab_size=256, hidden_size=32, num_heads=2, num_hidden_layers=3, use_short_conv=False)
    torch.manual_seed(0)
    start = GLAForCausalLM(GLAConfig(**config)).state_dict()
    results = {}
    for name, callbacks in (("plain", []), ("sorted", [SortedDepthCallback()])):
        model = GLAForCausalLM(GLAConfig(**config))
        model.load_state_dict(start)
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=3e-2,
            lr_scheduler_type="constant",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            label_names=["labels"],
        )
        Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
        assert len(model.model.layers) == 3 == model.config.num_hidden_layers  # restored after the last step
        results[name] = depth_perplexities(model, held_out)
        if callbacks:
            assert sorted(set(callbacks[0].depths_trained)) == [1, 2, 3] and len(callbacks[0].depths_trained) == steps
    plain, sorted_ = results["plain"], results["sorted"]
    # plain training never asks layer 1's output to predict: its depth-1 sub-model is worse than sorted training's
    # (measured: 19.2 vs 22.9)
    assert sorted_[1] < 0.9 * plain[1], results
    assert sorted_[2] < plain[2], results


@pytest.mark.parametrize("arch", ["gla", "llama"])
@pytest.mark.parametrize("depths", [None, [1, 2]])
def test_summed_depth_loss_is_the_sum_of_the_sub_models_losses(arch, depths):
    model = (_gla(initializer_range=0.2) if arch == "gla" else _llama()).train()
    ids = torch.randint(0, 64, (2, 13))
    with torch.no_grad():
        plain = float(model(input_ids=ids, labels=ids).loss)
    expected = 0.0
    for d in depths or [1, 2, 3]:
        with torch.no_grad(), truncated_depth(model, d):
            expected += float(model(input_ids=ids, labels=ids).loss)
    with summed_depth_loss(model, depths):
        out = model(input_ids=ids, labels=ids)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    # every depth's term sends gradient to the layers below it; with depths [1, 2] the third layer gets none
    out.loss.backward()
    third = [p.grad for p in model.model.layers[2].parameters()]
    assert all(g is None or not g.any() for g in third) == (depths is not None)
    assert all(p.grad is not None and p.grad.any() for p in model.model.layers[0].parameters() if p.dim() > 1)
    # hooks removed on leaving: the plain loss again
    with torch.no_grad():
        full = float(model(input_ids=ids, labels=ids).loss)
    assert full == plain and abs(full - expected) > 0.1


def test_summed_depth_loss_callback_in_trainer(tmp_path):
    model = _gla(initializer_range=0.2)
    ids = torch.randint(0, 64, (8, 12))
    data = [{"input_ids": r, "labels": r.clone()} for r in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=8,
        logging_steps=1,
        learning_rate=0.0,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        label_names=["labels"],
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[SummedDepthLossCallback()])
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
    expected = 0.0
    for d in (1, 2, 3):
        with torch.no_grad(), truncated_depth(model, d):
            expected += float(model(input_ids=ids, labels=ids).loss)
    assert logged == pytest.approx(expected, rel=1e-4)
