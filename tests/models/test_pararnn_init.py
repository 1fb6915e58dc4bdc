"""ParaRNN's initialization fields: conv_init, recurrent_init, recurrent_clip (checked against their definitions)."""

import math
import tempfile

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import hf_seqmodels  # noqa: F401
from hf_seqmodels.models.pararnn import ParaRNNConfig


def _model(**kw):
    cfg = ParaRNNConfig(vocab_size=11, hidden_size=kw.pop("hidden_size", 8), num_hidden_layers=1, **kw)
    return AutoModelForCausalLM.from_config(cfg)


def test_identity_conv_passes_the_current_input_through_at_init():
    mixer = _model().model.layers[0].mixer
    x = torch.randn(2, 7, 8)
    y, _ = mixer.conv(x)
    torch.testing.assert_close(y, F.silu(x))  # the block's SiLU on the current token only
    normal = _model(conv_init="normal", initializer_range=0.02).model.layers[0].mixer.conv.conv.weight
    assert 0.005 < normal.std().item() < 0.05 and normal[..., -1].abs().max() < 0.2


def _cell_weights(D, **kw):  # a wide cell in a narrow model: only the recurrent diagonals are large
    return _model(hidden_size=8, state_size=D, num_heads=1, **kw).model.layers[0].mixer.cell.a


def test_recurrent_init_distributions():
    D = 4096
    xlstm = _cell_weights(D, recurrent_init="xlstm")
    assert xlstm.std().item() == pytest.approx(2 / math.sqrt(5 * D), rel=0.05)
    clipped = _cell_weights(D)
    assert torch.all(clipped.norm(dim=1) <= 0.5 + 1e-6)  # each diagonal's norm clipped to 0.5
    for cell, rows in (("gru", 3), ("lstm", 5)):
        uniform = _cell_weights(D, cell=cell, recurrent_init="uniform")
        assert uniform.shape == (rows, D) and uniform.abs().max().item() <= 0.9
        # U(-0.9, 0.9) in every row: std 0.9 / sqrt(3), the extremes near the bound, both signs alike
        assert uniform.std(dim=1).sub(0.9 / math.sqrt(3)).abs().max().item() < 0.03
        assert uniform.abs().max(dim=1).values.min().item() > 0.85
        assert abs(uniform.mean().item()) < 0.03


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_clip_bounds_the_weights_each_step(cell):
    model = _model(cell=cell, recurrent_clip=0.3)
    mixer = model.model.layers[0].mixer
    with torch.no_grad():
        mixer.cell.a.uniform_(-2, 2)
    x = torch.randn(1, 5, 8)
    clipped_out = mixer.cell(x, mode="sequential")[0]
    with torch.no_grad():
        mixer.cell.a.clamp_(-0.3, 0.3)
    mixer.cell.recurrent_clip = None
    torch.testing.assert_close(clipped_out, mixer.cell(x, mode="sequential")[0])


def test_fields_round_trip_and_are_checked():
    model = _model(conv_init="normal", recurrent_init="xlstm", recurrent_clip=0.9)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        again = AutoModelForCausalLM.from_pretrained(d)
    assert (again.config.conv_init, again.config.recurrent_init, again.config.recurrent_clip) == (
        "normal",
        "xlstm",
        0.9,
    )
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)  # loading keeps the weights: no re-init
    with pytest.raises(ValueError, match="conv_init"):
        ParaRNNConfig(conv_init="zeros")
    with pytest.raises(ValueError, match="recurrent_init"):
        ParaRNNConfig(recurrent_init="orthogonal")
    assert _model(recurrent_init="uniform").config.recurrent_init == "uniform"
    with pytest.raises(ValueError, match="recurrent_clip"):
        ParaRNNConfig(recurrent_clip=0)
