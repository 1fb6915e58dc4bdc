"""chunk_gla refuses gates that would give a silent wrong answer, naming the problem, and warns on a layout mix-up."""

import pytest
import torch

from hf_seqmodels.kernels import chunk_gla


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
