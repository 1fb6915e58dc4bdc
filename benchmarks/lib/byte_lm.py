"""Small byte-level language models trained with ``Trainer`` on a text file (the training-technique benchmarks:
``sorted_training``, ``pruning``): the first 90% of the bytes train, the last 10% evaluate."""

from __future__ import annotations

import os
import tempfile

import torch
from transformers import Trainer, TrainingArguments

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data")
DEFAULT_TEXT = os.path.join(DEFAULT_DATA, "wikitext2-valid.txt")


def load_splits(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train bytes, held-out bytes) of a file: the first 90% and the last 10%, as int64 tensors."""
    if not os.path.isfile(path):
        raise SystemExit(f"--data: no file {path!r} (a UTF-8 text file, e.g. ../shared/data/wikitext2-valid.txt)")
    data = open(path, "rb").read()
    cut = int(len(data) * 0.9)
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
    return as_tensor(data[:cut]), as_tensor(data[cut:])


def windows(data: torch.Tensor, context: int, count: int, offset: int = 0) -> torch.Tensor:
    """``count`` consecutive non-overlapping windows ``[count, context]`` from ``offset`` on (wrapping around)."""
    n = data.numel() // context
    rows = [(offset // context + i) % n for i in range(count)]
    return torch.stack([data[r * context : (r + 1) * context] for r in rows])


class Windows(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def train(model, ids: torch.Tensor, batch: int, lr: float, seed: int = 0, callbacks=()) -> list[float]:
    """One pass over ``ids`` ``[N, T]`` in order, ``N / batch`` AdamW steps (cosine decay, 5% warm-up, clip 1.0);
    returns the training losses."""
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=ids.shape[0] // batch,
            per_device_train_batch_size=batch,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, ids.shape[0] // batch // 20),
            weight_decay=0.01,
            max_grad_norm=1.0,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            train_sampling_strategy="sequential",
            seed=seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
            label_names=["labels"],
        )
        trainer = Trainer(model=model.train(), args=args, train_dataset=Windows(ids), callbacks=list(callbacks))
        trainer.train()
    model.eval()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]
