"""Linear scans in plain PyTorch: the CPU path, and the reference the Triton kernels match.

Both scans compose affine maps ``h -> a_t h + b_t`` along time (dim 1). ``diagonal``: ``a, b`` are ``[B, T, D]``;
``block2``: ``a`` is ``[B, T, D, 2, 2]``, ``b`` is ``[B, T, D, 2]`` (one 2x2 map per unit).

The scan is parallel over time and exact for any real ``a`` (only products and sums; no logarithms): the sequence
is cut into chunks of ``CHUNK`` steps, each chunk is scanned by Hillis-Steele doubling (log2(CHUNK) vectorized
steps that also give the chunk's composed map), the chunk carries are scanned by the same routine recursively, and
each chunk is finally shifted by the state it starts from. Work O(T log CHUNK), O(log T) sequential steps.

Backward (both scans): ``g_t = dh_t + a_{t+1}^T g_{t+1}`` (a scan in the opposite direction), ``db = g``,
``da_t = g_t h_{t-1}^T`` and ``d initial_state = a_first^T g_first``. The backward is built from differentiable
ops (and this Function), so double backward works too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import compute_dtype

CHUNK = 4


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
    """Maps ``h -> A @ h + b`` with one 2x2 ``A`` per unit; the time dim is followed by ``[D, 2, 2]`` / ``[D, 2]``."""

    @staticmethod
    def apply(A, h):
        return (A @ h.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def compose(later, earlier):
        return later @ earlier

    @staticmethod
    def identity(like, shape):
        return torch.eye(2, dtype=like.dtype, device=like.device).expand(shape)

    @staticmethod
    def transpose(A):
        return A.transpose(-1, -2)

    @staticmethod
    def outer(g, h):
        return g.unsqueeze(-1) * h.unsqueeze(-2)


def _doubling(kind, a, b, dim, need_a):
    """Inclusive Hillis-Steele scan of the maps along ``dim``: (composed maps or None, states from a zero start)."""
    L = b.shape[dim]
    k = 1
    while k < L:
        a_hi, a_lo = a.narrow(dim, k, L - k), a.narrow(dim, 0, L - k)
        b = torch.cat((b.narrow(dim, 0, k), kind.apply(a_hi, b.narrow(dim, 0, L - k)) + b.narrow(dim, k, L - k)), dim)
        if need_a or 2 * k < L:
            a = torch.cat((a.narrow(dim, 0, k), kind.compose(a_hi, a_lo)), dim)
        k *= 2
    return (a if need_a else None), b


def _scan_forward(kind, a, b, h0, chunk=CHUNK):
    """h_t = a_t h_{t-1} + b_t over dim 1 with h_{-1} = h0 (None: 0). All tensors in the compute dtype."""
    if h0 is not None:
        b = torch.cat((b[:, :1] + kind.apply(a[:, :1], h0.unsqueeze(1)), b[:, 1:]), 1)
    T = b.shape[1]
    if T <= chunk:
        return _doubling(kind, a, b, 1, need_a=False)[1]
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        a = torch.cat((a, kind.identity(a, (a.shape[0], pad, *a.shape[2:]))), 1)
        b = F.pad(b, (0, 0) * (b.dim() - 2) + (0, pad))
    B = b.shape[0]
    a = a.reshape(B, n, chunk, *a.shape[2:])
    b = b.reshape(B, n, chunk, *b.shape[2:])
    A, Bc = _doubling(kind, a, b, 2, need_a=True)
    ends = _scan_forward(kind, A[:, :, -1], Bc[:, :, -1], None, chunk)  # state at the end of every chunk
    shifted = Bc[:, 1:] + kind.apply(A[:, 1:], ends[:, :-1].unsqueeze(2))
    h = torch.cat((Bc[:, :1], shifted), 1)
    return h.reshape(B, n * chunk, *h.shape[3:])[:, :T]


def scan(kind, a, b, h0=None, reverse=False):
    """The scan without autograd bookkeeping; ``reverse`` runs it from the end of the sequence."""
    if not reverse:
        return _scan_forward(kind, a, b, h0)
    return _scan_forward(kind, a.flip(1), b.flip(1), h0).flip(1)


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
