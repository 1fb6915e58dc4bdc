"""Magnitude pruning of the decoder's projections: the sparsity asked for, the smallest weights zeroed (per module and
globally), masks that hold through optimizer steps, and a save/load round trip with plain weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import prune
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from hf_seqmodels import GLAConfig, GLAForCausalLM, ParaRNNConfig, ParaRNNForCausalLM, prune_projections, remove_pruning
from hf_seqmodels.training import projection_sparsity, prunable_projections


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _gla():
    config = GLAConfig(
        vocab_size=64, hidden_size=32, num_heads=2, num_hidden_layers=2, use_short_conv=True, initializer_range=0.2
    )
    return GLAForCausalLM(config).eval()


def _paragru():
    config = ParaRNNConfig(
        cell="gru", vocab_size=64, hidden_size=32, num_heads=2, num_hidden_layers=2, initializer_range=0.2
    )
    return ParaRNNForCausalLM(config).eval()


MODELS = {"gla": _gla, "paragru": _paragru}


def _linear_names(model):
    """Every nn.Linear under model.model.layers, found independently of the code under test."""
    return {
        f"model.layers.{i}.{n}"
        for i, b in enumerate(model.model.layers)
        for n, m in b.named_modules()
        if isinstance(m, nn.Linear)
    }


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("amount", [0.3, 0.7])
def test_per_layer_pruning_zeroes_the_smallest_weights_of_each_module(arch, amount):
    model = MODELS[arch]()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = prune_projections(model, amount, scope="layer")
    assert set(report) == _linear_names(model) and len(report) >= 8
    named = dict(model.named_modules())
    for name, fraction in report.items():
        w0 = before[name].flatten()
        k = round(amount * w0.numel())
        assert fraction == pytest.approx(k / w0.numel())
        pruned = named[name].weight.detach().flatten() == 0
        # exactly the k smallest magnitudes (random float weights: no ties)
        expected = torch.zeros_like(pruned)
        expected[w0.abs().argsort()[:k]] = True
        assert torch.equal(pruned, expected), name
        torch.testing.assert_close(named[name].weight.detach().flatten()[~pruned], w0[~pruned], rtol=0, atol=0)
    # the embeddings and the head are not touched
    assert not prune.is_pruned(model.lm_head) and (model.model.embed_tokens.weight != 0).all()


@pytest.mark.parametrize("arch", MODELS)
def test_global_pruning_uses_one_threshold(arch):
    model = MODELS[arch]()
    amount = 0.5
    big = sorted(_linear_names(model))[0]
    with torch.no_grad():
        dict(model.named_modules())[big].weight.mul_(4.0)  # one module of larger weights: pruned far less
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = prune_projections(model, amount)  # global by default
    names = sorted(report)
    w0 = torch.cat([before[n].flatten() for n in names])
    after = torch.cat([dict(model.named_modules())[n].weight.detach().flatten() for n in names])
    k = round(amount * w0.numel())
    expected = torch.zeros(w0.numel(), dtype=torch.bool)
    expected[w0.abs().argsort()[:k]] = True
    assert torch.equal(after == 0, expected)
    # one threshold over all modules: the module of larger weights keeps most of them
    assert report[big] < 0.25 and min(v for n, v in report.items() if n != big) > 0.4, report
    assert sum(report[n] * before[n].numel() for n in names) == pytest.approx(k)


def test_masks_hold_through_a_recovery_fine_tune(tmp_path):
    model = _gla().train()
    prune_projections(model, 0.6, scope="layer")
    before = {n: m.weight.detach().clone() for n, m in prunable_projections(model).items()}
    ids = torch.randint(0, 64, (16, 12))
    data = [{"input_ids": r, "labels": r.clone()} for r in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,  # AdamW's decay moves weight_orig everywhere; the mask keeps the pruned entries at zero
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        label_names=["labels"],
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    for name, m in prunable_projections(model).items():
        pruned = before[name] == 0
        assert (m.weight.detach()[pruned] == 0).all(), name
        assert (m.weight_orig.detach()[pruned] != 0).any(), name  # decay moved the hidden values: the mask did it
        assert not torch.equal(m.weight.detach()[~pruned], before[name][~pruned]), f"{name} did not train"
    assert projection_sparsity(model) == pytest.approx({n: float((w == 0).float().mean()) for n, w in before.items()})


@pytest.mark.parametrize("arch", MODELS)
def test_save_pretrained_writes_plain_weights(arch, tmp_path):
    model = MODELS[arch]()
    report = prune_projections(model, 0.5)
    ids = torch.randint(3, 64, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not [k for k in saved if k.endswith(("_orig", "_mask"))]
    for name, fraction in report.items():
        assert float((saved[name + ".weight"] == 0).float().mean()) == pytest.approx(fraction), name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any(
        prune.is_pruned(m) or hasattr(m, "weight_orig") or hasattr(m, "weight_mask") for m in loaded.modules()
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)

    # the plain checkpoint loads back into the pruned model (weight -> weight_orig, masks kept)
    model.load_state_dict(loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
    # made permanent in memory: plain parameters with the zeros
    assert remove_pruning(model) == len(report)
    assert not any(prune.is_pruned(m) for m in model.modules())
    assert projection_sparsity(model) == pytest.approx(report)


def test_bad_arguments_are_refused():
    model = _gla()
    with pytest.raises(ValueError, match="amount"):
        prune_projections(model, 1.5)
    with pytest.raises(ValueError, match="scope"):
        prune_projections(model, 0.5, scope="row")
    with pytest.raises(ValueError, match="modules"):
        prune_projections(model, 0.5, modules=["model.embed_tokens"])
