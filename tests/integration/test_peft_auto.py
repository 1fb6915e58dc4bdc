"""PEFT's AutoPeftModelForCausalLM on an adapter of one of our models (README "Fine-tuning with PEFT"): it loads when
the adapter was saved with ``task_type="CAUSAL_LM"`` (PEFT then goes through AutoModelForCausalLM, which knows our
architectures after ``import hf_seqmodels``); without a task type PEFT wants to import our module and refuses it
unless ``import_allowlist`` names ``hf_seqmodels``."""

import pytest
import torch

import hf_seqmodels

peft = pytest.importorskip("peft")


def _saved_gla(path):
    from transformers import AutoModelForCausalLM

    config = hf_seqmodels.GLAConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=2)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)  # the adapter records this folder as its base


def _adapter(base, path, **lora):
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], **lora))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # off its zero init, so the adapter changes the logits
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(path)
    return model.eval()


def test_auto_peft_model_loads_an_adapter_saved_with_a_task_type(tmp_path):
    base = _saved_gla(tmp_path / "base")
    tuned = _adapter(base, tmp_path / "adapter", task_type="CAUSAL_LM")
    loaded = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, tuned(input_ids=ids).logits)


def test_auto_peft_model_without_task_type_needs_the_allowlist(tmp_path):
    base = _saved_gla(tmp_path / "base")
    tuned = _adapter(base, tmp_path / "adapter")
    with pytest.raises(ValueError, match="import allowlist"):
        peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    loaded = peft.AutoPeftModel.from_pretrained(tmp_path / "adapter", import_allowlist=["hf_seqmodels"]).eval()
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, tuned(input_ids=ids).logits)
