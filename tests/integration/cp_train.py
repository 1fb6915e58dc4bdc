"""``ContextParallelTrainer`` (every sequence split over the ranks) against ``Trainer`` on the whole sequences.

    python -m torch.distributed.run --standalone --nproc_per_node 2 cp_train.py --out DIR

``train(name, out, trainer_class, **trainer_kwargs)`` trains a tiny model of ``ARCHS`` (fp64, O(1) weights) for one
epoch of 6 rows of 29 tokens (one row left-padded: attention_mask 0 and labels -100 there), batch 2, shuffled: 3 SGD
steps, the gradient clipping's threshold above their norms (the reference passes
``compute_loss_func=whole_sequence_loss``). Rank 0 writes ``out/NAME/log.json`` (the logged per-step losses, the
world size) and ``out/NAME/weights.safetensors`` (the final weights). ``test_parallel.py`` runs it with ``Trainer`` in
its own process (the reference), under this launch with 2 processes and inside ``cp_check.py``'s launch with 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def main() -> None:
    from hf_seqmodels.parallel import ContextParallelTrainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    for name in ARCHS:
        train(name, out, ContextParallelTrainer)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
