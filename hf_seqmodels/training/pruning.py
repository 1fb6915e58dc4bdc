"""Magnitude pruning of a decoder's projections through ``torch.nn.utils.prune`` (as studied for recurrent and
linear-attention language models, arXiv 2407.20601), saved as plain weights with their zeros.

    report = prune_projections(model, amount=0.5)          # L1 unstructured, one threshold over every projection
    Trainer(model=model, ...).train()                      # recovery fine-tune: the masks stay applied
    model.save_pretrained("pruned")                        # plain `weight` tensors with the zeros, no masks
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from .depth import decoder_layers

SCOPES = ("global", "layer")


def prunable_projections(model) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the decoder layers (``model.model.layers``): the token mixers' projections (GLA's
    q/k/v/g/o and gate projections, ParaRNN's input, gate and output projections) and the MLPs. The embeddings and the
    LM head are left out. Keys are the names in ``model.named_modules()``."""
    layers = decoder_layers(model)
    owner = {id(m): name for name, m in model.named_modules()}
    return {
        owner[id(m)]: m
        for layer in layers
        for m in layer.modules()
        if isinstance(m, nn.Linear) and id(m) in owner  # (every submodule of the layers is reachable from `model`)
    }


def prune_projections(model, amount: float, scope: str = "global", modules=None) -> dict[str, float]:
    """Prunes the weights of the projections with the smallest magnitudes (L1 unstructured) and returns the
    fraction of zero weights per module.

    Args:
        amount: the fraction of weights to zero, in [0, 1].
        scope: ``"global"``: one magnitude threshold over all the chosen weights together
            (``prune.global_unstructured``; some modules end sparser than others); ``"layer"``: ``amount`` of each
            module's weights (``prune.l1_unstructured`` per module).
        modules: names (from ``model.named_modules()``) of the ``nn.Linear`` modules to prune; default: every
            projection of :func:`prunable_projections`.

    Each weight becomes ``weight_orig * weight_mask`` (torch's reparametrization): gradients reach only the kept
    entries, so a recovery fine-tune with ``Trainer`` (built after this call) keeps the pruned weights at zero.
    Pruning a module again prunes ``amount`` of its remaining weights (torch's ``PruningContainer``). The model's
    ``state_dict`` (so ``save_pretrained`` and ``Trainer.save_model``) holds the plain ``weight`` with its zeros,
    which loads into an unpruned model; loading such a ``weight`` back into the pruned model keeps its masks.
    :func:`remove_pruning` makes the pruning permanent in memory.
    """
    if not (isinstance(amount, (int, float)) and 0 <= amount <= 1):
        raise ValueError(f"prune_projections: `amount` must be a fraction in [0, 1], got {amount!r}")
    if scope not in SCOPES:
        raise ValueError(f"prune_projections: `scope` must be one of {SCOPES}, got {scope!r}")
    candidates = prunable_projections(model)
    if modules is None:
        chosen = candidates
    else:
        named = dict(model.named_modules())
        unknown = [n for n in modules if not isinstance(named.get(n), nn.Linear)]
        if unknown:
            raise ValueError(f"prune_projections: `modules` names no nn.Linear of the model: {unknown}")
        chosen = {n: named[n] for n in modules}
    if not chosen:
        raise ValueError(f"prune_projections: {type(model).__name__} has no projection to prune")
    if scope == "global":
        prune.global_unstructured(
            [(m, "weight") for m in chosen.values()], pruning_method=prune.L1Unstructured, amount=float(amount)
        )
    else:
        for m in chosen.values():
            prune.l1_unstructured(m, "weight", amount=float(amount))
    for m in chosen.values():
        _save_plain_weights(m)
    return projection_sparsity(model, chosen)


def projection_sparsity(model, modules: dict[str, nn.Module] | None = None) -> dict[str, float]:
    """The fraction of zero entries of each projection's (effective) weight."""
    modules = prunable_projections(model) if modules is None else modules
    return {name: float((m.weight == 0).float().mean()) for name, m in modules.items()}


def remove_pruning(model) -> int:
    """Makes the pruning permanent: each pruned module gets back a plain ``weight`` parameter (with its zeros) and no
    mask or hook. Returns how many modules were pruned."""
    count = 0
    for m in model.modules():
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
            for handle in m.__dict__.pop("_plain_weight_hooks", ()):
                handle.remove()
            count += 1
    return count


def _save_plain_weights(module: nn.Module) -> None:
    """State-dict hooks: save ``weight = weight_orig * weight_mask`` in place of the pair, and load a plain ``weight``
    into ``weight_orig`` (the mask stays)."""
    if "_plain_weight_hooks" in module.__dict__:
        return

    def to_plain(mod, state_dict, prefix, local_metadata):
        orig, mask = prefix + "weight_orig", prefix + "weight_mask"
        if orig in state_dict and mask in state_dict:
            state_dict[prefix + "weight"] = (state_dict.pop(orig) * state_dict.pop(mask)).detach()
        return state_dict

    def from_plain(mod, state_dict, prefix, *args):
        if hasattr(mod, "weight_mask") and prefix + "weight" in state_dict and prefix + "weight_orig" not in state_dict:
            state_dict[prefix + "weight_orig"] = state_dict.pop(prefix + "weight")
            state_dict[prefix + "weight_mask"] = mod.weight_mask

    module.__dict__["_plain_weight_hooks"] = (
        module._register_state_dict_hook(to_plain),
        module._register_load_state_dict_pre_hook(from_plain, with_module=True),
    )


__all__ = ["prunable_projections", "prune_projections", "projection_sparsity", "remove_pruning"]
