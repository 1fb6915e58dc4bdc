"""Gradient noise (arXiv 1511.06807): the variance schedule eta / (1 + t)^gamma, and Trainer runs (a hand-computed SGD
update with the noise; once per optimizer step under gradient accumulation). The DDP check (two gloo processes keep
equal parameters) runs with the other DDP runs in tests/integration/test_ddp.py."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_seqmodels import GLAConfig, GLAForCausalLM, GradientNoiseCallback


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _tiny_gla():
    config = GLAConfig(
        vocab_size=64, hidden_size=32, num_heads=2, num_hidden_layers=2, use_short_conv=False, initializer_range=0.2
    )
    return GLAForCausalLM(config).train()


class _Ids(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def _args(out, steps, batch, lr, seed, accumulation=1):
    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping, so the hand-computed update needs none
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        train_sampling_strategy="sequential",
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        label_names=["labels"],
    )


def _train(model, data, args, callbacks):
    Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("eta, gamma", [(0.3, 0.55), (1.0, 1.0)])
def test_noise_variance_follows_the_schedule(eta, gamma):
    callback = GradientNoiseCallback(eta=eta, gamma=gamma)
    seed = int(torch.randint(0, 2**31, ()))
    n = 400_000
    draws = {}
    for t in (0, 7, 120):
        p = torch.nn.Parameter(torch.zeros(n))
        p.grad = torch.zeros(n)
        callback.add_noise([p], t, seed)
        noise = p.grad.double()
        expected = eta / (1 + t) ** gamma
        # the sample variance of n Gaussian draws has relative standard error sqrt(2 / n) ~ 0.22%
        assert abs(float(noise.var()) / expected - 1) < 0.015, (t, float(noise.var()), expected)
        assert abs(float(noise.mean())) < 5 * math.sqrt(expected / n), (t, float(noise.mean()))
        draws[t] = noise
    # the noise is independent across steps (correlation ~ 1/sqrt(n)) and reproducible for a (seed, step)
    assert abs(float(torch.corrcoef(torch.stack([draws[0], draws[7]]))[0, 1])) < 0.02
    p = torch.nn.Parameter(torch.zeros(n))
    p.grad = torch.zeros(n)
    callback.add_noise([p], 7, seed)
    assert torch.equal(p.grad.double(), draws[7])
    # and depends on the seed: another run's noise of the same step is independent
    p.grad.zero_()
    callback.add_noise([p], 7, seed + 1)
    assert abs(float(torch.corrcoef(torch.stack([p.grad.double(), draws[7]]))[0, 1])) < 0.02


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="eta"):
        GradientNoiseCallback(eta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        GradientNoiseCallback(eta=0.1, gamma=float("nan"))


def test_trainer_update_equals_hand_computed_sgd_with_noise(tmp_path):
    steps, batch, lr, eta, gamma = 3, 4, 0.1, 0.3, 0.55
    seed = int(torch.randint(0, 2**31, ()))
    ids = torch.randint(0, 64, (steps * batch, 11))
    model = _tiny_gla()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}

    noisy = _train(model, _Ids(ids), _args(tmp_path / "a", steps, batch, lr, seed), [GradientNoiseCallback(eta, gamma)])

    # by hand: w <- w - lr * (grad + N(0, eta / (1 + t)^gamma)), the noise drawn from a generator seeded with the
    # first 8 bytes (little-endian) of blake2b("{seed},{t}"), parameter by parameter in model.parameters() order
    ref = _reset(_tiny_gla(), start)
    for t in range(steps):
        ref.zero_grad()
        chunk = ids[t * batch : (t + 1) * batch]
        ref(input_ids=chunk, labels=chunk).loss.backward()
        digest = hashlib.blake2b(f"{seed},{t}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
        std = math.sqrt(eta / (1 + t) ** gamma)
        with torch.no_grad():
            for p in ref.parameters():
                p -= lr * (p.grad + std * torch.randn(p.shape, generator=gen))
    plain = _train(_reset(model, start), _Ids(ids), _args(tmp_path / "b", steps, batch, lr, seed), [])
    for name, p in ref.named_parameters():
        torch.testing.assert_close(noisy[name], p.detach(), rtol=1e-3, atol=1e-4, msg=name)  # noise: ~5e-2
        # the noise moved every parameter tensor (by about lr * std per element)
        assert (noisy[name] - plain[name]).abs().mean() > 0.1 * lr * math.sqrt(eta / steps**gamma), name


def _reset(model, start):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(start[name])
    return model


def test_noise_once_per_optimizer_step_under_gradient_accumulation(tmp_path):
    # 2 micro-batches of 3 accumulated == one batch of 6, noise included: the noise is added to the summed gradient
    steps, lr = 2, 0.1
    seed = int(torch.randint(0, 2**31, ()))
    ids = torch.randint(0, 64, (steps * 6, 9))
    model = _tiny_gla()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    accumulated = _train(
        model, _Ids(ids), _args(tmp_path / "a", steps, 3, lr, seed, accumulation=2), [GradientNoiseCallback(0.3)]
    )
    whole_args = _args(tmp_path / "b", steps, 6, lr, seed)
    whole = _train(_reset(model, start), _Ids(ids), whole_args, [GradientNoiseCallback(0.3)])
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-3, atol=1e-4, msg=name)
