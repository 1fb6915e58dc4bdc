"""``logits_to_keep`` (what generate() passes to save the LM head's work) selects positions of the full logits: an
int n > 0 the last n, a tensor those indices, 0 all, for the shared causal-LM head and H-Net's forward alike."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_seqmodels


def _config(arch):
    if arch == "gla":
        return hf_seqmodels.GLAConfig(
            hidden_size=32, num_heads=2, vocab_size=64, num_hidden_layers=2, initializer_range=0.2
        )
    return hf_seqmodels.HNetConfig(
        arch_layout=["m1", ["T1"], "m1"],
        d_model=[16, 24],
        d_intermediate=[0, 32],
        attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [4, 6], "window_size": [3, -1]},
        ssm_cfg={"d_state": 8, "head_dim": 8, "expand": 2},
        initializer_range=0.2,
    )


@pytest.mark.parametrize("arch", ["gla", "hnet"])
def test_logits_to_keep_selects_positions_of_the_full_logits(arch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch)).eval()
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        full = model(ids).logits
        assert full.shape[:2] == (2, 11)
        assert torch.equal(model(ids, logits_to_keep=0).logits, full)
        for n in (1, 4):
            torch.testing.assert_close(model(ids, logits_to_keep=n).logits, full[:, -n:], atol=1e-6, rtol=0)
        idx = torch.tensor([0, 5, 10, 5])
        torch.testing.assert_close(model(ids, logits_to_keep=idx).logits, full[:, idx], atol=1e-6, rtol=0)
