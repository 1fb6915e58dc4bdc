"""Sliding-window perplexity of a causal LM on a text (the strided evaluation of the Hugging Face perplexity guide)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_seqmodels.layers.checks import check_int


@torch.no_grad()
def perplexity(model, tokenizer, text: str, context: int = 512, stride: int | None = None,
               max_tokens: int | None = None, progress: bool = True) -> float:
    """``exp(mean NLL)`` over every token of ``text`` but the first.

    Windows of ``context`` tokens start every ``stride`` tokens (default ``context // 2``); each token is scored once,
    in the first window that reaches it, so every scored token after the first window sees at least
    ``context - stride`` tokens of context. ``max_tokens`` keeps only the first tokens of the text.
    """
    from tqdm.auto import tqdm

    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}")
    check_int("", "`context`", context, minimum=2)
    stride = context // 2 if stride is None else stride
    check_int("", "`stride`", stride)
    if stride > context:
        raise ValueError(f"`stride` must be an integer in [1, context={context}], got {stride!r}")
    check_int("", "`max_tokens`", max_tokens, minimum=2, allow_none=True)

    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = len(ids)
    if n < 2:
        raise ValueError(f"`text` must have at least 2 tokens to score, got {n}")
    device = next(model.parameters()).device
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    nll, count, scored_to = 0.0, 0, 1  # tokens [1, scored_to) are scored; token 0 has no context
    starts = list(range(0, n - 1, stride))
    for begin in tqdm(starts, desc="perplexity", disable=not progress):
        end = min(begin + context, n)
        if end <= scored_to:
            continue
        logits = model(input_ids=ids[None, begin:end], use_cache=False).logits[0]
        first = scored_to
        # token j is predicted by the logits at window position j - 1 - begin
        pred = logits[first - 1 - begin:end - 1 - begin].float()
        nll += F.cross_entropy(pred, ids[first:end], reduction="sum").item()
        count += end - first
        scored_to = end
        if end == n:
            break
    model.train(was_training)
    return math.exp(nll / count)
