"""H-Net training helpers (Hwang et al., 2025, arXiv 2507.07955): the reference's per-stage learning rates and
weight-decay split (:func:`hnet_parameter_groups`), and a ``Trainer`` callback that logs the compression
(:class:`HNetCompressionCallback`)."""

from __future__ import annotations

from transformers import TrainerCallback

from hf_seqmodels.models.hnet.modeling_hnet import HNetForCausalLM, HNetStage


def hnet_parameter_groups(model, lr: float, weight_decay: float = 0.1, lr_multipliers=None) -> list[dict]:
    """Optimizer parameter groups for an H-Net (or a PEFT model wrapping one), as the reference trains it.

    Each trainable parameter gets ``lr x lr_multipliers[stage]``, ``stage`` being the innermost stage that holds it
    (embeddings and the LM head: stage 0; a stage's encoder, decoder, router and residual projection: that stage;
    the innermost main network: the last stage). ``lr_multipliers`` defaults to ``config.lr_multipliers`` (reference
    example: [3.0, 1.7, 0.9], outermost first). Biases, norms and 1-D parameters (Mamba-2's ``A_log``, ``D``,
    ``dt_bias``, the pad vectors) get no weight decay. Use with any torch optimizer, e.g. with ``Trainer``:
    ``Trainer(..., optimizers=(torch.optim.AdamW(hnet_parameter_groups(model, lr=1e-3)), None))``.
    """
    stages = [(name, m) for name, m in model.named_modules() if isinstance(m, HNetStage)]
    if not stages:
        raise ValueError(f"hnet_parameter_groups: {type(model).__name__} holds no H-Net stage")
    multipliers = list(lr_multipliers if lr_multipliers is not None else stages[0][1].lr_multipliers)
    if len(multipliers) != len(stages):
        raise ValueError(
            f"hnet_parameter_groups: lr_multipliers needs one entry per stage ({len(stages)}), got {multipliers}"
        )
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = [m.stage_idx for prefix, m in stages if name.startswith(prefix + ".")]
        stage = max(owner) if owner else 0
        no_decay = param.dim() < 2 or name.endswith(".bias") or "norm" in name.rsplit(".", 2)[-2].lower()
        key = (stage, no_decay)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "lr": lr * multipliers[stage],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "stage": stage,
            },
        )
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


class HNetCompressionCallback(TrainerCallback):
    """Adds the H-Net's last ratio loss and boundary fraction per stage to the Trainer's logs (and log history),
    so the compression can be watched while training: ``Trainer(..., callbacks=[HNetCompressionCallback()])``."""

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        stats = getattr(_unwrap_hnet(model), "last_compression", None) if model is not None else None
        if not stats or logs is None:
            return
        extra = {}
        if stats["ratio_loss"] is not None:
            extra["ratio_loss"] = float(stats["ratio_loss"])
        if stats["boundary_fractions"] is not None:
            extra.update({f"boundary_fraction_{s}": float(f) for s, f in enumerate(stats["boundary_fractions"])})
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)


def _unwrap_hnet(model):
    for m in model.modules():
        if isinstance(m, HNetForCausalLM):
            return m
    return model
