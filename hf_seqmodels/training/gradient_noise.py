"""Annealed Gaussian gradient noise (Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning for Very Deep
Networks", arXiv 1511.06807): at optimizer step ``t`` every gradient gets ``g <- g + N(0, sigma_t^2)`` with
``sigma_t^2 = eta / (1 + t)^gamma``."""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from .seeding import step_seed


class GradientNoiseCallback(TrainerCallback):
    """Adds annealed Gaussian noise to every gradient once per optimizer step: ``Trainer(..., callbacks=[
    GradientNoiseCallback(eta=0.01)])``.

    Args:
        eta: the noise variance at the first step (``t = 0``); the paper picks it from {0.01, 0.3, 1.0}.
        gamma: the decay exponent of the variance ``eta / (1 + t)^gamma`` (the paper: 0.55).
        seed: seeds the noise; None takes the Trainer's ``args.seed``.

    ``t`` is the Trainer's optimizer step (``state.global_step``, 0 at the first update). The noise is added in
    ``on_pre_optimizer_step``: after the gradients of all the accumulated micro-batches are summed (and, under DDP,
    averaged over the processes), after gradient clipping (the paper adds noise to the gradient that the optimizer
    uses; clipping after it would shrink the scheduled variance whenever the clip is active), and before the optimizer
    step. So under gradient accumulation the noise is drawn once per update, not once per micro-batch, and the
    logged ``grad_norm`` is the norm before the noise. Each step's noise comes from a generator seeded with
    :func:`~hf_seqmodels.training.seeding.step_seed` ``(seed, t)`` (one generator per device, drawn parameter by
    parameter in ``model.parameters()`` order), so every data-parallel rank adds the same noise and the replicas stay
    equal.
    """

    def __init__(self, eta: float, gamma: float = 0.55, seed: int | None = None):
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"GradientNoiseCallback: `eta` must be a finite number >= 0, got {eta!r}")
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"GradientNoiseCallback: `gamma` must be a finite number >= 0, got {gamma!r}")
        self.eta, self.gamma, self.seed = float(eta), float(gamma), seed

    def variance(self, step: int) -> float:
        """``eta / (1 + step)^gamma``."""
        return self.eta / (1 + step) ** self.gamma

    def add_noise(self, parameters, step: int, seed: int) -> None:
        """Adds step ``step``'s noise to the ``.grad`` of each parameter that has one (in the order given)."""
        std = math.sqrt(self.variance(step))
        generators: dict[torch.device, torch.Generator] = {}
        for p in parameters:
            if p.grad is None:
                continue
            gen = generators.get(p.grad.device)
            if gen is None:
                gen = generators[p.grad.device] = torch.Generator(device=p.grad.device)
                gen.manual_seed(step_seed(seed, step))
            noise = torch.randn(p.grad.shape, generator=gen, device=p.grad.device, dtype=torch.float32)
            p.grad.add_(noise.mul_(std).to(p.grad.dtype))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("GradientNoiseCallback: the Trainer passed no `model` to on_pre_optimizer_step")
        seed = args.seed if self.seed is None else self.seed
        self.add_noise([p for p in model.parameters() if p.requires_grad], state.global_step, seed)
