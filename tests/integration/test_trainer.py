"""Fine-tuning with ``Trainer`` on real text (UTF-8 bytes of the pydoc topics, vocab 256) and LoRA with PEFT."""

from __future__ import annotations

import math
import os

import pytest
import torch
from integration_utils import ByteBlocks, build_lm, classes_for
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

UNIFORM_LOSS = math.log(256)  # cross-entropy of guessing bytes uniformly: where a fresh (0.02-init) model starts


def _args(out_dir, steps, lr, batch=8, **kw):
    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        label_names=["labels"],
        **kw,
    )


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_fine_tune_lowers_the_loss_on_real_text(train_config, tmp_path, fresh_seed):
    # a realistic (0.02) init, so the first losses sit at the uniform-guess level and the drop is learning the text
    train_config.initializer_range = 0.02
    model = build_lm(train_config).train()
    steps, block = 40, 64
    train = ByteBlocks(block, steps * 8)
    held_out = ByteBlocks(block, 16, offset=block * steps * 8)  # text the model never trains on
    trainer = Trainer(
        model=model,
        args=_args(tmp_path / "run", steps, 3e-3, seed=fresh_seed % 2**31),
        train_dataset=train,
        eval_dataset=held_out,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == steps
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert abs(before - UNIFORM_LOSS) < 0.5, (before, UNIFORM_LOSS)
    assert last < first - 1.0, f"loss did not go down clearly: first 5 {losses[:5]}, last 5 {losses[-5:]}"
    after = trainer.evaluate()["eval_loss"]
    assert after < UNIFORM_LOSS - 1.0 and after < before - 1.0, (before, after)

    # Trainer.save_model goes through our save_pretrained: a loadable safetensors checkpoint of the trained weights
    trainer.save_model(str(tmp_path / "final"))
    files = os.listdir(tmp_path / "final")
    # (Trainer also pickles its TrainingArguments to training_args.bin; no weights are pickled)
    assert "model.safetensors" in files and not [f for f in files if f.startswith("pytorch_model")], files
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert type(loaded) is classes_for(train_config)[2]
    model.eval()
    ids = held_out[0]["input_ids"][None]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*deprecated:FutureWarning")  # peft on transformers 5.24
def test_peft_lora_train_save_reload_merge(train_config, tmp_path, fresh_seed):
    pytest.importorskip("peft")
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer

    train_config.initializer_range = 0.02
    targets = list(type(train_config).lora_target_modules)
    assert targets, "the config class must document its LoRA target modules"
    family = getattr(train_config, "family", None)  # a linearized model: the teacher family's names of q, k, v
    if family is not None:
        assert set(family.lora_targets) <= set(targets)
        targets = list(family.lora_targets)
    base = build_lm(train_config)
    base.save_pretrained(tmp_path / "base")
    r = 4
    # the Linear layers LoRA must adapt, found independently of PEFT
    expected = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets}
    assert {n.split(".")[-1] for n in expected} == set(targets), "every documented target exists in the model"
    assert len(expected) == sum(
        n.split(".")[-1] in targets for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)
    )
    expected_params = sum(r * (m.in_features + m.out_features) for m in expected.values())

    model = get_peft_model(
        base, LoraConfig(r=r, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    )
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == set(expected)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable), sorted(trainable)
    assert sum(p.numel() for p in trainable.values()) == expected_params

    data = ByteBlocks(64, 5 * 4)
    trainer = Trainer(
        model=model, args=_args(tmp_path / "run", 5, 1e-2, batch=4, seed=fresh_seed % 2**31), train_dataset=data
    )
    trainer.train()
    assert len(_losses(trainer)) == 5
    model.eval()
    assert any(float(p.detach().abs().max()) > 0 for n, p in model.named_parameters() if "lora_B" in n), (
        "LoRA B never moved"
    )

    ids = data[0]["input_ids"][None]
    fresh_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():  # the frozen base weights did not change
            assert torch.equal(model(input_ids=ids).logits, fresh_base(ids).logits)
        base_logits = fresh_base(ids).logits
    assert float((adapted - base_logits).abs().max()) > 1e-4, "the trained adapter has no effect"

    model.save_pretrained(tmp_path / "adapter")
    files = set(os.listdir(tmp_path / "adapter"))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and not [
        f for f in files if f.endswith(".bin")
    ]

    reloaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapted, atol=1e-6, rtol=1e-5)
        merged = reloaded.merge_and_unload().eval()
        assert type(merged) is classes_for(train_config)[2]
        assert not [n for n, _ in merged.named_modules() if "lora" in n.lower()]
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-4)


def test_peft_default_targets_are_the_documented_ones(tiny_config):
    """``LoraConfig()`` without ``target_modules`` adapts the config class's documented targets."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    base = build_lm(tiny_config)
    targets = set(type(tiny_config).lora_target_modules)
    expected = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets]
    model = get_peft_model(base, LoraConfig(r=2, task_type="CAUSAL_LM"))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    family = getattr(tiny_config, "family", None)  # a linearized model has its teacher family's names of q, k, v
    assert {n.split(".")[-1] for n in wrapped} == (set(family.lora_targets) if family is not None else targets)
    assert sorted(n.removeprefix("base_model.model.") for n in wrapped) == sorted(expected)
