"""Context parallelism's state and exchanges (the sequence split over ranks): the process group of the active
``hf_seqmodels.context_parallel`` block (None outside one), and the differentiable exchanges the ops make inside it.

Rank ``r`` of ``W`` holds the ``r``-th contiguous slice of every sequence (slices may differ in length). Each exchange
is one ``all_gather`` of a small tensor forward and one backward, called by every rank in the same order (the ranks
run the same layers).

- :func:`exchange_gla_state`: rank ``r``'s true initial state from every rank's final state from a zero start
  ``S_j`` and total log-decay ``a_j``: ``h_r = sum_{j<r} exp(a_{j+1} + ... + a_{r-1}) * S_j``. Backward, the
  mirror: ``dS_j = sum_{r>j} exp(a_{j+1} + ... + a_{r-1}) * dh_r`` (a reverse recurrence over ranks) and
  ``da_j = sum_V exp(a_j) * h_j * dS_j``.
- :func:`exchange_halo`: the last ``w`` positions of the previous rank's slice (zeros on rank 0), for a causal
  convolution; backward sends each halo's gradient back to the rank it came from.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_ACTIVE: list = []  # the process groups of the nested context_parallel blocks (None: the default group)


def active() -> bool:
    """True inside a ``context_parallel`` block."""
    return bool(_ACTIVE)


def push(group) -> None:
    _ACTIVE.append(group)


def pop() -> None:
    _ACTIVE.pop()


def _group():
    return _ACTIVE[-1]


def refuse(what: str, reason: str) -> None:
    """Raise, naming ``what``, if called inside a ``context_parallel`` block (for layers that cannot run on a slice
    of the sequence)."""
    if _ACTIVE:
        raise NotImplementedError(
            f"{what} does not support context parallelism (hf_seqmodels.context_parallel): {reason}"
        )


def _all_gather(x: torch.Tensor, group) -> torch.Tensor:
    """[W, *x.shape]: every rank's ``x`` (same shape on every rank)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.stack(parts)


def _decay(a: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """exp(a) shaped to multiply a state [B, H, K, V]: a is [B, H, K] (per key) or [B, H] (per head)."""
    e = torch.exp(a)
    return e[..., None] if a.dim() == 3 else e[..., None, None]


class _GLAStateExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, S, a, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        Ss, As = _all_gather(S, group), _all_gather(a, group)
        h = torch.zeros_like(S)
        for j in range(rank):
            h = _decay(As[j], h) * h + Ss[j]
        ctx.save_for_backward(h, As)
        ctx.group, ctx.rank, ctx.world = group, rank, world
        return h

    @staticmethod
    def backward(ctx, dh):
        h, As = ctx.saved_tensors
        dhs = _all_gather(dh, ctx.group)
        dS = torch.zeros_like(dh)
        for r in range(ctx.world - 1, ctx.rank, -1):  # dS_j = dh_{j+1} + exp(a_{j+1}) dS_{j+1}
            dS = dhs[r] + _decay(As[r], dS) * dS
        da = _decay(As[ctx.rank], h) * h * dS
        da = da.sum(-1) if As.dim() == 4 else da.sum((-2, -1))
        return dS, da, None


def exchange_gla_state(S: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """This rank's true initial state ``[B, H, K, V]`` from its final state from a zero start ``S`` and its total
    log-decay ``a`` (``[B, H, K]`` or ``[B, H]``), in ``S``'s dtype. Differentiable in ``S`` and ``a``."""
    return _GLAStateExchange.apply(S, a.to(S.dtype), _group())


class _Halo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tail, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        tails = _all_gather(tail, group)
        ctx.group, ctx.rank, ctx.world = group, rank, world
        return tails[rank - 1].clone() if rank > 0 else torch.zeros_like(tail)

    @staticmethod
    def backward(ctx, grad):
        grads = _all_gather(grad, ctx.group)
        return (grads[ctx.rank + 1] if ctx.rank + 1 < ctx.world else torch.zeros_like(grad)), None


def exchange_halo(tail: torch.Tensor) -> torch.Tensor:
    """The previous rank's ``tail`` (zeros on rank 0); ``tail`` has the same shape on every rank. Differentiable."""
    return _Halo.apply(tail, _group())
