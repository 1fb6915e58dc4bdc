"""Nested sub-models by depth: SortedNet (Valipour et al., 2023, arXiv 2309.00255) and sorted fine-tuning ("Sorted
LLaMA", Kavehzadeh et al., 2023, arXiv 2309.08968). The sub-model of depth ``n`` is the first ``n`` decoder layers
with the shared embeddings, final norm and LM head. Works for this package's stacked models and for transformers'
decoders that keep their layers in ``model.model.layers`` (Llama and its kin).

    with truncated_depth(model, 4):                        # run the first 4 layers (+ final norm + head)
        logits = model(input_ids).logits
    Trainer(..., callbacks=[SortedDepthCallback()])        # SortedNet: one sampled depth per optimizer step
    depth_perplexities(model, input_ids)                   # {depth: perplexity} for every sub-model
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers import TrainerCallback

from ..evaluation.perplexity import perplexity_of_ids
from .seeding import step_seed


def _unwrap(model):
    """The model inside DDP (``.module``) and PEFT (``get_base_model()``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            base = model.get_base_model()
            if base is model:
                return model
            model = base
        else:
            return model


def _layer_owner(model) -> nn.Module:
    """The module whose ``layers`` attribute is the decoder stack: ``model.model`` of a causal LM, or a base model."""
    model = _unwrap(model)
    for owner in (getattr(model, "model", None), model):
        if owner is not None and isinstance(getattr(owner, "layers", None), nn.ModuleList):
            return owner
    raise ValueError(
        f"{type(model).__name__} keeps no decoder stack in `model.model.layers` (an nn.ModuleList): depth truncation "
        "and projection pruning need a stacked decoder (this package's GLA/ParaRNN/Liger/Lizard, transformers' Llama)"
    )


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layers ``model.model.layers`` (through DDP and PEFT wrappers)."""
    return _layer_owner(model).layers


def _configs(model, owner) -> list:
    found = []
    for m in (_unwrap(model), owner):
        config = getattr(m, "config", None)
        if config is not None and all(config is not c for c in found):
            found.append(config)
    return found


@contextmanager
def truncated_depth(model, num_layers: int):
    """Runs ``model`` with its first ``num_layers`` decoder layers only (then the final norm and the head), and
    restores it on leaving. Inside, ``model.model.layers`` holds those layers and ``config.num_hidden_layers`` is
    ``num_layers`` (transformers' Llama runs ``layers[:config.num_hidden_layers]``; this package sizes its cache from
    it). A cache made inside belongs to that depth: do not carry it out. The dropped layers are out of
    ``model.parameters()`` meanwhile (so DDP training at several depths needs ``ddp_find_unused_parameters=True``).
    """
    owner = _layer_owner(model)
    layers = owner.layers
    if not (isinstance(num_layers, int) and 1 <= num_layers <= len(layers)):
        raise ValueError(f"truncated_depth: `num_layers` must be an int in [1, {len(layers)}], got {num_layers!r}")
    configs = _configs(model, owner)
    saved = [c.num_hidden_layers for c in configs]
    owner.layers = nn.ModuleList(list(layers)[:num_layers])
    for c in configs:
        c.num_hidden_layers = num_layers
    try:
        yield model
    finally:
        owner.layers = layers
        for c, n in zip(configs, saved):
            c.num_hidden_layers = n


def sample_depth(depths, seed: int, step: int) -> int:
    """The depth of optimizer step ``step``: uniform over ``depths``, drawn from a generator seeded with
    :func:`~hf_seqmodels.training.seeding.step_seed` ``(seed, step)``, so every data-parallel rank draws the same
    depth without communicating."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    return depths[int(torch.randint(len(depths), (), generator=gen))]


class SortedDepthCallback(TrainerCallback):
    """SortedNet training with ``Trainer``: each optimizer step trains one sub-model, the first ``n`` layers with the
    shared norm and head, ``n`` drawn uniformly from ``depths`` (:func:`sample_depth` with ``(seed, step)``; all the
    micro-batches of an accumulated step use the same depth). Evaluation between steps runs the full model.

    Args:
        depths: the sub-model depths to train (default: every depth 1..num_hidden_layers); include the full depth
            to keep training the whole model.
        seed: seeds the sampling; None takes the Trainer's ``args.seed``.

    ``self.depths_trained`` lists the depth of every step. Under DDP pass ``ddp_find_unused_parameters=True``.
    """

    def __init__(self, depths=None, seed: int | None = None):
        if depths is not None:
            depths = sorted({int(d) for d in depths})
            if not depths or depths[0] < 1:
                raise ValueError(f"SortedDepthCallback: `depths` must be positive layer counts, got {depths!r}")
        self.depths, self.seed = depths, seed
        self.depths_trained: list[int] = []
        self._active = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        total = len(decoder_layers(model))
        if self.depths is None:
            self.depths = list(range(1, total + 1))
        elif self.depths[-1] > total:
            raise ValueError(f"SortedDepthCallback: `depths` {self.depths} exceed the model's {total} layers")

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._leave()
        depth = sample_depth(self.depths, args.seed if self.seed is None else self.seed, state.global_step)
        self.depths_trained.append(depth)
        self._active = truncated_depth(model, depth)
        self._active.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self._leave()

    def on_train_end(self, args, state, control, **kwargs):
        self._leave()

    def _leave(self):
        if self._active is not None:
            active, self._active = self._active, None
            active.__exit__(None, None, None)


@torch.no_grad()
def depth_perplexities(model, input_ids: torch.Tensor, depths=None, batch_size: int = 8) -> dict[int, float]:
    """The perplexity of each sub-model on ``input_ids`` ``[N, T]`` (next-token prediction within each row):
    ``{depth: exp(mean cross-entropy)}`` for ``depths`` (default: every depth)."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"depth_perplexities: `input_ids` must be [N, T] with T >= 2, got {tuple(input_ids.shape)}")
    depths = list(range(1, len(decoder_layers(model)) + 1)) if depths is None else list(depths)
    # each row a block scored from its own start: the package's one perplexity method with stride == context
    flat, T = input_ids.reshape(-1), input_ids.shape[1]
    out = {}
    for depth in depths:
        with truncated_depth(model, depth):
            out[depth] = perplexity_of_ids(model, flat, context=T, stride=T, batch_size=batch_size, progress=False)
    return out


@contextmanager
def summed_depth_loss(model, depths=None):
    """Sorted LLaMA's loss: while inside, a training-mode forward with ``labels`` returns as ``loss`` the sum of the
    losses of the sub-models of every depth in ``depths`` (default: every depth 1..L), all from one pass through the
    stack: the output of layer ``n`` goes through the shared final norm and head, and the model's own
    ``loss_function`` (with the same ``num_items_in_batch``, so ``Trainer``'s loss scaling applies to every term).
    The full depth's term is the model's own loss, counted when ``L`` is in ``depths``. ``logits`` stay the full
    model's. Every layer takes part in each step, so DDP needs no ``find_unused_parameters``. Labels are read from the
    keyword argument ``labels`` (as ``Trainer`` passes them)."""
    owner, top = _layer_owner(model), _unwrap(model)
    total = len(owner.layers)
    depths = list(range(1, total + 1)) if depths is None else sorted({int(d) for d in depths})
    if not depths or depths[0] < 1 or depths[-1] > total:
        raise ValueError(f"summed_depth_loss: `depths` must be layer counts in [1, {total}], got {depths!r}")
    captured: dict[int, torch.Tensor] = {}

    def capture(depth):
        def hook(module, args, output):
            captured[depth] = output[0] if isinstance(output, tuple) else output

        return hook

    def add_losses(module, args, kwargs, output):
        labels = kwargs.get("labels")
        shallow = [captured.pop(d) for d in depths if d < total and d in captured]
        if not module.training or labels is None or getattr(output, "loss", None) is None:
            return output
        extra = {k: kwargs[k] for k in ("num_items_in_batch",) if k in kwargs}
        loss = output.loss if total in depths else output.loss * 0
        for hidden in shallow:
            logits = module.get_output_embeddings()(owner.norm(hidden))
            loss = loss + module.loss_function(
                logits=logits, labels=labels, vocab_size=module.config.vocab_size, **extra
            )
        output.loss = loss
        return output

    handles = [owner.layers[d - 1].register_forward_hook(capture(d)) for d in depths if d < total]
    handles.append(top.register_forward_hook(add_losses, with_kwargs=True))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        captured.clear()


class SummedDepthLossCallback(TrainerCallback):
    """Sorted fine-tuning as Sorted LLaMA trains it: every step's loss is the sum of the losses of the sub-models of
    ``depths`` (default: every depth), from one forward pass (:func:`summed_depth_loss`, active from the start to the
    end of training): ``Trainer(..., callbacks=[SummedDepthLossCallback()])``."""

    def __init__(self, depths=None):
        self.depths = depths
        self._active = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._active = summed_depth_loss(model, self.depths)
        self._active.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        if self._active is not None:
            active, self._active = self._active, None
            active.__exit__(None, None, None)
