"""A small random Llama (grouped-query heads 6/2) for the linearization tests."""
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(**overrides):
    # initializer_range 0.2: peaked logits, so comparisons are not decided by near-ties
    config = dict(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, initializer_range=0.2, tie_word_embeddings=False)
    config.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**config)).eval()
