"""Linearize a pretrained Llama (Liger, Lizard), then recover its quality with attention transfer and LoRA."""

from .convert import METHODS, linearize, load_llama
from .train import add_lora, attention_transfer, finetune, token_blocks

__all__ = ["METHODS", "linearize", "load_llama", "add_lora", "attention_transfer", "finetune", "token_blocks"]
