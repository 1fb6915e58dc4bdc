"""The parallel diffusion-forcing sampler (hf_seqmodels.models.recurrent_depth.sampler): its degenerate setting
against ordinary cached decoding (``generate(num_steps=...)``), a batch against each row alone (noise, padding,
rows finishing at different times), and its freezing bookkeeping (the frozen prefix and its cache entries never
change again, statistics, max_wavefront)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_seqmodels import RecurrentDepthConfig, RecurrentDepthForCausalLM
from hf_seqmodels.compat import CACHE_KWARG
from hf_seqmodels.models.recurrent_depth.sampler import diffusion_generate

TINY = dict(
    vocab_size=53,
    n_embd=24,
    n_heads=3,
    intermediate_size=40,
    n_layers_in_prelude=1,
    n_layers_in_recurrent_block=2,
    n_layers_in_coda=2,
    mean_recurrence=3,
    mean_backprop_depth=2,
    rope_base=37.0,
    norm_eps=1e-5,
)


def tiny_model(moved=True, **overrides):
    """fp64; ``moved``: every weight moved off its init by O(1) amounts (the core then does not contract)."""
    model = RecurrentDepthForCausalLM(RecurrentDepthConfig(**{**TINY, **overrides})).double().eval()
    if moved:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.add_(torch.randn_like(param) * (0.5 if "norm" in name or "qk_bias" in name else 0.2))
    return model


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def ordinary(model, ids, mask, num_steps, max_new, core_slots, generator=None, **kwargs):
    return model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=max_new,
        do_sample=False,
        num_steps=num_steps,
        generator=generator,
        **{CACHE_KWARG: model.new_cache(core_slots=core_slots)},
        **kwargs,
    )


DEGENERATE = dict(max_wavefront=1, state_noise_mixing=0.0, ema_embeds=0.0)


@pytest.mark.parametrize(
    "strategy, num_steps, inner, core_slots",
    [("fixed", 4, 2, 2), ("fixed", 3, 1, 1), ("fixed", 4, 4, 5), ("latent-diff", 3, 3, 3)],
)
def test_degenerate_setting_equals_ordinary_decoding(strategy, num_steps, inner, core_slots):
    """One position in flight, no noise, no ema, every token frozen after num_steps core iterations: the tokens of
    ordinary decoding with the same core slots and the same random latent init (weights off their init, O(1))."""
    torch.manual_seed(0)
    model = tiny_model(init_scale=1.0)
    ids = torch.randint(3, TINY["vocab_size"], (1, 5))
    want = ordinary(model, ids, torch.ones_like(ids), num_steps, 9, core_slots, seeded(11), pad_token_id=0)
    threshold = math.inf if strategy == "latent-diff" else 0.03
    out = model.generate(
        ids,
        recurrent_sampler="diffusion",
        max_new_tokens=9,
        num_steps=num_steps,
        inner_recurrence=inner,
        freeze_strategy=strategy,
        exit_threshold=threshold,
        core_slots=core_slots,
        generator=seeded(11),
        return_dict_in_generate=True,
        **DEGENERATE,
    )
    assert torch.equal(out.sequences, want)
    stats = out.statistics
    per_token = -(-num_steps // inner)  # sampler steps per token
    assert stats["diffusion_steps"] == 8 * per_token  # the prefill gives the first of the 9 tokens
    assert stats["num_core_forward_passes"] == 8 * per_token * inner
    assert torch.equal(stats["frozen_at_step"][0, 5:], torch.arange(9) * per_token)
    assert torch.equal(stats["recurrence_per_position"][0, :13], torch.full((13,), num_steps))
    # a different latent init changes the tokens: the comparison above is not blind to the generator
    other = model.generate(
        ids,
        recurrent_sampler="diffusion",
        max_new_tokens=9,
        num_steps=num_steps,
        inner_recurrence=inner,
        freeze_strategy=strategy,
        exit_threshold=threshold,
        core_slots=core_slots,
        generator=seeded(12),
        **DEGENERATE,
    )
    assert not torch.equal(other, want)


def test_degenerate_setting_equals_ordinary_decoding_batch3_padded_with_eos():
    torch.manual_seed(1)
    model = tiny_model(init_scale=0.0)  # zero latent init: ordinary batched decoding draws nothing either
    lengths = (6, 3, 5)
    ids = torch.randint(3, TINY["vocab_size"], (3, 6))
    mask = torch.ones_like(ids)
    for b, n in enumerate(lengths):
        mask[b, : 6 - n] = 0
        ids[b, : 6 - n] = 0
    plain = ordinary(model, ids, mask, 3, 10, 2, pad_token_id=0)
    generated = plain[:, 6:]
    # an eos id that ends row 0 early while another row never emits it: rows finish at different times
    eos = next(int(t) for t in generated[0, 1:7] if not (generated[1] == t).any() or not (generated[2] == t).any())
    want = ordinary(model, ids, mask, 3, 10, 2, eos_token_id=eos, pad_token_id=1)
    got = diffusion_generate(
        model,
        ids,
        attention_mask=mask,
        max_new_tokens=10,
        num_steps=3,
        inner_recurrence=3,
        freeze_strategy="fixed",
        core_slots=2,
        eos_token_id=eos,
        pad_token_id=1,
        init_scale=0.0,
        return_dict_in_generate=True,
        **DEGENERATE,
    )
    assert torch.equal(got.sequences, want)
    steps = got.statistics["steps_per_row"]
    assert len(set(steps.tolist())) > 1 and (want[:, -1] == 1).any()


@torch.no_grad()
def adaptive_loop(model, ids, num_steps, inner, threshold, max_new, generator, core_slots, mixing=0.0, ema=0.0):
    """An independent per-token loop, written from the sampler's equations: each new token starts from a fresh
    state and runs blocks of ``inner`` core steps; before each block its embedding is ``(1 - ema) e + ema e_old``
    (``e_old``: its previous block's; none in a token's first block, except the prefill's token: its own) and noise
    is mixed in, ``s = (1 - m) s + m r`` with ``m = mixing / (1 + core steps so far)``; the token stops when its state
    changed by less than ``threshold`` (relative to the state before the noise) in the last block; then the head
    picks the next token."""
    cache = model.new_cache(core_slots=core_slots)
    out = model(ids, num_steps=num_steps, generator=generator, use_cache=True, **{CACHE_KWARG: cache})
    seq = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    shape = (1, 1, model.config.n_embd)
    blocks = []
    for pos in range(ids.shape[1], ids.shape[1] + max_new - 1):
        where = dict(cache_position=torch.tensor([pos]), **{CACHE_KWARG: cache})
        state = model.initialize_state(torch.zeros(shape, dtype=torch.float64), 1.0, generator)
        old, count = None, 0
        for block in range(1, 200):
            embeds = model.embed_inputs(seq[:, pos : pos + 1], **where)
            if ema > 0:
                if old is None and pos == ids.shape[1]:
                    old = embeds
                embeds = embeds * (1 - ema) + (ema * old if old is not None else 0)
                old = embeds
            before = state
            if mixing > 0:
                m = mixing / (1 + count)
                state = state * (1 - m) + m * model.initialize_state(
                    torch.zeros(shape, dtype=torch.float64), 1.0, generator
                )
            for t in range(inner):
                state = model.iterate_one_step(embeds, state, step=t, **where)
            count += inner
            if float((state - before).norm() / state.norm()) < threshold:
                break
        blocks.append(block)
        logits = model.predict_from_latents(state, **where)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq, blocks


@pytest.mark.parametrize("mixing, ema", [(0.0, 0.0), (0.5, 0.1)])
def test_one_position_in_flight_is_per_token_adaptive_compute(mixing, ema):
    """latent-diff with a finite threshold and max_wavefront=1: each token gets as many blocks of inner_recurrence
    core steps as its latent needs to settle (against the independent loop above, with and without the damped noise
    and the embedding EMA; the counts differ per token)."""
    model = converging_model()
    ids = torch.randint(3, TINY["vocab_size"], (1, 4))
    want, blocks = adaptive_loop(model, ids, 4, 2, 0.1, 10, seeded(8), 2, mixing, ema)
    out = diffusion_generate(
        model,
        ids,
        max_new_tokens=10,
        num_steps=4,
        inner_recurrence=2,
        exit_threshold=0.1,
        core_slots=2,
        generator=seeded(8),
        return_dict_in_generate=True,
        max_wavefront=1,
        state_noise_mixing=mixing,
        ema_embeds=ema,
    )
    assert torch.equal(out.sequences, want)
    assert len(set(blocks)) > 1
    assert out.statistics["recurrence_per_position"][0, 4:13].tolist() == [2 * b for b in blocks]
    assert out.statistics["diffusion_steps"] == sum(blocks)


def converging_model():
    """The reference's init (small weights): the core contracts, so latents converge and positions freeze at
    different steps under latent-diff."""
    torch.manual_seed(2)
    return tiny_model(moved=False, init_scale=1.0)


def padded(prompts):
    P = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, P - len(p) :] = p
        mask[b, P - len(p) :] = 1
    return ids, mask


SETTINGS = [
    dict(exit_threshold=0.12, headway=2, max_wavefront=3, inner_recurrence=2),
    dict(
        exit_threshold=0.2,
        headway=3,
        max_wavefront=0,
        inner_recurrence=1,
        sqrt_mixer=True,
        continuous_compute=True,
        do_sample=True,
        top_k=20,
        temperature=0.7,
    ),
    dict(freeze_strategy="fixed", headway=2, max_wavefront=4, inner_recurrence=2, dampened_state_mixer=False),
]


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_batch_equals_each_row_alone(setting):
    """Noise, ema, several positions in flight, left padding, one generator per row, per-row max_new_tokens and an
    eos that ends one row early: each row of the batch is what it is alone (tokens and statistics)."""
    model = converging_model()
    options = dict(num_steps=4, state_noise_mixing=0.5, ema_embeds=0.1, **SETTINGS[setting])
    prompts = [torch.randint(3, TINY["vocab_size"], (n,)) for n in (4, 7, 2)]
    max_new = [9, 6, 12]

    def alone(b, eos):
        return diffusion_generate(
            model,
            prompts[b][None],
            max_new_tokens=max_new[b],
            generator=[seeded(100 + b)],
            eos_token_id=eos,
            pad_token_id=0,
            return_dict_in_generate=True,
            **options,
        )

    first = [alone(b, None).sequences[0] for b in range(3)]
    # an eos that row 2 emits part-way (and is then cut there), from its run without one
    eos = int(first[2][len(prompts[2]) + 4])
    singles = [alone(b, eos) for b in range(3)]
    ids, mask = padded(prompts)
    out = diffusion_generate(
        model,
        ids,
        attention_mask=mask,
        max_new_tokens=max_new,
        generator=[seeded(100 + b) for b in range(3)],
        eos_token_id=eos,
        pad_token_id=0,
        return_dict_in_generate=True,
        **options,
    )
    P = ids.shape[1]
    ends = []
    for b, single in enumerate(singles):
        n = single.sequences.shape[1]
        offset = P - len(prompts[b])
        assert torch.equal(out.sequences[b, offset : offset + n], single.sequences[0]), b
        assert (out.sequences[b, offset + n :] == 0).all()
        for name in ("recurrence_per_position", "frozen_at_step"):
            assert torch.equal(out.statistics[name][b, offset : offset + n], single.statistics[name][0]), name
        for name in ("steps_per_row", "num_tokens_forward", "max_in_flight"):
            assert out.statistics[name][b] == single.statistics[name][0], name
        ends.append(n - len(prompts[b]))
    assert len(set(out.statistics["steps_per_row"].tolist())) > 1  # the rows finish at different steps
    assert ends[2] < max_new[2] and singles[2].sequences[0, -1] == eos  # row 2 ended at its eos


def test_freezing_bookkeeping():
    """The frozen prefix never changes after it froze, nor do its cache entries; the statistics add up;
    max_wavefront bounds the positions in flight; latent-diff freezes positions at different steps."""
    model = converging_model()
    writes, step = [], [0]
    new_cache, embed_inputs = model.new_cache, model.embed_inputs

    def recording_cache(core_slots=None):
        cache = new_cache(core_slots=core_slots)
        update = cache.update

        def update_and_record(slot, key, value, columns, valid, length):
            writes.append((step[0], slot, columns.clone(), valid.clone()))
            return update(slot, key, value, columns, valid, length)

        cache.update = update_and_record
        return cache

    def counting_embed(*args, **kwargs):
        step[0] += 1  # one embedding of the wavefront per sampler step
        return embed_inputs(*args, **kwargs)

    model.new_cache, model.embed_inputs = recording_cache, counting_embed
    prompts = [torch.randint(3, TINY["vocab_size"], (n,)) for n in (5, 3)]
    ids, mask = padded(prompts)
    out = model.generate(
        ids,
        attention_mask=mask,
        recurrent_sampler="diffusion",
        max_new_tokens=[14, 10],
        num_steps=4,
        inner_recurrence=2,
        headway=2,
        max_wavefront=4,
        exit_threshold=0.15,
        generator=[seeded(5), seeded(6)],
        pad_token_id=0,
        return_dict_in_generate=True,
        return_history=True,
    )
    P, final, stats = ids.shape[1], out.sequences, out.statistics
    assert stats["diffusion_steps"] == len(out.history) == step[0]
    assert stats["num_core_forward_passes"] == 2 * stats["diffusion_steps"]
    in_flight = torch.tensor([entry["in_flight"] for entry in out.history])
    assert int(in_flight.max()) <= 4 and torch.equal(in_flight.max(0).values, stats["max_in_flight"])
    assert int(in_flight.max()) > 1  # several positions were in flight at once
    assert torch.equal(in_flight.sum(0) * 2, stats["num_tokens_forward"])
    assert stats["num_standing_waves"] > 0  # the wavefront limit was reached
    for entry in out.history:
        for b in range(2):
            n = entry["frozen_length"][b]
            assert torch.equal(entry["tokens"][b, :n], final[b, :n])  # the frozen prefix as it ends up
            if entry["in_flight"][b]:  # a running row's wavefront starts at its last accepted token
                assert entry["start"][b] == n - 1
    frozen_at = stats["frozen_at_step"]
    for b, m in enumerate((14, 10)):
        steps = frozen_at[b, P : P + m]
        assert steps[0] == 0 and bool((steps[1:] >= steps[:-1]).all()) and int(steps[-1]) == stats["steps_per_row"][b]
        assert len(set(steps[1:].diff().tolist())) > 1  # latent-diff froze different numbers of tokens per step
        assert bool((frozen_at[b, P + m :] == -1).all()) and bool((frozen_at[b, :P] == -1).all())
        # a position froze only with the token the text has there (its keys belong to the output)
        for q in range(P, P + m - 1):
            k = int(frozen_at[b, q + 1])
            assert torch.equal(out.history[k - 1]["tokens"][b, q], final[b, q]), q
        # each position in flight had a whole number of sampler steps of core iterations
        assert bool((stats["recurrence_per_position"][b, P : P + m - 1] % 2 == 0).all())
    # cache: after position q froze (the token after it was accepted), no valid entry is written at column q again
    for k, slot, columns, valid in writes:
        for b in range(2):
            froze = torch.where(
                columns[b] + 1 >= P, frozen_at[b].gather(0, (columns[b] + 1).clamp(max=frozen_at.shape[1] - 1)), 0
            )
            rewritten = valid[b] & (froze >= 0) & (froze < k) & (columns[b] + 1 < P + (14, 10)[b])
            assert not bool(rewritten.any()), (k, slot, b)
            if k > stats["steps_per_row"][b]:  # a finished row writes nothing valid
                assert not bool(valid[b].any())


def test_a_wider_wavefront_pipelines():
    """'fixed' freezing after num_steps: with max_wavefront=1 one token per num_steps / inner_recurrence steps; with
    3 in flight the positions overlap, so the same number of tokens takes fewer sampler steps (the first token, from
    the prefill, is the same)."""
    torch.manual_seed(3)
    model = tiny_model(init_scale=0.0)
    ids = torch.randint(3, TINY["vocab_size"], (2, 4))
    outs = [
        diffusion_generate(
            model,
            ids,
            max_new_tokens=8,
            num_steps=4,
            inner_recurrence=2,
            freeze_strategy="fixed",
            max_wavefront=w,
            state_noise_mixing=0.0,
            init_scale=0.0,
            return_dict_in_generate=True,
        )
        for w in (1, 3)
    ]
    assert outs[0].sequences.shape == outs[1].sequences.shape == (2, 12)
    assert torch.equal(outs[0].sequences[:, :5], outs[1].sequences[:, :5])
    assert outs[1].statistics["diffusion_steps"] < outs[0].statistics["diffusion_steps"]  # the wave pipelines


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(inner_recurrence=0), "inner_recurrence"),
        (dict(headway=1.5), "headway"),
        (dict(max_wavefront=-1), "max_wavefront"),
        (dict(ema_embeds=1.0), "ema_embeds"),
        (dict(state_noise_mixing=2.0), "state_noise_mixing"),
        (dict(exit_threshold=-0.1), "exit_threshold"),
        (dict(exit_threshold=0.1, exit_t=0.1), "exit_t"),
        (dict(freeze_strategy="token-stability"), "freeze_strategy"),
        (dict(full_prefill=False), "full_prefill"),
        (dict(core_slots=0), "core_slots"),
        (dict(core_slots=7, num_steps=3), "core_slots"),
        (dict(cache_lookup_strategy="full"), "cache_lookup_strategy"),
        (dict(max_new_tokens=[3]), "max_new_tokens"),
        (dict(generator=[torch.Generator()]), "generator"),
        (dict(attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]])), "left-padded"),
        (dict(num_beams=2), "num_beams"),
        (dict(max_diffusion_steps=1, max_new_tokens=5), "max_diffusion_steps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    model = tiny_model(init_scale=0.0)
    ids = torch.randint(3, TINY["vocab_size"], (2, 3))
    options = dict(max_new_tokens=3, num_steps=2, inner_recurrence=1)
    with pytest.raises((ValueError, RuntimeError), match=match):
        diffusion_generate(model, ids, **{**options, **kwargs})


def test_unknown_sampler_and_argument():
    torch.manual_seed(4)
    model = tiny_model(init_scale=0.0)
    ids = torch.randint(3, TINY["vocab_size"], (1, 3))
    with pytest.raises(ValueError, match="recurrent_sampler"):
        model.generate(ids, recurrent_sampler="speculative", max_new_tokens=2)
    with pytest.raises(TypeError, match="headwey"):
        model.generate(ids, recurrent_sampler="diffusion", max_new_tokens=2, headwey=2)
    # the reference's alias exit_t and its cache strategy name (a loose threshold: with noise and weights moved off
    # init the latents of a tiny random model need not settle below a tight one)
    options = dict(max_new_tokens=6, num_steps=2, init_scale=1.0)
    a = model.generate(
        ids,
        recurrent_sampler="diffusion",
        exit_t=1.5,
        cache_lookup_strategy="latest-m4-compress-s3",
        generator=seeded(1),
        **options,
    )
    b = diffusion_generate(model, ids, exit_threshold=1.5, core_slots=3, generator=seeded(1), **options)
    c = diffusion_generate(model, ids, exit_threshold=1.5, core_slots=2, generator=seeded(1), **options)
    assert torch.equal(a, b) and not torch.equal(b, c)
