"""Regressions from a new user's trial (issue: silent wrong answers, memory blow-ups, late errors)."""
import time

import pytest
import torch
from torch import nn

from hf_seqmodels import GLAConfig, LigerConfig
from hf_seqmodels.kernels import chunk_gla, sliding_window_attention
from hf_seqmodels.layers.pararnn import ParaGRUCell, check_jacobian_structure


def _gla_inputs(T=9, H=2, K=4):
    q, k, v = (torch.randn(1, T, H, K) for _ in range(3))
    return q, k, v, -torch.rand(1, T, H, K)


def test_minus_inf_gate_is_refused_by_name():
    q, k, v, g = _gla_inputs()
    g[0, 3, 0, 1] = float("-inf")
    with pytest.raises(ValueError, match="-inf"):
        chunk_gla(q, k, v, g)


def test_nan_gate_is_named_nan():
    q, k, v, g = _gla_inputs()
    g[0, 2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        chunk_gla(q, k, v, g)


def test_head_first_layout_warns():
    q, k, v, g = _gla_inputs(T=3, H=8)
    with pytest.warns(UserWarning, match="head-first"):
        chunk_gla(q, k, v, g)


@pytest.mark.parametrize("config_class", [GLAConfig, LigerConfig])
def test_zero_gate_logit_normalizer_is_refused(config_class):
    with pytest.raises(ValueError, match="gate_logit_normalizer"):
        config_class(gate_logit_normalizer=0)


def test_window_larger_than_the_sequence_is_capped():
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    start = time.perf_counter()
    huge = sliding_window_attention(q, k, v, window=10**9)
    assert time.perf_counter() - start < 5
    torch.testing.assert_close(huge, sliding_window_attention(q, k, v, window=8))
    # and it is the full causal attention
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           is_causal=True).transpose(1, 2)
    torch.testing.assert_close(huge, ref, rtol=1e-5, atol=1e-5)


def test_jacobian_structure_check_leaves_the_cell_alone():
    cell = ParaGRUCell(6, 4)
    model = nn.Sequential(cell)
    check_jacobian_structure(cell)
    assert all(p.dtype == torch.float32 for p in model.parameters())
