"""LoRA on a GLA model with PEFT: train adapters only, save them, reload, and merge.

    python examples/lora_gla.py --model runs/gla-trainer     # a saved GLA (default: a fresh small one)

GLA's documented LoRA targets are `GLAConfig.lora_target_modules` (q_proj, k_proj, v_proj, g_proj, o_proj).
"""

import argparse

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import hf_seqmodels
from hf_seqmodels.data import byte_tokens, default_text, random_windows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a saved hf-seqmodels GLA folder (default: a fresh small GLA)")
    ap.add_argument("--out", default="runs/gla-lora")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()

    def base():
        if args.model:
            return AutoModelForCausalLM.from_pretrained(args.model)
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(
            hf_seqmodels.GLAConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_heads=4)
        )

    model = get_peft_model(
        base(),
        LoraConfig(
            r=args.rank,
            lora_alpha=2 * args.rank,
            target_modules=hf_seqmodels.GLAConfig.lora_target_modules,
            task_type="CAUSAL_LM",
        ),
    )  # AutoPeftModelForCausalLM can reload it
    model.print_trainable_parameters()
    tokens = byte_tokens(default_text())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(args.steps):
        ids = random_windows(tokens, 8, 128)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward(), opt.step(), opt.zero_grad()
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    model.save_pretrained(args.out)  # adapter_model.safetensors + adapter_config.json

    reloaded = PeftModel.from_pretrained(base(), args.out).eval()
    ids = random_windows(tokens, 2, 64)
    with torch.no_grad():
        unmerged = reloaded(input_ids=ids).logits
        merged = reloaded.merge_and_unload()(input_ids=ids).logits
    print(f"adapters saved to {args.out}; merged vs unmerged max |diff| = {(merged - unmerged).abs().max():.2e}")


if __name__ == "__main__":
    main()
