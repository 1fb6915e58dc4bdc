import pytest
import torch
from memory_helpers import MODELS, corpus, ids_for

from hf_seqmodels.memory import MemoryBankConfig, attach_memory_bank, build_memory_index, memory_optimizer
from hf_seqmodels.memory.attach import memory_parameter_groups

TEXTS = corpus(6)


@pytest.fixture(scope="module")
def index():
    return build_memory_index(TEXTS, levels=2, branching=3, embed_dim=64, progress=False)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_adamw_step_touches_only_fetched_blocks(arch, index):
    model = MODELS[arch]()
    cfg = MemoryBankConfig(
        block_sizes=(4, 2), branching=3, generic_memory_prob=0.0, memory_lr=1e-2, memory_weight_decay=0.5
    )
    attach_memory_bank(model, cfg, index)
    model.train()
    opt = memory_optimizer(model)
    assert [g["lr"] for g in opt.param_groups] == [1e-2] and opt.param_groups[0]["weight_decay"] == 0.5
    ids = ids_for(TEXTS[:2])
    step1 = torch.tensor([[0, 1], [2, 7]])
    step2 = torch.tensor([[1, 4], [0, 2]])
    fetched = {(1, c) for c in (0, 2, 1)} | {(2, c) for c in (1, 7, 4, 2)}
    start = snapshot(model)
    for paths in (step1, step2):
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids, memory_paths=paths).loss.backward()
        opt.step()
    end = snapshot(model)
    changed = {n for n in start if not torch.equal(start[n], end[n])}
    for layer in range(model.config.num_hidden_layers):
        for level, n_clusters in ((1, 3), (2, 9)):
            for c in range(n_clusters + 1):  # + generic
                name = f"memory_bank.blocks.layer{layer}.level{level}.{c}"
                assert (name in changed) == ((level, c) in fetched), name
    assert all(n.startswith("memory_bank.") for n in changed)  # anchor frozen
    # the step-1-only blocks (level 1: cluster 2; level 2: 1, 7) got no update and no decay in step 2: check by
    # replaying step 1 alone from the start
    model2 = MODELS[arch]()
    attach_memory_bank(model2, cfg, index)
    model2.load_state_dict(start)
    model2.train()
    opt2 = memory_optimizer(model2)
    opt2.zero_grad(set_to_none=True)
    model2(ids, labels=ids, memory_paths=step1).loss.backward()
    opt2.step()
    after1 = snapshot(model2)
    for level, c in ((1, 2), (2, 1), (2, 7)):
        name = f"memory_bank.blocks.layer0.level{level}.{c}"
        assert torch.equal(after1[name], end[name]), name


def test_cotraining_switch(index):
    model = MODELS["gla"]()
    cfg = MemoryBankConfig(block_sizes=(4, 2), branching=3, freeze_anchor=False, generic_memory_prob=0.0)
    attach_memory_bank(model, cfg, index)
    groups = memory_parameter_groups(model, anchor_lr=1e-3)
    assert [g["name"] for g in groups] == ["memory", "anchor"] and groups[1]["lr"] == 1e-3
    opt = torch.optim.AdamW(groups)
    before = model.lm_head.weight.detach().clone()
    ids = ids_for(TEXTS[:2])
    model.train()
    model(ids, labels=ids, memory_paths=torch.tensor([[0, 0], [1, 3]])).loss.backward()
    opt.step()
    assert not torch.equal(before, model.lm_head.weight)


def test_trainer_few_steps(index, tmp_path):
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = MODELS["gla"]()
    cfg = MemoryBankConfig(
        block_sizes=(4, 2), branching=3, memory_lr=3e-2, memory_weight_decay=0.0, generic_memory_prob=1 / 17
    )
    attach_memory_bank(model, cfg, index)
    ids = ids_for(TEXTS, n=20)
    paths = index.route(TEXTS)
    data = [{"input_ids": ids[i], "labels": ids[i], "memory_paths": paths[i]} for i in range(len(TEXTS))]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=8,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        lr_scheduler_type="constant",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=default_data_collator,
        optimizers=(memory_optimizer(model), None),
    )
    with torch.no_grad():
        model.eval()
        before = model(ids, labels=ids, memory_paths=paths).loss.item()
    trainer.train()
    model.eval()
    with torch.no_grad():
        after = model(ids, labels=ids, memory_paths=paths).loss.item()
    assert after < before
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 8
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "memory_bank.safetensors.index.json").exists()


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_gradient_checkpointing_keeps_memory_gradients(arch, index):
    cfg = MemoryBankConfig(block_sizes=(4, 2), branching=3, generic_memory_prob=0.0)
    ids = ids_for(TEXTS[:2])
    paths = torch.tensor([[0, 1], [2, 7]])
    grads = []
    for checkpointing in (False, True):
        model = MODELS[arch]()
        attach_memory_bank(model, cfg, index)
        with torch.no_grad():
            for p in model.memory_bank.parameters():
                p.copy_(torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.train()
        model(ids, labels=ids, memory_paths=paths).loss.backward()
        grads.append({n: p.grad for n, p in model.memory_bank.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * (
        2 + 2
    )  # layers x (2 ids at level 1 + 2 at level 2)
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n
