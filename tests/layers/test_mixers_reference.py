"""The GLA and Liger token mixers against fp64 references recomputed from their weights (tests/reference_layers.py),
with O(1) random weights (fresh each run), past the first kernel chunk, grouped-query heads, several windows."""

import math

import pytest
import torch
from reference_layers import gla_layer_loop, liger_attention_loop

from hf_seqmodels.layers.gla import GatedLinearAttention
from hf_seqmodels.layers.liger import LigerAttention
from hf_seqmodels.models.liger import LigerConfig


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1] if p.dim() > 1 else 1))
    return module


@pytest.mark.parametrize("use_short_conv", [False, True])
@pytest.mark.parametrize("T", [1, 70])
def test_gla_layer_matches_reference(use_short_conv, T):
    layer = randomize(
        GatedLinearAttention(
            24, 2, expand_k=0.5, expand_v=1.0, gate_low_rank_dim=4, use_short_conv=use_short_conv, conv_size=3
        )
    ).double()
    x = torch.randn(2, T, 24, dtype=torch.float64)
    out = layer(x)
    for b in range(2):
        torch.testing.assert_close(out[b], gla_layer_loop(layer, x[b]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "window,gla_weight,bias", [(1, 0.5, False), (5, 0.5, True), (100, 0.3, False), (4, 0.0, False)]
)
def test_liger_attention_matches_reference(window, gla_weight, bias):
    config = LigerConfig(
        vocab_size=32,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=6,
        num_key_value_heads=2,
        window_size=window,
        gla_weight=gla_weight,
        attention_bias=bias,
    )
    attn = randomize(LigerAttention.from_config(config, 0)).double()
    T = 67
    x = torch.randn(2, T, 48, dtype=torch.float64)
    out = attn(x)
    theta = float(config.rope_parameters["rope_theta"])
    for b in range(2):
        ref = liger_attention_loop(attn, x[b], theta)
        # transformers' rotary tables are float32 (~1e-7); a wrong sign, swap or window is O(1)
        torch.testing.assert_close(out[b], ref, rtol=0, atol=1e-5 * float(ref.detach().abs().max()))


@pytest.mark.parametrize("window,num_sinks", [(1, 2), (6, 4), (90, 1)])
def test_lizard_attention_matches_reference(window, num_sinks):
    from reference_layers import lizard_attention_loop

    from hf_seqmodels.layers.lizard import LizardAttention
    from hf_seqmodels.models.lizard import LizardConfig

    config = LizardConfig(
        vocab_size=32,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=6,
        num_key_value_heads=2,
        window_size=window,
        num_sinks=num_sinks,
        feature_dim=5,
    )
    attn = randomize(LizardAttention.from_config(config, 0)).double()
    with torch.no_grad():
        attn.sink_logits.copy_(torch.randn_like(attn.sink_logits))  # O(1) sinks: they matter
        attn.window_weight.copy_(torch.rand_like(attn.window_weight) * 2)
    T = 67
    x = torch.randn(2, T, 48, dtype=torch.float64)
    with torch.no_grad():
        out = attn(x)
        for b in range(2):
            ref = lizard_attention_loop(attn, x[b], float(config.rope_parameters["rope_theta"]))
            torch.testing.assert_close(out[b], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("cell_name", ["gru", "lstm"])
def test_pararnn_cells_through_newton_match_the_paper_equations(cell_name):
    """The cells solved by Newton (``on_fail="raise"``: a silent sequential fallback cannot make this pass) against
    the ParaRNN equations run step by step; values and every parameter's gradient."""
    from reference_layers import paragru_loop, paralstm_loop

    from hf_seqmodels.layers.pararnn import ParaGRUCell, ParaLSTMCell

    cell = (ParaGRUCell if cell_name == "gru" else ParaLSTMCell)(12, 6).double()
    with torch.no_grad():
        cell.in_proj.weight.copy_(torch.randn_like(cell.in_proj.weight) / math.sqrt(12))
        cell.in_proj.bias.copy_(torch.randn_like(cell.in_proj.bias) * 0.5)
        cell.a.copy_(torch.rand_like(cell.a) * 1.8 - 0.9)
    T = 70
    x = torch.randn(1, T, 12, dtype=torch.float64)
    out, states = cell(x, mode="parallel", tol=1e-12, max_iter=T + 1, on_fail="raise")
    ref = (paragru_loop if cell_name == "gru" else paralstm_loop)(cell, x[0])
    torch.testing.assert_close(states[0], ref, rtol=1e-9, atol=1e-10)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((states[0] * w).sum(), list(cell.parameters()))
    ref_grads = torch.autograd.grad((ref * w).sum(), list(cell.parameters()))
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-7, atol=1e-9)
