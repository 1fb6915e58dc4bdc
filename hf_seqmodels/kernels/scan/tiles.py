"""The tile walk every scan-shaped Triton kernel shares (the linear scans, the fused Newton solve and the adjoints).

A program owns one batch row and ``BLOCK_D`` units and walks the sequence in tiles of ``BLOCK_T`` time steps,
carrying a state (and statistics) from tile to tile in registers: :func:`tile_walk` is that loop, written once. It
takes the tile's work as a ``tl.constexpr`` function ``TILE`` and hands it ``OPTS``, a constexpr tuple that may hold
a cell function (the scans' tiles in ``scan_triton.py``, the Newton and adjoint tiles in ``pararnn/fused_triton.py``).
A jit function that the host passes to a kernel as a constexpr is part of the kernel's cache key by its source.

States are tuples of ``N`` components (``N = 1``: diagonal recurrences, ``N = 2``: 2x2 blocks), each a tile
``[BLOCK_T, BLOCK_D]`` (or a vector ``[BLOCK_D]`` when carried); a map (a step's matrix) is a tuple of ``N * N``
entries, row-major. In memory the components of one (batch, time, unit) index ``unit`` are interleaved: a state at
``unit * N + i``, a map at ``unit * N * N + k``. Tile loops are ``while`` loops (the interpreter cannot take a runtime
``range`` bound with numpy >= 2.4); component loops are ``tl.static_range`` (unrolled at compile time).
"""

from __future__ import annotations

import triton
import triton.language as tl

COMPONENTS = {"diagonal": 1, "block2": 2}  # state components per unit, by the structure of the step's Jacobian


@triton.jit
def _affine_combine(a_l, b_l, a_r, b_r):
    # ``l`` comes first in scan order: x -> a_r (a_l x + b_l) + b_r
    return a_r * a_l, a_r * b_l + b_r


@triton.jit
def _affine2_combine(l00, l01, l10, l11, lb0, lb1, r00, r01, r10, r11, rb0, rb1):
    return (
        r00 * l00 + r01 * l10,
        r00 * l01 + r01 * l11,
        r10 * l00 + r11 * l10,
        r10 * l01 + r11 * l11,
        r00 * lb0 + r01 * lb1 + rb0,
        r10 * lb0 + r11 * lb1 + rb1,
    )


@triton.jit
def scan_tile(maps, vals):
    """Affine maps ``x -> A_t x + b_t`` composed along the tile's rows: ``(A_t...A_0, the states from a zero carry)``,
    one tuple of ``N * N + N``."""
    if len(vals) == 1:
        return tl.associative_scan(maps + vals, 0, _affine_combine)
    else:
        return tl.associative_scan(maps + vals, 0, _affine2_combine)


@triton.jit
def apply_carry(scanned, carry):
    """The tile's states from :func:`scan_tile`'s output and the state carried in: ``b_t + (A_t...A_0) carry``."""
    n: tl.constexpr = len(carry)
    out = ()
    for i in tl.static_range(n):
        x = scanned[n * n + i]
        for j in tl.static_range(n):
            x = x + scanned[i * n + j] * carry[j][None, :]
        out = out + (x,)
    return out


@triton.jit
def last_rows(x):
    """Row ``BLOCK_T - 1`` of each component: the state a tile carries into the next."""
    rows = tl.arange(0, x[0].shape[0])[:, None]
    out = ()
    for i in tl.static_range(len(x)):
        out = out + (tl.sum(tl.where(rows == x[0].shape[0] - 1, x[i], 0.0), axis=0),)
    return out


@triton.jit
def load_state(ptr, unit, mask, N: tl.constexpr, ACC: tl.constexpr):
    """The ``N`` interleaved components at ``unit`` as ``ACC`` (masked entries 0)."""
    x = ()
    for i in tl.static_range(N):
        x = x + (tl.load(ptr + unit * N + i, mask=mask, other=0.0).to(ACC),)
    return x


