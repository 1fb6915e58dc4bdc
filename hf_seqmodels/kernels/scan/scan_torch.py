"""Linear scans in plain PyTorch: the CPU path, and the reference the Triton kernels match.

Both scans compose affine maps ``h -> a_t h + b_t`` along time (dim 1). ``diagonal``: ``a, b`` are ``[B, T, D]``;
``block2``: ``a`` is ``[B, T, D, 2, 2]``, ``b`` is ``[B, T, D, 2]`` (one 2x2 map per unit).

The scan is exact for any real ``a`` (only products and sums; no logarithms) and does O(T) work, the least a CPU
can: the sequence is cut into about sqrt(T) chunks of about sqrt(T) steps; every chunk is scanned from a zero
state step by step, all chunks at once (one vectorized step per position in a chunk, which also composes each
chunk's maps), then the states entering the chunks are carried from chunk to chunk, and each chunk is shifted by
the state it starts from. About 2 sqrt(T) vectorized steps in all (a log-depth doubling scan does O(T log T) work
and copies; on a CPU the work, not the step count, sets the time). The 2x2 maps are applied and composed
elementwise: a batched 2x2 matmul costs far more per element on a CPU.

Backward (both scans): ``g_t = dh_t + a_{t+1}^T g_{t+1}`` (a scan in the opposite direction), ``db = g``,
``da_t = g_t h_{t-1}^T`` and ``d initial_state = a_first^T g_first``. The backward is built from differentiable
ops (and this Function), so double backward works too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._dispatch import compute_dtype

#: at most this many steps: one plain step-by-step loop (no chunks)
SEQUENTIAL_MAX = 16


class Diag:
    """Maps ``h -> a * h + b`` with elementwise ``a``; the time dim is followed by ``[D]``."""

    @staticmethod
    def apply(a, h):
        return a * h

    @staticmethod
    def compose(later, earlier):
        return later * earlier

    @staticmethod
    def identity(like, shape):
        return torch.ones(shape, dtype=like.dtype, device=like.device)

    @staticmethod
    def transpose(a):
        return a

    @staticmethod
    def outer(g, h):
        return g * h


class Block2:
    """Maps ``h -> A @ h + b`` with one 2x2 ``A`` per unit; the time dim is followed by ``[D, 2, 2]`` / ``[D, 2]``.
    The scan itself runs on :class:`_Block2Rows` (``split``/``merge`` convert)."""

    @staticmethod
    def apply(A, h):
        return (A @ h.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def transpose(A):
        return A.transpose(-1, -2)

    @staticmethod
    def outer(g, h):
        return g.unsqueeze(-1) * h.unsqueeze(-2)

    @staticmethod
    def split(a, b, h0):
        """[B, T, D, 2, 2], [B, T, D, 2], [B, D, 2] -> the layout of :class:`_Block2Rows`."""
        return (
            a.permute(0, 1, 3, 4, 2).contiguous(),
            b.transpose(-1, -2).contiguous(),
            None if h0 is None else h0.transpose(-1, -2).contiguous(),
        )

    @staticmethod
    def merge(h):
        return h.transpose(-1, -2)


class _Block2Rows:
    """:class:`Block2`'s maps with the unit dim last (``A`` ``[.., 2, 2, D]``, ``h`` ``[.., 2, D]``): the scan applies
    and composes them elementwise on rows of D contiguous values (a batched 2x2 matmul, or elementwise ops on the
    strided entries of ``[.., D, 2, 2]``, costs several times more per element on a CPU)."""

    @staticmethod
    def apply(A, h):
        h0, h1 = h[..., 0, :], h[..., 1, :]
        return torch.stack(
            (A[..., 0, 0, :] * h0 + A[..., 0, 1, :] * h1, A[..., 1, 0, :] * h0 + A[..., 1, 1, :] * h1), -2
        )

    @staticmethod
    def compose(later, earlier):
        """``later @ earlier``, per unit."""
        L, E = later, earlier
        rows = [
            torch.stack(
                (
                    L[..., i, 0, :] * E[..., 0, 0, :] + L[..., i, 1, :] * E[..., 1, 0, :],
                    L[..., i, 0, :] * E[..., 0, 1, :] + L[..., i, 1, :] * E[..., 1, 1, :],
                ),
                -2,
            )
            for i in (0, 1)
        ]
        return torch.stack(rows, -3)

    @staticmethod
    def identity(like, shape):
        return torch.eye(2, dtype=like.dtype, device=like.device).unsqueeze(-1).expand(shape)


def _steps(kind, a, b, h, dim, need_maps):
    """Step by step along ``dim`` from the state ``h`` (None: 0): the states, and (``need_maps``) the composed map
    of every prefix of the steps (None otherwise)."""
    states, maps = [], []
    m = None
    for i in range(b.shape[dim]):
        ai, bi = a.select(dim, i), b.select(dim, i)
        h = bi if h is None else kind.apply(ai, h) + bi
        states.append(h)
        if need_maps:
            m = ai if m is None else kind.compose(ai, m)
            maps.append(m)
    return torch.stack(states, dim), (torch.stack(maps, dim) if need_maps else None)


def _scan_forward(kind, a, b, h0):
    """h_t = a_t h_{t-1} + b_t over dim 1 with h_{-1} = h0 (None: 0). All tensors in the compute dtype."""
    T = b.shape[1]
    if T <= SEQUENTIAL_MAX:
        return _steps(kind, a, b, h0, 1, need_maps=False)[0] if T else b
    chunk = math.isqrt(T - 1) + 1
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        a = torch.cat((a, kind.identity(a, (a.shape[0], pad, *a.shape[2:]))), 1)
        b = F.pad(b, (0, 0) * (b.dim() - 2) + (0, pad))
    B = b.shape[0]
    local, maps = _steps(
        kind, a.reshape(B, n, chunk, *a.shape[2:]), b.reshape(B, n, chunk, *b.shape[2:]), None, 2, True
    )
    state = torch.zeros_like(b[:, 0]) if h0 is None else h0
    entering = []
    for c in range(n):  # the state entering every chunk
        entering.append(state)
        state = kind.apply(maps[:, c, -1], state) + local[:, c, -1]
    h = local + kind.apply(maps, torch.stack(entering, 1).unsqueeze(2))
    return h.reshape(B, n * chunk, *h.shape[3:])[:, :T]


def scan(kind, a, b, h0=None, reverse=False):
    """The scan without autograd bookkeeping; ``reverse`` runs it from the end of the sequence."""
    if reverse:
        a, b = a.flip(1), b.flip(1)
    if kind is Block2:
        h = Block2.merge(_scan_forward(_Block2Rows, *Block2.split(a, b, h0)))
    else:
        h = _scan_forward(kind, a, b, h0)
    return h.flip(1) if reverse else h


def scan_backward(kind, a, h, h0, dh, reverse, need_h0):
    """Gradients (da, db, d h0) of the scan given its output ``h``; all tensors in the compute dtype."""
    zero_a = torch.zeros_like(a[:, :1])
    zero_h = torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1)
    if not reverse:
        coef = torch.cat((a[:, 1:], zero_a), 1)  # g_t = dh_t + a_{t+1}^T g_{t+1}
        h_prev = torch.cat((zero_h, h[:, :-1]), 1)
        first = 0
    else:
        coef = torch.cat((zero_a, a[:, :-1]), 1)
        h_prev = torch.cat((h[:, 1:], zero_h), 1)
        first = -1
    g = scan(kind, kind.transpose(coef), dh, None, reverse=not reverse)
    if need_h0 and a.shape[1] == 0:  # an empty sequence: h does not depend on h0
        return kind.outer(g, h_prev), g, torch.zeros_like(h0)
    dh0 = kind.apply(kind.transpose(a[:, first]), g[:, first]) if need_h0 else None
    return kind.outer(g, h_prev), g, dh0


class ScanTorchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, a, b, h0, reverse):
        dt = compute_dtype(a, b, h0)
        h = scan(kind, a.to(dt), b.to(dt), None if h0 is None else h0.to(dt), reverse)
        ctx.kind, ctx.reverse = kind, reverse
        ctx.save_for_backward(a, h, h0)
        return h.to(b.dtype)

    @staticmethod
    def backward(ctx, dh):
        a, h, h0 = ctx.saved_tensors
        dt = h.dtype
        da, db, dh0 = scan_backward(
            ctx.kind, a.to(dt), h, None if h0 is None else h0.to(dt), dh.to(dt), ctx.reverse, ctx.needs_input_grad[3]
        )
        return None, da.to(a.dtype), db.to(dh.dtype), None if dh0 is None else dh0.to(h0.dtype), None


def linear_scan_torch(a, b, initial_state=None, reverse=False):
    return ScanTorchFunction.apply(Diag, a, b, initial_state, reverse)


def block2_scan_torch(A, b, initial_state=None, reverse=False):
    return ScanTorchFunction.apply(Block2, A, b, initial_state, reverse)
