"""``ContextParallelTrainer`` (every sequence split over the ranks) against ``Trainer`` on the whole sequences, run
inside the existing launches (no launch of its own): ``fsdp_train.py`` calls ``train_all`` alone (the reference:
``Trainer``, one process) and under 2 processes, ``cp_check.py`` under 3 (``ContextParallelTrainer``).

``train(name, out, trainer_class, **trainer_kwargs)`` trains a tiny model of ``ARCHS`` (fp64, O(1) weights) for one
epoch of 6 rows of 29 tokens (one row left-padded: attention_mask 0 and labels -100 there), batch 2, shuffled: 3 SGD
steps, the gradient clipping's threshold above their norms. Rank 0 writes ``out/NAME/log.json`` (the logged per-step
losses and the world size, or the error) and ``out/NAME/weights.safetensors`` (the final weights).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import TINY_CONFIGS  # noqa: E402
from integration_utils import build_lm, random_ids  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

#: GLA (short convolutions: a halo; chunk_gla: the state exchange), ParaGRU (Newton on the distributed scan)
ARCHS = ("gla-conv-tied", "paragru")
ROWS, BATCH, T, PAD = 6, 2, 29, 11


def dataset(config):
    torch.manual_seed(1)
    ids = random_ids(config, ROWS, T)
    mask = torch.ones_like(ids)
    mask[1, :PAD] = 0  # a left-padded row: its padding lies past the first ranks' parts
    ids[1, :PAD] = config.pad_token_id
    labels = ids.masked_fill(mask == 0, -100)
    return [dict(input_ids=ids[i], attention_mask=mask[i], labels=labels[i]) for i in range(ROWS)]


def whole_sequence_loss(outputs, labels, num_items_in_batch=None):
    """The reference's loss in fp64 (transformers' causal-LM loss computes in fp32): the mean token cross-entropy of
    the batch, labels shifted by one."""
    logits, targets = outputs.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    return F.cross_entropy(logits, targets, ignore_index=-100)


def train(name: str, out: Path, trainer_class, **trainer_kwargs) -> None:
    from transformers import TrainingArguments

    torch.manual_seed(0)
    config = TINY_CONFIGS[name](initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = build_lm(config).double().train()  # fp64: the comparison sees algorithmic errors, not rounding
    args = TrainingArguments(
        output_dir=str(out / name / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        optim="sgd",
        learning_rate=0.05,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=50.0,  # above the gradients' norms: the update depends on the gradients' scale
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=3,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=dataset(config), **trainer_kwargs)
    trainer.train()
    if args.process_index == 0:
        (out / name).mkdir(parents=True, exist_ok=True)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        (out / name / "log.json").write_text(json.dumps(dict(losses=losses, world=args.world_size)))
        weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(out / name / "weights.safetensors"))


def train_all(out: Path, world: int) -> int:
    """Every arch of ``ARCHS``: with one process ``Trainer`` (its loss in fp64) in ``out`` and
    ``ContextParallelTrainer`` in ``out/alone``, else ``ContextParallelTrainer`` over the ``world`` ranks of the
    default group. Returns how many failed."""
    from transformers import Trainer

    from hf_seqmodels.parallel import ContextParallelTrainer

    failed = 0
    for name in ARCHS:
        try:
            if world == 1:
                train(name, out, Trainer, compute_loss_func=whole_sequence_loss)
                train(name, out / "alone", ContextParallelTrainer)  # one process: no split, the same training
            else:
                train(name, out, ContextParallelTrainer)
        except Exception:
            failed += 1
            error = traceback.format_exc()
            print(f"ContextParallelTrainer run {name} failed:\n{error}", file=sys.stderr, flush=True)
            if os.environ.get("RANK", "0") == "0":
                (out / name).mkdir(parents=True, exist_ok=True)
                (out / name / "log.json").write_text(json.dumps(dict(error=error)))
    return failed
