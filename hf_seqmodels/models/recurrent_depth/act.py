"""Adaptive Computation Time (ACT; Graves 2016) for a recurrent core, with the semantics of tensor2tensor's
``universal_transformer_act`` (``act_type="basic"``: position-wise halting, the recursive ``previous_state`` blend),
as used by Universal Transformers (Dehghani et al. 2019).

Per step ``n`` (0-based) and per position, with ``s_n`` the state fed to the step and ``h_n`` its halting
probability accumulated so far (``h_0 = 0``):

    p_n = sigmoid(w . s_n + b)
    running     = h_n < 1
    new_halted  = running and h_n + p_n >  threshold
    still_run   = running and h_n + p_n <= threshold
    h          += p_n * still_run
    remainder  += new_halted * (1 - h)          # R = 1 - (sum of the p's before the halting step)
    h          += new_halted * remainder        # exactly 1 once halted
    n_updates  += still_run + new_halted
    u_n         = p_n * still_run + new_halted * remainder
    s_{n+1}     = step_fn(s_n, n)
    y          <- u_n * s_{n+1} + (1 - u_n) * y  # y starts at 0; the returned state

The loop stops when no position has ``h < threshold and n_updates < max_steps``, i.e. when every position halted or
after ``max_steps`` steps. A position that reaches ``max_steps`` without halting keeps ``remainder = 0`` (as t2t).
Two points where t2t's "basic" ACT is not Graves' formulation, both kept: the output is the recursive blend above,
not the weighted sum ``sum_n u_n s_{n+1}`` (t2t's ``act_type="accumulated"``, not implemented here), and a position
that runs out of steps is not forced to halt at the last one (Graves gives it the remainder there).

The ponder cost of a position is ``n_updates + remainder``; t2t adds ``act_loss_weight * mean(ponder cost)`` to the
loss (gradient through the remainders only, i.e. through the halting probabilities before the halting step).

Halted positions (as t2t): the step function keeps being applied to the whole tensor, so a halted position's
``s_n`` keeps evolving (and other positions may keep attending to it), but its update weight ``u_n`` is 0 so its
output ``y`` no longer changes and its halting probability no longer counts.

Differences from t2t, all deliberate: padded positions (``attention_mask`` 0) start halted (``h = 1``), so they get
output 0 and ponder cost 0, and :attr:`ACTOutput.ponder_loss` averages over the valid positions only (t2t averages
over every position, padding included); t2t applies its timing signals (``step_preprocess``) before the halting
unit, here anything step-dependent belongs to ``step_fn``, so the halting unit sees the state before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from hf_seqmodels.layers.checks import check_int, check_number


class ACTHalting(nn.Module):
    """The halting unit: ``p = sigmoid(Linear(hidden_size -> 1)(state))``, the bias initialised to ``bias_init``
    (t2t's ``act_halting_bias_init``, default 1.0) and the weight Glorot-uniform (TensorFlow's dense default).

    Args:
        hidden_size: width of the state.
        threshold: halting threshold, t2t's ``1 - act_epsilon`` (default 0.99), in (0, 1].
        bias_init: initial bias of the halting unit.
    """

    def __init__(self, hidden_size: int, threshold: float = 0.99, bias_init: float = 1.0):
        super().__init__()
        check_int("ACTHalting", "hidden_size", hidden_size)
        check_number("ACTHalting", "threshold", threshold, minimum=0.0, maximum=1.0)
        check_number("ACTHalting", "bias_init", bias_init, positive=False)
        self.threshold = float(threshold)
        self.bias_init = float(bias_init)
        self.proj = nn.Linear(hidden_size, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.constant_(self.proj.bias, self.bias_init)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """``state`` ``[..., hidden_size]`` -> halting probabilities ``[...]``."""
        return torch.sigmoid(self.proj(state)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, bias_init={self.bias_init}"


@dataclass
class ACTOutput:
    """What :func:`act_recurrence` returns. Per-position tensors have the state's shape without its last dimension
    and the accumulation dtype (float32 at least).

    Attributes:
        state: the weighted final state (``y`` above), the state's shape and dtype; 0 at padded positions.
        halting_probability: the accumulated halting probability, 1 where a position halted (and at padding).
        remainders: ``R``, 0 where a position did not halt within ``max_steps`` (and at padding).
        n_updates: ``N``, the number of steps that updated a position.
        ponder_cost: ``N + R`` per position (0 at padding).
        ponder_loss: the mean ponder cost over the valid positions (a scalar; multiply by ``act_loss_weight``).
        num_steps: the number of steps run, ``max(n_updates)``.
    """

    state: torch.Tensor
    halting_probability: torch.Tensor
    remainders: torch.Tensor
    n_updates: torch.Tensor
    ponder_cost: torch.Tensor
    ponder_loss: torch.Tensor
    num_steps: int


def act_recurrence(
    step_fn: Callable[[torch.Tensor, int], torch.Tensor],
    state: torch.Tensor,
    halting: ACTHalting,
    max_steps: int,
    attention_mask: torch.Tensor | None = None,
) -> ACTOutput:
    """Runs ``state = step_fn(state, step)`` (``step`` 0-based) with per-position ACT halting, as the module
    docstring describes (tensor2tensor's ``universal_transformer_act``, ``act_type="basic"``).

    Args:
        step_fn: one application of the recurrent core, ``[..., hidden] -> [..., hidden]`` (same shape); it may mix
            positions (attention) and is always applied to every position, halted or not.
        state: the initial state ``[..., hidden]``, e.g. ``[batch, length, hidden]``.
        halting: the halting unit (its ``threshold`` is used).
        max_steps: the most steps any position takes (t2t's ``act_max_steps``), >= 1.
        attention_mask: optional, ``state.shape[:-1]``, 1 for valid positions and 0 for padding (halted from the
            start).

    The loop checks on the host after each step whether any position is still running (one synchronisation per
    step), as t2t's ``tf.while_loop``.
    """
    where = "act_recurrence"
    check_int(where, "max_steps", max_steps)
    if not isinstance(halting, ACTHalting):
        raise TypeError(f"{where}: halting must be an ACTHalting, got {type(halting).__name__}")
    if not isinstance(state, torch.Tensor) or state.dim() < 1 or not state.is_floating_point():
        raise ValueError(f"{where}: state must be a floating-point tensor [..., hidden], got {_describe(state)}")
    if state.shape[-1] != halting.proj.in_features:
        raise ValueError(
            f"{where}: state's last dimension must be halting's hidden_size {halting.proj.in_features}, "
            f"got state of shape {tuple(state.shape)}"
        )
    shape, out_dtype = state.shape[:-1], state.dtype
    acc_dtype = torch.promote_types(state.dtype, torch.float32)
    halting_probability = torch.zeros(shape, dtype=acc_dtype, device=state.device)
    valid = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != shape:
            raise ValueError(
                f"{where}: attention_mask must be a tensor of shape {tuple(shape)} (state's shape without the "
                f"hidden dimension), got {_describe(attention_mask)}"
            )
        valid = attention_mask.to(device=state.device) != 0
        # padding counts as halted from the start: never updated, output 0, ponder cost 0
        halting_probability = torch.where(valid, halting_probability, torch.ones_like(halting_probability))
    remainders = torch.zeros_like(halting_probability)
    n_updates = torch.zeros_like(halting_probability)
    # t2t's previous_state: the blended output y, kept in the accumulation dtype
    previous_state = torch.zeros(state.shape, dtype=acc_dtype, device=state.device)
    threshold = halting.threshold

    num_steps = 0
    for step in range(max_steps):
        # t2t's should_continue, evaluated before each step
        if not bool(((halting_probability < threshold) & (n_updates < max_steps)).any()):
            break
        p = halting(state).to(acc_dtype)
        running = (halting_probability < 1.0).to(acc_dtype)
        proposed = halting_probability + p * running
        new_halted = (proposed > threshold).to(acc_dtype) * running
        still_running = (proposed <= threshold).to(acc_dtype) * running
        halting_probability = halting_probability + p * still_running
        remainders = remainders + new_halted * (1 - halting_probability)
        halting_probability = halting_probability + new_halted * remainders
        n_updates = n_updates + still_running + new_halted
        update_weights = (p * still_running + new_halted * remainders).unsqueeze(-1)

        # halted positions keep being computed (state evolves) but update_weights is 0 there, so y keeps its value
        transformed = step_fn(state, step)
        if not isinstance(transformed, torch.Tensor) or transformed.shape != state.shape:
            raise ValueError(
                f"{where}: step_fn must return a tensor of the state's shape {tuple(state.shape)}, "
                f"got {_describe(transformed)} at step {step}"
            )
        previous_state = transformed.to(acc_dtype) * update_weights + previous_state * (1 - update_weights)
        state = transformed
        num_steps = step + 1

    ponder_cost = n_updates + remainders
    if valid is None:
        ponder_loss = ponder_cost.mean()
    else:
        ponder_loss = ponder_cost.sum() / valid.sum().clamp(min=1).to(acc_dtype)
    return ACTOutput(
        state=previous_state.to(out_dtype),
        halting_probability=halting_probability,
        remainders=remainders,
        n_updates=n_updates,
        ponder_cost=ponder_cost,
        ponder_loss=ponder_loss,
        num_steps=num_steps,
    )


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"
