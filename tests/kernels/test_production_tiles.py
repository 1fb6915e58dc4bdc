"""The scan and fused Newton Triton kernels in the interpreter at their production tile sizes.

The other interpreter tests shrink the tiles to 4 x 4 so that small shapes cross several tiles; these keep the tiles
the GPU runs (scan: 64 steps diagonal / 32 steps 2x2, 32 units; Newton: 64 steps GRU / 32 steps LSTM, 32 units) and
pick shapes that cross several time tiles and unit blocks, with a partial last tile and block. fp64, against the
loop references (scans) and the PyTorch path of the same op (Newton), values and gradients.
"""

import warnings

import pytest
import torch
from reference import block2_scan_loop, linear_scan_loop

from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm
from hf_seqmodels.kernels.scan import block2_scan, linear_scan

pytestmark = pytest.mark.interpreter
F64 = torch.float64


def rel(got, ref):
    return float((got.double() - ref.double()).abs().max() / max(1.0, float(ref.double().abs().max())))


def values_and_grads(fn, inputs, weight):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    (out.double() * weight).sum().backward()
    return [out.detach()] + [x.grad for x in leaves]


def test_the_tiles_are_the_production_ones():
    from hf_seqmodels.kernels.pararnn import fused_triton
    from hf_seqmodels.kernels.scan import scan_triton

    assert scan_triton.MAX_BLOCK_T == {"diagonal": 64, "block2": 32} and scan_triton.MAX_BLOCK_D == 32
    assert fused_triton.MAX_BLOCK_T == {"gru": 64, "lstm": 32} and fused_triton.MAX_BLOCK_D == 32


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["diagonal", "block2"])
def test_scans_at_production_tiles(kind, reverse):
    # 2 time tiles (64 + 36 diagonal, 32 + 18 block2) and 2 unit blocks (32 + 8): each last one partial
    B, T, D = 1, 100 if kind == "diagonal" else 50, 40
    if kind == "diagonal":
        a, b, s0 = torch.randn(B, T, D, dtype=F64) * 0.6, torch.randn(B, T, D, dtype=F64), torch.randn(B, D, dtype=F64)
        fn, loop = linear_scan, linear_scan_loop
    else:
        a = torch.randn(B, T, D, 2, 2, dtype=F64) * 0.45
        b, s0 = torch.randn(B, T, D, 2, dtype=F64), torch.randn(B, D, 2, dtype=F64)
        fn, loop = block2_scan, block2_scan_loop
    weight = torch.randn(b.shape, dtype=F64)
    got = values_and_grads(lambda *x: fn(*x, reverse=reverse, backend="triton"), (a, b, s0), weight)
    ref = values_and_grads(lambda *x: loop(*x, reverse=reverse), (a, b, s0), weight)
    for name, g, r in zip(("h", "da", "db", "d_initial_state"), got, ref):
        assert rel(g, r) < 1e-10, (name, rel(g, r))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_newton_at_production_tiles(cell):
    # 2 batch rows, 2 time tiles (64 + 36 GRU, 32 + 18 LSTM) and 2 unit blocks (32 + 8): each last one partial
    B, T, D = 2, 100 if cell == "gru" else 50, 40
    fn, n, tail = (fused_newton_gru, 3, ()) if cell == "gru" else (fused_newton_lstm, 5, (2,))
    u = torch.randn(B, T, 3, D, dtype=F64)
    a = torch.randn(n, D, dtype=F64)
    a = a * (0.5 / a.norm(dim=-1, keepdim=True))
    h0 = torch.randn(B, D, *tail, dtype=F64)
    mask = torch.ones(B, T, dtype=F64)
    mask[0, : (64 if cell == "gru" else 32) + 4] = 0  # left padding across the tile boundary
    mask[1, T // 2] = 0  # a hole
    weight = torch.randn(B, T, D, *tail, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the fused solve itself, not its sequential fallback
        got = values_and_grads(lambda *x: fn(*x, mask, backend="triton"), (u, a, h0), weight)
    ref = values_and_grads(lambda *x: fn(*x, mask, backend="torch"), (u, a, h0), weight)
    for name, g, r in zip(("h", "du", "da", "dh0"), got, ref):
        assert rel(g, r) < 1e-9, (name, rel(g, r))
