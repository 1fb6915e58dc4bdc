"""A small random Llama (grouped-query heads 6/2) and the helpers the linearization tests share."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_seqmodels.cache import RecurrentCache


def tiny_llama(**overrides):
    # initializer_range 0.2: peaked logits, so comparisons are not decided by near-ties
    config = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    config.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**config)).eval()


def left_padded(B, T, vocab, pad=(3, 0)):
    """Random ids ``[B, T]`` in ``[3, vocab)`` and a padding mask with ``pad[b]`` leading zeros in row ``b``."""
    ids = torch.randint(3, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate(pad[:B]):
        mask[b, :n] = 0
    return ids, mask


def decode_in_pieces(model, ids, mask, pieces, cache=None):
    """Logits of ``ids`` fed through the cache (a new one, or ``cache``) in pieces of the given sizes (1 = a
    decoding step)."""
    cache = RecurrentCache(model.config.num_hidden_layers) if cache is None else cache
    outs, seen = [], 0
    for n in pieces:
        out = model(input_ids=ids[:, seen : seen + n], attention_mask=mask[:, : seen + n], cache=cache, use_cache=True)
        outs.append(out.logits)
        seen += n
    assert seen == ids.shape[1] and cache.seen_tokens == seen
    return torch.cat(outs, 1)
