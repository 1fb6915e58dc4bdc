"""``generate()`` and the recurrent cache: cached == uncached, step-by-step decoding == the full forward, left padding
== each row alone, beam search (scores checked against a full forward), gradient checkpointing == plain backward."""

from __future__ import annotations

import random

import pytest
import torch
from integration_utils import (
    LOGIT_REL_TOL,
    assert_logits_close,
    assert_same_greedy,
    block_runs,
    blocks_of,
    build_lm,
    random_ids,
)


def _greedy(model, ids, attention_mask=None, max_new_tokens=8, **kwargs):
    out = model.generate(
        ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        output_scores=True,
        **kwargs,
    )
    tokens = out.sequences[:, ids.shape[1] :]  # [B, N]
    # greedy: each token is the argmax of the processed scores (min_new_tokens masks EOS in them, not in the logits)
    assert torch.equal(tokens, torch.stack(out.scores).argmax(-1).T)
    return tokens, torch.stack(out.logits)  # [N, B, V]


def test_greedy_with_cache_equals_without(tiny_config):
    model = build_lm(tiny_config)
    ids = random_ids(tiny_config, 3, 7)
    tokens, logits = _greedy(model, ids, use_cache=True)
    ref_tokens, ref_logits = _greedy(model, ids, use_cache=False)
    assert tokens.shape == (3, 8)
    assert_same_greedy(tokens, ref_tokens, ref_logits)
    if torch.equal(tokens, ref_tokens):  # same prefixes, so the same step logits
        assert_logits_close(logits, ref_logits, "step logits")


def test_cached_decoding_equals_full_forward(tiny_config):
    """Prefill, then decode in pieces of 1 and more tokens; every logit matches one forward over the whole sequence
    (71 tokens: the kernels' chunks are 64 long, so the full forward crosses a chunk boundary)."""
    model = build_lm(tiny_config)
    B, T = 2, 71
    ids = random_ids(tiny_config, B, T)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cuts = sorted(random.sample(range(1, T - 4), 2)) + [T - 3, T - 2, T - 1, T]  # two chunks, then T=1 steps
        cache, outs, start = None, [], 0
        for end in cuts:
            mask = torch.ones(B, end, dtype=torch.long)  # past + current, as generate() passes it
            out = model(ids[:, start:end], attention_mask=mask, cache=cache, use_cache=True)
            cache = _cache_of(out)
            assert cache.get_seq_length() == end
            outs.append(out.logits)
            start = end
    assert_logits_close(torch.cat(outs, 1), full, f"pieces {cuts}")


def _cache_of(out):
    from hf_seqmodels.compat import output_cache

    cache = output_cache(out)
    assert cache is not None
    return cache


def _left_pad(config, rows, garbage=True):
    """Left-pad rows of different lengths; masked positions hold random tokens (they must not matter) or pad."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), config.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        if garbage:
            ids[i] = random_ids(config, T)
        ids[i, T - len(r) :] = r
        mask[i, T - len(r) :] = 1
    return ids, mask


def test_left_padding_equals_each_row_alone(tiny_config):
    model = build_lm(tiny_config)
    lengths = [11, 4, 8]
    rows = [random_ids(tiny_config, n) for n in lengths]
    T = max(lengths)

    ids, mask = _left_pad(tiny_config, rows, garbage=True)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, position_ids=position_ids).logits
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            assert_logits_close(batch[i, T - len(r) :], alone, f"row {i}")

    ids, mask = _left_pad(tiny_config, rows, garbage=False)
    tokens, logits = _greedy(model, ids, attention_mask=mask, pad_token_id=tiny_config.pad_token_id)
    for i, r in enumerate(rows):
        ref_tokens, ref_logits = _greedy(model, r[None], pad_token_id=tiny_config.pad_token_id)
        assert_same_greedy(tokens[i : i + 1], ref_tokens, ref_logits)
        if torch.equal(tokens[i], ref_tokens[0]):
            assert_logits_close(logits[:, i], ref_logits[:, 0], f"generated row {i}")


def test_beam_search_scores_match_full_forward(tiny_config):
    """num_beams=2 with the cache returns hypotheses whose scores are the sums of the token log-probabilities of a
    plain forward over them: a recurrent state not reordered with its beam would make the two disagree."""
    model = build_lm(tiny_config)
    ids = random_ids(tiny_config, 2, 6)
    N = 6
    kwargs = dict(
        num_beams=2,
        num_return_sequences=2,
        max_new_tokens=N,
        min_new_tokens=N,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=tiny_config.pad_token_id,
    )
    out = model.generate(ids, use_cache=True, **kwargs)
    seqs = out.sequences
    assert seqs.shape == (4, ids.shape[1] + N)
    assert torch.equal(seqs[:, : ids.shape[1]], ids.repeat_interleave(2, 0))
    with torch.no_grad():
        logp = model(seqs, use_cache=False).logits.log_softmax(-1)
    gen = seqs[:, ids.shape[1] :]
    token_logp = logp[:, ids.shape[1] - 1 : -1].gather(-1, gen[..., None])[..., 0]
    scale = float(logp.abs().max())
    torch.testing.assert_close(out.sequences_scores, token_logp.sum(-1), atol=N * 2 * LOGIT_REL_TOL * scale, rtol=0)
    # each prompt's two beams are distinct and ranked best first
    for b in range(2):
        assert not torch.equal(seqs[2 * b], seqs[2 * b + 1])
        assert out.sequences_scores[2 * b] >= out.sequences_scores[2 * b + 1]


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*deprecated:FutureWarning")
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_same_loss_and_gradients(tiny_config, use_reentrant):
    model = build_lm(tiny_config).train()
    ids = random_ids(tiny_config, 2, 70)
    # Count the runs of a module inside each block: a checkpointed block runs again in the backward pass. (Hooks on
    # the block itself would not tell: newer transformers checkpoint `forward` and leave the block's hooks outside.)
    calls = []
    for block in blocks_of(model):
        next(block.children()).register_forward_hook(lambda *_: calls.append(1))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        calls.clear()
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    loss, grads, n_plain = loss_and_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.is_gradient_checkpointing
    ckpt_loss, ckpt_grads, n_ckpt = loss_and_grads()
    assert n_plain == block_runs(model), n_plain
    assert n_ckpt == 2 * n_plain, f"checkpointing did not recompute the blocks ({n_ckpt} runs for {n_plain} blocks)"
    torch.testing.assert_close(ckpt_loss, loss, atol=0, rtol=1e-6)
    assert set(grads) == set(ckpt_grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    for n in grads:
        torch.testing.assert_close(ckpt_grads[n], grads[n], atol=1e-6, rtol=1e-5, msg=n)

    model.gradient_checkpointing_disable()
    assert loss_and_grads()[2] == n_plain