@triton.jit
def store_state(ptr, unit, x, mask):
    for i in tl.static_range(len(x)):
        tl.store(ptr + unit * len(x) + i, x[i].to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_map(ptr, unit, mask, N: tl.constexpr, ACC: tl.constexpr, TRANSPOSE: tl.constexpr, EYE: tl.constexpr):
    """The ``N x N`` map at ``unit`` (transposed if ``TRANSPOSE``); masked entries are the identity if ``EYE``,
    else 0."""
    m = ()
    for k in tl.static_range(N * N):
        src = (k % N) * N + k // N if TRANSPOSE else k
        other = 1.0 if EYE and k % (N + 1) == 0 else 0.0
        m = m + (tl.load(ptr + unit * (N * N) + src, mask=mask, other=other).to(ACC),)
    return m


@triton.jit
def load_rows(ptr, off, stride, n: tl.constexpr, mask, ACC: tl.constexpr):
    """``n`` rows ``ptr[off + k * stride]`` as ``ACC`` (masked entries 0)."""
    x = ()
    for k in tl.static_range(n):
        x = x + (tl.load(ptr + off + k * stride, mask=mask, other=0.0).to(ACC),)
    return x


@triton.jit
def store_rows(ptr, off, stride, x, mask):
    for k in tl.static_range(len(x)):
        tl.store(ptr + off + k * stride, x[k].to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def zeros(n: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """``n`` vectors ``[BLOCK_D]`` of zeros."""
    x = ()
    for i in tl.static_range(n):
        x = x + (tl.zeros([BLOCK_D], dtype=ACC),)
    return x


@triton.jit
def initial_state(H0, pid_b, offs_d, mask_d, D, N: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr):
    """The state before the first step: ``H0[pid_b]`` (``[B, D(, 2)]``), or zeros."""
    if HAS_H0:
        return load_state(H0, pid_b * D + offs_d, mask_d, N, ACC)
    else:
        return zeros(N, offs_d.shape[0], ACC)


@triton.jit
def previous_state(H, unit, t, step, valid, h0, T, D, ACC: tl.constexpr):
    """The state before step ``t`` in scan order (``step``: +1 forward, -1 reversed): ``H`` at ``t - step``, or the
    initial state ``h0`` where that falls outside the sequence."""
    t_prev = t - step
    has_prev = ((t_prev >= 0) & (t_prev < T))[:, None]
    x = load_state(H, unit - step * D, valid & has_prev, len(h0), ACC)
    out = ()
    for i in tl.static_range(len(h0)):
        out = out + (tl.where(has_prev, x[i], h0[i][None, :]),)
    return out


@triton.jit
def program_units(D, BLOCK_D: tl.constexpr):
    """This program's batch row, units and unit mask (grid ``(cdiv(D, BLOCK_D), B)``)."""
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    return tl.program_id(1).to(tl.int64), offs_d, offs_d < D


@triton.jit
def tile_walk(
    TILE: tl.constexpr,
    OPTS: tl.constexpr,
    ctx,
    carry,
    stats,
    pid_b,
    offs_d,
    mask_d,
    T,
    D,
    BACKWARDS: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Walk ``T`` steps in tiles of ``BLOCK_T`` (from the end if ``BACKWARDS``); returns the final ``(carry, stats)``.

    ``TILE(OPTS, ctx, carry, stats, pid_b, t, offs_d, valid, T, D) -> (carry, stats)`` does one tile: ``t``
    ``[BLOCK_T]`` holds its time indices in walking order (outside ``[0, T)`` past the end), ``valid``
    ``[BLOCK_T, BLOCK_D]`` masks those rows and the units past ``D``; it returns the state it carries into the next
    tile (:func:`last_rows` of its states, rows past the end padded with identity steps) and its updated statistics
    (any tuple: residuals, gradient sums; the accumulation dtype is that of ``carry``). ``OPTS`` is a constexpr tuple
    of the tile's compile-time options (flags, a cell function); ``ctx`` a tuple of its pointers and runtime values
    (a constexpr inside ``ctx`` would become a runtime value when compiled)."""
    rows = tl.arange(0, BLOCK_T)
    start = 0
    while start < T:
        i = start + rows
        t = T - 1 - i if BACKWARDS else i
        valid = (i < T)[:, None] & mask_d[None, :]
        carry, stats = TILE(OPTS, ctx, carry, stats, pid_b, t, offs_d, valid, T, D)
        start += BLOCK_T
    return carry, stats
