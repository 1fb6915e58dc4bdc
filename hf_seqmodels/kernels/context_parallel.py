"""Context parallelism's state and exchanges (the sequence split over ranks): the process group of the active
``hf_seqmodels.context_parallel`` block (None outside one), and the differentiable exchanges the ops make inside it.

Rank ``r`` of ``W`` holds the ``r``-th contiguous slice of every sequence (slices may differ in length). Each exchange
is one ``all_gather`` of a small tensor forward and one backward (``global_max``: one ``all_reduce``; ``relay``: one
``all_gather`` per rank boundary), called by every rank in the same order (the ranks run the same layers, and
decisions that change the work, like Newton's stopping test, are taken from global values).

- :func:`exchange_gla_state`: rank ``r``'s true initial state from every rank's final state from a zero start
  ``S_j`` and total log-decay ``a_j``: ``h_r = sum_{j<r} exp(a_{j+1} + ... + a_{r-1}) * S_j``. Backward, the
  mirror: ``dS_j = sum_{r>j} exp(a_{j+1} + ... + a_{r-1}) * dh_r`` (a reverse recurrence over ranks) and
  ``da_j = sum_V exp(a_j) * h_j * dS_j``.
- :func:`exchange_halo`: the last ``w`` positions of the previous rank's slice (zeros on rank 0), for a causal
  convolution (or the first positions of the next rank's slice, ``reverse``); backward sends each halo's gradient
  back to the rank it came from.
- :func:`exchange_scan_carry`: for the linear scans ``h_t = a_t h_{t-1} + b_t`` (``linear_scan``: elementwise
  ``a``; ``block2_scan``: a 2x2 matrix per unit). Rank ``j``'s slice is one affine map of the state entering it,
  ``h -> M_j h + c_j``, where ``M_j`` is the product of its ``a_t`` (the latest on the left) and ``c_j`` its final
  state from a zero start. The state entering rank ``r`` is the composition of the earlier ranks' maps applied to
  zero: ``h_0 = 0``, ``h_{j+1} = M_j h_j + c_j``. Backward, the mirror (``M^T`` for the 2x2 blocks):
  ``dc_j = dh_{j+1} + M_{j+1}^T dc_{j+1}`` (a reverse recurrence over ranks, ``dc_{W-1} = 0``) and
  ``dM_j = dc_j h_j^T`` (``dc_j * h_j`` elementwise). A reversed scan (``h_t = a_t h_{t+1} + b_t``) runs the same
  chain over the ranks in reverse order.
- :func:`exchange_running_max`: the elementwise max of the earlier ranks' tensors (a running max that crosses the
  slices, e.g. Aaren's stabilizer; not differentiable); :func:`global_max` (a decision every rank must share, e.g.
  Newton's convergence test) and :func:`relay` (a step-by-step solve passed from rank to rank: Newton's fallback).
"""

from __future__ import annotations

from contextlib import contextmanager

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


def current() -> tuple:
    """``(group,)`` inside a ``context_parallel`` block (``group`` None: the default group), ``()`` outside: kept by
    an op whose backward runs its own exchanges (it may run after the block), see :func:`within`."""
    return (_ACTIVE[-1],) if _ACTIVE else ()


@contextmanager
def within(kept: tuple):
    """Run under the block that :func:`current` returned (``()``: outside any block)."""
    if not kept:
        yield
        return
    push(kept[0])
    try:
        yield
    finally:
        pop()


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


def _neighbour(parts: torch.Tensor, rank: int, world: int, step: int) -> torch.Tensor:
    """``parts[rank + step]``, zeros past either end."""
    j = rank + step
    return parts[j].clone() if 0 <= j < world else torch.zeros_like(parts[0])


class _Halo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tail, step, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        ctx.group, ctx.rank, ctx.world, ctx.step = group, rank, world, step
        return _neighbour(_all_gather(tail, group), rank, world, step)

    @staticmethod
    def backward(ctx, grad):
        return _neighbour(_all_gather(grad, ctx.group), ctx.rank, ctx.world, -ctx.step), None, None


def exchange_halo(tail: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """The previous rank's ``tail`` (zeros on rank 0); ``reverse``: the next rank's (zeros on the last rank).
    ``tail`` has the same shape on every rank. Differentiable."""
    return _Halo.apply(tail, 1 if reverse else -1, _group())


def global_max(x: torch.Tensor) -> torch.Tensor:
    """The elementwise max of ``x`` over the ranks (NaN counts as +inf, so a non-finite value on one rank is seen by
    all). Not differentiable."""
    x = torch.nan_to_num(x.detach().clone(), nan=float("inf"))
    dist.all_reduce(x, op=dist.ReduceOp.MAX, group=_group())
    return x


def relay(solve, state: torch.Tensor):
    """The ranks in turn, in rank order: this rank's ``solve(h_in)``, with ``h_in`` the last state ``[:, -1]`` of the
    previous rank's result (None on the first rank). ``state``: a zero state shaped and typed like the one carried.
    A step-by-step solve across the slices (no parallelism across the ranks); one all_gather per rank boundary. Not
    differentiable."""
    group = _group()
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    out = h_in = None
    for j in range(world):
        if j == rank:
            out = solve(h_in)
        if j + 1 < world:
            carried = _all_gather(out[:, -1].to(state.dtype) if j == rank else state, group)[j]
            h_in = carried if rank == j + 1 else h_in
    return out


class _ScanCarryExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, M, c, kind, reverse, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        Ms, cs = _all_gather(M, group), _all_gather(c, group)
        chain = list(range(world))[::-1] if reverse else list(range(world))  # the ranks in the scan's order
        pos = chain.index(rank)
        h = torch.zeros_like(c)
        for j in chain[:pos]:
            h = kind.apply(Ms[j], h) + cs[j]
        ctx.save_for_backward(h, Ms)
        ctx.kind, ctx.group, ctx.chain, ctx.pos = kind, group, chain, pos
        return h

    @staticmethod
    def backward(ctx, dh):
        h, Ms = ctx.saved_tensors
        kind, chain, pos = ctx.kind, ctx.chain, ctx.pos
        dhs = _all_gather(dh, ctx.group)
        dc = torch.zeros_like(dh)
        for r in reversed(chain[pos + 1 :]):  # dc_j = dh_{j+1} + M_{j+1}^T dc_{j+1}
            dc = dhs[r] + kind.apply(kind.transpose(Ms[r]), dc)
        return kind.outer(dc, h), dc, None, None, None


def exchange_scan_carry(M: torch.Tensor, c: torch.Tensor, kind, reverse: bool = False) -> torch.Tensor:
    """The state entering this rank's slice of a linear scan, from its slice's total map ``M`` and its final state
    from a zero start ``c`` (``[B, D]`` each for the diagonal scan; ``[B, D, 2, 2]`` and ``[B, D, 2]`` for 2x2
    blocks); ``kind`` applies, transposes and differentiates a map (``kernels/scan/scan_torch.py``'s ``Diag`` or
    ``Block2``). ``reverse``: the scan runs from the end (the state enters from the next ranks). Differentiable in
    ``M`` and ``c``."""
    return _ScanCarryExchange.apply(M, c.to(M.dtype), kind, reverse, _group())


def exchange_running_max(x: torch.Tensor) -> torch.Tensor:
    """The elementwise max of ``x`` over the earlier ranks (``-inf`` on the first rank); ``x`` has the same shape on
    every rank. Not differentiable (the result is detached)."""
    group = _group()
    xs = _all_gather(x.detach(), group)
    rank = dist.get_rank(group)
    return xs[:rank].amax(0) if rank else torch.full_like(x, float("-inf"))
