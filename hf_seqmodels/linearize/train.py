"""Training for linearized models: attention transfer (stage 1, Lizard), LoRA through PEFT (stage 2), and the
small helper both need (packed token blocks). Perplexity is ``hf_seqmodels.evaluation.perplexity_of_ids``."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from hf_seqmodels.layers.checks import check_int
from hf_seqmodels.layers.lizard import LizardAttention

#: parameter names (substrings) learned by attention transfer
TRANSFER_PARAMETERS = ("q_feature_map", "k_feature_map", "decay_proj", "sink_logits", "window_weight")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj")


def token_blocks(tokenizer, text: str, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Tokenize ``text`` and pack it into non-overlapping blocks ``[N, seq_len]`` (the remainder is dropped)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"token_blocks: the text has {ids.numel()} tokens, fewer than seq_len={seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


def _batches(blocks: torch.Tensor, batch_size: int, steps: int, seed: int = 0):
    """``steps`` batches drawn from ``blocks`` in shuffled epochs."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(blocks.shape[0], generator=gen)])
        yield blocks[order[:batch_size]]
        order = order[batch_size:]


def lizard_mixers(model):
    return [m for m in model.modules() if isinstance(m, LizardAttention)]


def attention_transfer(
    model, blocks: torch.Tensor, steps: int, lr: float = 1e-2, batch_size: int = 1, progress: bool = True
):
    """Stage 1 of Lizard: train only the new parameters (feature maps, gate, sinks, mixing weight) so that every
    layer's output matches the teacher's (the original softmax attention, computed in the same forward pass from the
    same inputs) in mean squared error. Returns the loss of every step (mean over layers)."""
    mixers = lizard_mixers(model)
    if not mixers:
        raise ValueError(f"attention_transfer: {type(model).__name__} has no Lizard attention layers")
    was_training = model.training
    grad_state = {p: p.requires_grad for p in model.parameters()}
    params = [p for n, p in model.named_parameters() if any(t in n for t in TRANSFER_PARAMETERS)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = params[0].device
    losses = []
    for m in mixers:
        m.attention_transfer = True
    model.train()
    try:
        bar = tqdm(_batches(blocks, batch_size, steps), total=steps, desc="attention transfer", disable=not progress)
        for batch in bar:
            model(input_ids=batch.to(device), use_cache=False)
            loss = torch.stack([m.transfer_loss for m in mixers]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(mse=f"{losses[-1]:.4g}")
    finally:
        for m in mixers:
            m.attention_transfer, m.transfer_loss = False, None
        for p, flag in grad_state.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return losses


def add_lora(model, r: int = 8, alpha: int | None = None, dropout: float = 0.0, target_modules=None):
    """Wrap ``model`` in a PEFT LoRA model: adapters of rank ``r`` on ``target_modules`` (default: the papers' q, k,
    v projections as the teacher's family names them: ``q_proj, k_proj, v_proj``, or Phi-3's fused ``qkv_proj``),
    everything else frozen."""
    from peft import LoraConfig, get_peft_model

    check_int("add_lora", "r", r)
    if target_modules is None:
        family = getattr(getattr(model, "config", None), "family", None)
        target_modules = family.lora_targets if family is not None else DEFAULT_LORA_TARGETS
    config = LoraConfig(
        r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def finetune(model, blocks: torch.Tensor, steps: int, lr: float = 1e-3, batch_size: int = 1, progress: bool = True):
    """Next-token fine-tuning of the trainable parameters (LoRA adapters after :func:`add_lora`) with AdamW and a
    cosine schedule. Returns the loss of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("finetune: the model has no trainable parameters (call add_lora first)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    device = params[0].device
    was_training = model.training
    model.train()
    losses = []
    try:
        bar = tqdm(
            _batches(blocks, batch_size, steps, seed=1), total=steps, desc="LoRA fine-tune", disable=not progress
        )
        for batch in bar:
            batch = batch.to(device)
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        model.train(was_training)
    return losses


def lora_target_choices(method: str, options: dict, model_type: str | None = None) -> list[str]:
    """Names of the linear layers of a ``method`` model converted from a ``model_type`` teacher (None: any family),
    from one-layer, width-16 instances on the meta device (no weights)."""
    from hf_seqmodels.layers.families import FAMILIES

    from .convert import METHODS

    if model_type is None:
        return sorted({name for family in FAMILIES for name in lora_target_choices(method, options, family)})
    config_class, model_class = METHODS[method][:2]
    small = {"window_size": options.get("window_size", 4)}
    config = config_class(
        vocab_size=8,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        base_model_type=model_type,
        **small,
    )
    with torch.device("meta"):
        model = model_class(config)
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    )


def check_lora_targets(text: str | None, method: str, options: dict, model_type: str | None = None) -> list[str]:
    """The LoRA targets from a comma-separated list (``--lora-targets``; None: the family's q, k, v), each checked to
    be a linear layer of the model."""
    from hf_seqmodels.layers.families import FAMILIES

    if text is None:
        family = FAMILIES.get(model_type or "llama")
        return list(family.lora_targets if family is not None else FAMILIES["llama"].lora_targets)
    targets = [t.strip() for t in text.split(",") if t.strip()]
    if not targets:
        raise ValueError(f"--lora-targets must name at least one linear layer, got {text!r}")
    choices = lora_target_choices(method, options, model_type if model_type in FAMILIES else None)
    unknown = [t for t in targets if t not in choices]
    if unknown:
        teacher = f" converted from a {model_type!r} model" if model_type in FAMILIES else ""
        raise ValueError(
            f"--lora-targets: {unknown} {'is' if len(unknown) == 1 else 'are'} not a linear layer of a "
            f"{method} model{teacher}; choose from {choices}"
        )
    return targets
