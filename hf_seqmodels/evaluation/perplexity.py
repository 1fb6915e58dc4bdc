"""Perplexity of a causal LM over a token stream, by strided windows: the one method behind ``eval ppl``, the model
cards ``linearize`` writes, the demo and the benchmarks.

The method (the strided evaluation of the Hugging Face perplexity guide, made exact for every stride): the text is
tokenized once, without special tokens. Windows of ``context`` tokens start at positions ``0, stride, 2 * stride,
...`` (the last one may be shorter). Token ``t`` is scored once, with the logits of the first window that holds both
``t`` and the token before it, so every scored token sees the tokens of its window before it.

- ``stride < context`` (default ``context // 2``): every token but the first is scored, and each one after the first
  window sees at least ``context - stride`` tokens of context.
- ``stride == context``: non-overlapping blocks, each scored from its own start; the first token of each block has
  no context in its block and is not scored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_seqmodels.layers.checks import check_int

METHOD = (
    "windows of {context} tokens every {stride} tokens over {tokens} tokens (tokenized without special tokens; "
    "each token scored once, in the first window holding it and the token before it)"
)


def describe_method(context: int, stride: int, tokens: int) -> str:
    """The method in words, for model cards and reports."""
    return METHOD.format(context=context, stride=stride, tokens=tokens)


def _windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, first scored token, end)`` of each window that scores at least one token."""
    windows, scored_to = [], 1  # tokens [1, scored_to) are scored; token 0 has no context
    for begin in range(0, n - 1, stride):
        end = min(begin + context, n)
        first = max(scored_to, begin + 1)
        if end > first:
            windows.append((begin, first, end))
            scored_to = end
        if end == n:
            break
    return windows


@torch.no_grad()
def perplexity_of_ids(
    model,
    ids: torch.Tensor,
    context: int = 512,
    stride: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
    desc: str = "perplexity",
) -> float:
    """``exp(mean NLL)`` of the tokens of ``ids`` (``[N]``) that the windows score (the module's docstring gives the
    method). Windows of equal length run ``batch_size`` at a time; the model runs in eval mode without a cache."""
    from tqdm.auto import tqdm

    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype not in (torch.long, torch.int):
        raise ValueError(
            f"`ids` must be a 1-D tensor of token ids, got "
            f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}"
        )
    check_int("", "`context`", context, minimum=2)
    stride = context // 2 if stride is None else stride
    check_int("", "`stride`", stride)
    if stride > context:
        raise ValueError(f"`stride` must be an integer in [1, context={context}], got {stride!r}")
    check_int("", "`batch_size`", batch_size)
    windows = _windows(ids.numel(), context, stride)
    if not windows:
        raise ValueError(f"`ids` must have at least 2 tokens to score, got {ids.numel()}")
    device = next(model.parameters()).device
    ids = ids.to(device)
    groups: list[list[tuple[int, int, int]]] = []
    for w in windows:  # consecutive windows with the same length and scored span share a batch
        shape = (w[2] - w[0], w[1] - w[0])
        if (
            groups
            and len(groups[-1]) < batch_size
            and shape == (groups[-1][0][2] - groups[-1][0][0], groups[-1][0][1] - groups[-1][0][0])
        ):
            groups[-1].append(w)
        else:
            groups.append([w])
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for group in tqdm(groups, desc=desc, disable=not progress):
            batch = torch.stack([ids[b:e] for b, _, e in group])
            logits = model(input_ids=batch, use_cache=False).logits
            begin, first, end = group[0]
            # token j is predicted by the logits at window position j - 1 - begin
            pred = logits[:, first - 1 - begin : end - 1 - begin].float()
            target = batch[:, first - begin : end - begin]
            nll += F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="sum").item()
            count += target.numel()
    finally:
        model.train(was_training)
    return math.exp(nll / count)


def text_ids(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """``text`` as a 1-D tensor of token ids, without special tokens (the tokenization :func:`perplexity` scores)."""
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}")
    check_int("", "`max_tokens`", max_tokens, minimum=2, allow_none=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    return ids if max_tokens is None else ids[:max_tokens]


def perplexity(
    model,
    tokenizer,
    text: str,
    context: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> float:
    """Perplexity of ``model`` on ``text`` (its first ``max_tokens`` tokens if given), by :func:`perplexity_of_ids`
    with windows of ``context`` tokens every ``stride`` (default ``context // 2``) tokens."""
    ids = text_ids(tokenizer, text, max_tokens)
    if ids.numel() < 2:
        raise ValueError(f"`text` must have at least 2 tokens to score, got {ids.numel()}")
    return perplexity_of_ids(model, ids, context=context, stride=stride, progress=progress)
