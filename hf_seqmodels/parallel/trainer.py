"""``ContextParallelTrainer``: transformers' ``Trainer`` with every sequence split over the ranks (context parallelism).

    # train.py, started with `torchrun --nproc_per_node N train.py`
    trainer = ContextParallelTrainer(model=model, args=TrainingArguments(..., use_cpu=True), train_dataset=data)
    trainer.train()

Every rank gets the SAME batch (the train dataloader is not sharded over the ranks: Trainer's ``accelerate``
dataloader gives each process a different batch, so its shard is made a pass-through, the way Trainer itself does
for a rank-aware sampler; the ranks still draw the same order, accelerate synchronizing the sampler's seed). Each
rank then runs the model inside :func:`~hf_seqmodels.context_parallel` on its contiguous part of each row:
``labels`` are shifted by one over the whole row first (the last position of a part predicts the first token of the
next part), then ``input_ids``, the shifted labels and every other per-position input (``attention_mask``, given
``position_ids``) are sliced; ``position_ids`` default to the part's positions in the row. The loss is the whole
batch's mean token cross-entropy: each rank's summed token losses over the number of labelled tokens of the whole
batch, times the world size, because the DDP wrapper Trainer puts around the model averages the gradients over the
ranks (the sum of the parts' gradients is the whole loss's gradient). Trainer logs the mean of the ranks' losses:
the whole batch's loss. So N processes train like one process on the same batches, with ~1/N of the activations
each. (``accelerate``'s own context parallelism, ``ParallelismConfig(cp_size=...)``, is torch's ring attention for
softmax attention under FSDP2 on GPUs; it does not split these recurrent layers.)

Refused, by name: gradient accumulation (Trainer normalizes an accumulated loss by a token count gathered over the
ranks, which counts each replicated batch N times), evaluation and prediction (their loops gather per-rank outputs as
if each rank held different rows), label smoothing and a ``compute_loss_func`` (the loss is formed here), an
iterable or dispatched train dataset (its batches cannot be replicated), and what ``context_parallel`` refuses
(softmax attention, H-Net, packed sequences).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import Trainer

from .context import context_parallel


def slice_bounds(length: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part ``[lo, hi)`` of ``length`` positions split over ``world`` ranks in rank
    order, the first ``length % world`` parts one position longer."""
    if length < world:
        raise ValueError(f"ContextParallelTrainer: a sequence of {length} positions cannot be split over {world} ranks")
    size, extra = divmod(length, world)
    lo = rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


class ContextParallelTrainer(Trainer):
    """A ``Trainer`` that splits every sequence of the batch over the ranks (see the module docstring); with one
    process it trains like ``Trainer`` on whole sequences."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        if a.gradient_accumulation_steps != 1:
            raise ValueError(
                f"ContextParallelTrainer: gradient_accumulation_steps={a.gradient_accumulation_steps} is not "
                "supported (1 expected): raise per_device_train_batch_size instead, every rank holds the whole batch"
            )
        if a.eval_strategy != "no":
            strategy = getattr(a.eval_strategy, "value", a.eval_strategy)
            raise ValueError(
                f"ContextParallelTrainer: eval_strategy={strategy!r} is not supported ('no' expected): evaluation "
                "gathers the ranks' outputs as different rows"
            )
        if a.label_smoothing_factor or self.compute_loss_func is not None:
            raise ValueError(
                "ContextParallelTrainer: label_smoothing_factor and compute_loss_func are not supported (the loss "
                "is the whole sequence's token cross-entropy, formed from the ranks' parts)"
            )
        self.cp_world = a.world_size
        # the exchanges of context_parallel run on a group of their own, apart from DDP's gradient all-reduces
        self.cp_group = dist.new_group(list(range(self.cp_world))) if self.cp_world > 1 else None

    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        if self.cp_world > 1:
            shard = getattr(dataloader, "batch_sampler", None)
            if not hasattr(shard, "num_processes") or not hasattr(shard, "process_index"):
                raise ValueError(
                    "ContextParallelTrainer: every rank needs the same batches; accelerate shards this train "
                    f"dataloader with {type(shard).__name__} (a map-style train_dataset without dispatch_batches "
                    "is expected)"
                )
            shard.num_processes, shard.process_index = 1, 0  # a pass-through: every rank gets every batch
        return dataloader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if "labels" not in inputs or "input_ids" not in inputs:
            raise ValueError(f"ContextParallelTrainer: the batch needs input_ids and labels, got {sorted(inputs)}")
        for key in ("inputs_embeds", "shift_labels", "cu_seqlens", "past_key_values"):
            if key in inputs:
                raise ValueError(f"ContextParallelTrainer: `{key}` in the batch is not supported")
        ids, labels = inputs.pop("input_ids"), inputs.pop("labels")
        B, T = ids.shape
        rank = dist.get_rank() if self.cp_world > 1 else 0
        lo, hi = slice_bounds(T, self.cp_world, rank)
        shift = F.pad(labels[:, 1:], (0, 1), value=-100)  # over the whole row, before slicing
        n_tokens = (shift != -100).sum().clamp_min(1)
        if "position_ids" not in inputs:
            inputs["position_ids"] = torch.arange(lo, hi, device=ids.device)[None].expand(B, -1)
        else:
            inputs["position_ids"] = inputs["position_ids"][:, lo:hi]
        inputs = {
            k: v[:, lo:hi] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == (B, T) else v
            for k, v in inputs.items()
        }
        with context_parallel(self.cp_group) if self.cp_world > 1 else nullcontext():
            outputs = model(input_ids=ids[:, lo:hi], use_cache=False, **inputs)
        logits = outputs.logits.flatten(0, 1)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half-precision logits: fp32 loss
        part = F.cross_entropy(logits, shift[:, lo:hi].flatten(), reduction="sum")
        loss = part / n_tokens * self.cp_world  # DDP averages the gradients over the ranks: their sum is the loss's
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        raise NotImplementedError(
            "ContextParallelTrainer: evaluation is not supported (its loop gathers the ranks' outputs as different "
            "rows); evaluate the trained model with a Trainer in one process"
        )

    def predict(self, *args, **kwargs):
        raise NotImplementedError(
            "ContextParallelTrainer: prediction is not supported (its loop gathers the ranks' outputs as different "
            "rows); predict with a Trainer in one process"
        )
