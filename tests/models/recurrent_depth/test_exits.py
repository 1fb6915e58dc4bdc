"""Per-token adaptive compute (exits.py): every exit criterion against a computation written from its definition,
the thresholds that never / always exit against fixed-depth generation, the keys of skipped core applications
against an independent fp64 decoder that reads them as the reference's lookups do, continuous compute, and batches
against their rows alone."""

from __future__ import annotations

import math

import pytest
import torch

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels import RecurrentDepthConfig, RecurrentDepthForCausalLM
from hf_seqmodels.models.recurrent_depth.exits import EXIT_CRITERIA, ExitCriterion, exit_criterion_from_name

TINY = dict(
    vocab_size=41,
    n_embd=24,
    n_heads=3,
    intermediate_size=40,
    n_layers_in_prelude=1,
    n_layers_in_recurrent_block=2,
    n_layers_in_coda=1,
    mean_recurrence=4,
    mean_backprop_depth=2,
    rope_base=37.0,
    norm_eps=1e-5,
)


def tiny_model(dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    model = RecurrentDepthForCausalLM(RecurrentDepthConfig(**{**TINY, **overrides})).to(dtype).eval()
    with torch.no_grad():  # every weight off its init, O(1)
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.5 if "norm" in name or "qk_bias" in name else 0.2))
    return model


# -- the criteria, from their definitions ----------------------------------------------------------------------------


def softmax_row(row):
    top = max(row)
    e = [math.exp(x - top) for x in row]
    return [x / sum(e) for x in e]


def definition_values(name, states, logits, valid):
    """Exit values of one row after steps 1..N: states [N + 1][S][E] (index 0: the initial state), logits [N + 1][V]
    of the last position (index 0 unused), valid [S] bools. Plain Python, from the definitions."""

    def norm(v):
        return math.sqrt(sum(x * x for x in v))

    def mean_valid(xs):
        kept = [x for x, ok in zip(xs, valid) if ok]
        return sum(kept) / len(kept)

    def minp(p):
        top = max(p)
        q = [1 / len(p) if x < 0.1 * top else x for x in p]
        return [x / sum(q) for x in q]

    out, prev_h, stable, prev_arg = [], 100.0, 0, -1
    V = len(logits[1])
    prev_p = [1 / V] * V
    for n in range(1, len(states)):
        s, r = states[n], states[n - 1]
        p = softmax_row(logits[n])
        if name == "entropy-diff":
            h = -sum(x * math.log(x + 1e-10) for x in p)
            out.append(abs(h - prev_h))
            prev_h = h
        elif name == "latent-diff":
            out.append(mean_valid([norm([a - b for a, b in zip(x, y)]) / norm(x) for x, y in zip(s, r)]))
        elif name == "cosine":
            cos = [sum(a * b for a, b in zip(x, y)) / norm(x) / norm(y) for x, y in zip(s, r)]
            out.append(1 - mean_valid(cos))
        elif name in ("kl", "minp-kl"):
            if name == "minp-kl":
                p = minp(p)
            out.append(sum(q * (math.log(q) - math.log(x)) for q, x in zip(prev_p, p)))
            prev_p = p
        elif name == "argmax-stability":
            arg = max(range(V), key=lambda i: logits[n][i])
            stable = stable + 1 if arg == prev_arg else 0
            prev_arg = arg
            out.append(stable)
    return out


@pytest.mark.parametrize("name", [n for n in EXIT_CRITERIA if n != "none"])
def test_criteria_match_their_definitions(name):
    B, S, E, V, N = 3, 5, 7, 11, 6
    states = torch.randn(N + 1, B, S, E, dtype=torch.float64)
    states[3:] = states[2:-1] + 0.02 * torch.randn(N - 2, B, S, E, dtype=torch.float64)  # some steps barely move
    logits = torch.randn(N + 1, B, V, dtype=torch.float64) * 2
    logits[4] = logits[3] + 0.01 * torch.randn(B, V, dtype=torch.float64)
    logits[1, 0] = logits[1, 0].clone().sort().values  # minp-kl: a spread of small and large probabilities
    logits[2:, 1] = logits[1, 1]  # row 1: argmax stable from step 1 on
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[2, :2] = False  # left padding on row 2: latent criteria average its valid positions only
    expected = [
        definition_values(name, states[:, b].tolist(), logits[:, b].tolist(), valid[b].tolist()) for b in range(B)
    ]
    flat = sorted(v for row in expected for v in row)
    half = len(flat) // 2  # about half the checks exit; the threshold between two values
    threshold = 3 if name == "argmax-stability" else (flat[half - 1] + flat[half]) / 2
    criterion = exit_criterion_from_name(name, threshold)
    criterion.init(states[0], valid)
    exits = 0
    for n in range(1, N + 1):
        stop, value = criterion.check(states[n], logits[n] if criterion.needs_logits else None, valid)
        want = torch.tensor([row[n - 1] for row in expected], dtype=torch.float64)
        torch.testing.assert_close(value.double(), want, rtol=1e-9, atol=1e-12)
        want_stop = want >= threshold if name == "argmax-stability" else want < threshold
        assert torch.equal(stop, want_stop), (n, stop, want_stop)
        exits += int(stop.sum())
    assert 0 < exits < B * N


def test_auto_thresholds_are_the_references():
    auto = {name: exit_criterion_from_name(name).exit_threshold for name in EXIT_CRITERIA if name != "none"}
    assert auto == {
        "entropy-diff": 1e-3,
        "latent-diff": 0.03,
        "kl": 1e-3,
        "minp-kl": 1e-5,
        "argmax-stability": 5,
        "cosine": 1e-3,
    }


# -- never exit / exit at once == fixed-depth generation ------------------------------------------------------------

NEVER = {"entropy-diff": -1.0, "latent-diff": -1.0, "kl": -1.0, "minp-kl": -1.0, "cosine": -1.0}
NEVER["argmax-stability"] = 100
AT_ONCE = {"entropy-diff": 1e9, "latent-diff": 1e9, "kl": 1e9, "minp-kl": 1e9, "cosine": 1e9, "argmax-stability": 0}


def _prompt(B=2, S=5):
    torch.manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (B, S))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("name", sorted(NEVER))
def test_threshold_that_never_exits_is_fixed_depth_generation(name):
    model = tiny_model()  # random initial states: the same draws in the same order as plain generate
    ids, mask = _prompt()
    common = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, num_steps=3, pad_token_id=0)
    torch.manual_seed(5)
    plain = model.generate(ids, **common)
    torch.manual_seed(5)
    out = model.generate(ids, exit_criterion=name, exit_threshold=NEVER[name], return_dict_in_generate=True, **common)
    assert torch.equal(out.sequences, plain)
    assert out.compute_steps.shape == (2, 5) and bool((out.compute_steps == 3).all())


@pytest.mark.parametrize("name", sorted(AT_ONCE))
@pytest.mark.parametrize("kv_lookup", ["latest", "skip"])
def test_threshold_that_exits_at_once_takes_one_step(name, kv_lookup):
    model = tiny_model()
    ids, mask = _prompt()
    common = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    torch.manual_seed(5)
    plain = model.generate(ids, num_steps=1, **common)
    torch.manual_seed(5)
    out = model.generate(
        ids,
        exit_criterion=name,
        exit_threshold=AT_ONCE[name],
        num_steps=4,
        kv_lookup=kv_lookup,
        return_dict_in_generate=True,
        **common,
    )
    assert torch.equal(out.compute_steps, torch.ones(2, 5, dtype=torch.long))
    assert torch.equal(out.sequences, plain)


class Counting(ExitCriterion):
    """Never exits; counts its checks per token."""

    def __init__(self):
        self.counts = []

    def init(self, state, valid=None):
        self.counts.append(0)

    def check(self, state, logits, valid=None):
        self.counts[-1] += 1
        return torch.zeros(state.shape[0], dtype=torch.bool), state.new_zeros(state.shape[0])


@pytest.mark.parametrize("min_steps,every,steps", [(0, 1, 1), (1, 2, 2), (2, 3, 3), (4, 1, 5), (6, 1, 6)])
def test_min_steps_and_check_interval(min_steps, every, steps):
    """The criterion is consulted after step index n >= min_steps with (n - min_steps) % every == 0 (not after the
    last step, where nothing is left to decide); a criterion that always exits stops at the first such step."""
    model = tiny_model()
    ids = torch.randint(3, TINY["vocab_size"], (2, 3))
    options = dict(min_steps=min_steps, check_criterion_every_n_steps=every, num_steps=6, max_new_tokens=3)
    counting = Counting()
    model.generate(ids, exit_criterion=counting, do_sample=False, **options)
    assert counting.counts == [len(range(min_steps, 5, every))] * 3
    out = model.generate(ids, exit_criterion="kl", exit_threshold=1e9, return_dict_in_generate=True, **options)
    assert out.compute_steps.tolist() == [[steps] * 3] * 2
    out = model.generate(
        ids, exit_criterion="kl", exit_threshold=1e9, do_not_exit_in_prefill=True, return_dict_in_generate=True,
        num_steps=6, max_new_tokens=3,
    )  # fmt: skip
    assert out.compute_steps.tolist() == [[6, 1, 1]] * 2


# -- the keys of skipped applications: an independent fp64 decoder ---------------------------------------------------


class Scripted(ExitCriterion):
    """Exits after ``schedule[i]`` steps on the i-th token (every row)."""

    def __init__(self, schedule):
        self.schedule, self.calls = list(schedule), 0

    def init(self, state, valid=None):
        self.target, self.done = self.schedule[self.calls], 0
        self.calls += 1

    def check(self, state, logits, valid=None):
        self.done += 1
        stop = torch.full((state.shape[0],), self.done >= self.target, dtype=torch.bool)
        return stop, stop.double()


def ref_rms(x, weight, eps):
    return x / torch.sqrt((x * x).mean() + eps) * weight


def ref_rope(x, pos, base):
    out = x.clone()
    D = x.shape[-1]
    for i in range(D // 2):
        angle = pos * base ** (-2 * i / D)
        c, s = math.cos(angle), math.sin(angle)
        out[:, 2 * i] = x[:, 2 * i] * c - x[:, 2 * i + 1] * s
        out[:, 2 * i + 1] = x[:, 2 * i + 1] * c + x[:, 2 * i] * s
    return out


def ref_block(P, prefix, x, t, app, kv, lookup):
    E, H, eps = TINY["n_embd"], TINY["n_heads"], TINY["norm_eps"]
    D = E // H
    h = ref_rms(x, P[f"{prefix}.norm_1.weight"], eps)
    qkv = P[f"{prefix}.attn.Wqkv.weight"] @ h
    q, k, v = qkv[:E].view(H, D), qkv[E : 2 * E].view(H, D), qkv[2 * E :].view(H, D)
    q = ref_rope(q + P[f"{prefix}.attn.qk_bias"][0, 0], t, TINY["rope_base"])
    k = ref_rope(k + P[f"{prefix}.attn.qk_bias"][1, 0], t, TINY["rope_base"])
    kv[(t, app)] = (k, v)
    entries = [kv[key] for key in (lookup(t, u, app) for u in range(t + 1)) if key is not None]
    heads = []
    for head in range(H):
        scores = torch.stack([(q[head] * ku[head]).sum() / math.sqrt(D) for ku, _ in entries])
        heads.append(sum(w * vu[head] for w, (_, vu) in zip(torch.softmax(scores, 0), entries)))
    x = ref_rms(x + P[f"{prefix}.attn.proj.weight"] @ torch.cat(heads), P[f"{prefix}.norm_2.weight"], eps)
    a, b = (P[f"{prefix}.mlp.fc.weight"] @ ref_rms(x, P[f"{prefix}.norm_3.weight"], eps)).chunk(2)
    return ref_rms(x + P[f"{prefix}.mlp.proj.weight"] @ (a * torch.sigmoid(a) * b), P[f"{prefix}.norm_4.weight"], eps)


def ref_adaptive_logits(P, ids, steps, kv_lookup, prompt=0, core_slots=None, num_steps=4):
    """Logits [T, V] of tokens ``ids`` [T], token t taking ``steps[t]`` core steps from a zero state; token t's
    query at core application a reads token u's keys at a if u ran it, else (``"latest"``) at u's last application
    of the same core block, or (``"skip"``) not at all. ``core_slots=k`` (latest): unless u is t or both are among
    the first ``prompt`` tokens (one forward), what u last wrote to the slot of a: its application
    a' = max{a' = a mod k, a' < num_steps * C}, or, if u skipped a', its latest application of a''s block."""
    C, E, eps = TINY["n_layers_in_recurrent_block"], TINY["n_embd"], TINY["norm_eps"]

    def lookup(t, u, app):
        if app[0] != "c" or u == t or (t < prompt and u < prompt):
            return (u, app)
        a = app[1]
        if core_slots is not None:
            a = max(b for b in range(num_steps * C) if b % core_slots == a % core_slots)
        if a < steps[u] * C:
            return (u, ("c", a))
        return (u, ("c", (steps[u] - 1) * C + a % C)) if kv_lookup == "latest" else None

    kv, rows = {}, []
    for t in range(len(ids)):
        x = P["transformer.wte.weight"][ids[t]] * math.sqrt(E)
        for i in range(TINY["n_layers_in_prelude"]):
            x = ref_block(P, f"transformer.prelude.{i}", x, t, ("p", i), kv, lookup)
        e, s = x, torch.zeros(E, dtype=torch.float64)
        for step in range(steps[t]):
            h = P["transformer.adapter.weight"] @ torch.cat([s, e])
            for layer in range(C):
                h = ref_block(P, f"transformer.core_block.{layer}", h, t, ("c", step * C + layer), kv, lookup)
            s = h
        y = ref_rms(s, P["transformer.ln_f.weight"], eps)
        for j in range(TINY["n_layers_in_coda"]):
            y = ref_block(P, f"transformer.coda.{j}", y, t, ("o", j), kv, lookup)
        rows.append(P["transformer.wte.weight"] @ ref_rms(y, P["transformer.ln_f.weight"], eps))
    return torch.stack(rows)


@pytest.mark.parametrize("kv_lookup,core_slots", [("latest", None), ("skip", None), ("latest", 2), ("latest", 4)])
def test_skipped_applications_are_read_as_the_reference_lookup(kv_lookup, core_slots):
    """Tokens exit after 3, 1, 4, 2, 1, 3 steps (of 4): later tokens read the applications a token skipped as the
    lookup says. A bounded cache (core_slots a multiple of the 2 core blocks, as the reference's "compress-s4" on
    Huginn's 4) gets the skipped applications' writes the same way: a slot holds a token's last write to it."""
    model = tiny_model(init_scale=0.0, tie_embeddings=True)
    ids = torch.randint(3, TINY["vocab_size"], (1, 3))
    schedule = [3, 1, 4, 2, 1, 3]
    out = model.generate(
        ids,
        exit_criterion=Scripted(schedule),
        num_steps=4,
        kv_lookup=kv_lookup,
        max_new_tokens=len(schedule),
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        past_key_values=model.new_cache(core_slots=core_slots),
    )
    assert out.compute_steps[0].tolist() == schedule
    seq = out.sequences[0, :-1].tolist()
    steps = [schedule[0]] * ids.shape[1] + schedule[1:]
    P = {n: p.detach() for n, p in model.named_parameters()}
    ref = ref_adaptive_logits(P, seq, steps, kv_lookup, prompt=ids.shape[1], core_slots=core_slots)
    got = torch.stack([s[0] for s in out.scores])
    torch.testing.assert_close(got, ref[ids.shape[1] - 1 :], rtol=1e-9, atol=1e-9)
    if (
        kv_lookup == "latest" and core_slots is None
    ):  # the lookup matters: reading the skipped entries otherwise gives other logits
        other = ref_adaptive_logits(P, seq, steps, "skip")
        assert (other[ids.shape[1] :] - ref[ids.shape[1] :]).abs().max() > 1e-3


# -- continuous compute ---------------------------------------------------------------------------------------------


def test_continuous_compute_starts_from_the_previous_tokens_latent():
    model = tiny_model()
    ids = torch.randint(3, TINY["vocab_size"], (1, 4))
    calls = []
    step_fn = model.iterate_one_step

    def recording(embeds, state, *args, **kwargs):
        new = step_fn(embeds, state, *args, **kwargs)
        calls.append((kwargs["step"], state.clone(), new.clone()))
        return new

    model.iterate_one_step = recording
    schedule = [2, 3, 1, 4, 2]
    gen = torch.Generator().manual_seed(3)
    model.generate(ids, exit_criterion=Scripted(schedule), continuous_compute=True, num_steps=4, max_new_tokens=5,
                   do_sample=False, generator=gen)  # fmt: skip
    starts = [i for i, (step, _, _) in enumerate(calls) if step == 0]
    assert [b - a for a, b in zip(starts, starts[1:] + [len(calls)])] == schedule
    for start in starts[1:]:  # a token's first step starts from the previous token's last state
        torch.testing.assert_close(calls[start][1], calls[start - 1][2][:, -1:], rtol=0, atol=0)
    assert calls[0][1].abs().min() > 0  # the prompt starts from the random init
    # without a criterion (the reference's generate_minimal) the carried state is ln_f of it
    calls.clear()
    model.generate(ids, continuous_compute=True, num_steps=3, max_new_tokens=4, do_sample=False)
    assert len(calls) == 12
    weight, eps = model.transformer.ln_f.weight, model.config.norm_eps
    for start in (3, 6, 9):
        last = calls[start - 1][2][:, -1:]
        normed = last / torch.sqrt((last * last).mean(-1, keepdim=True) + eps) * weight
        torch.testing.assert_close(calls[start][1], normed, rtol=1e-12, atol=1e-12)
    # without continuous compute every token starts from a fresh random state
    calls.clear()
    model.generate(ids, exit_criterion=Scripted(schedule), num_steps=4, max_new_tokens=5, do_sample=False)
    starts = [i for i, (step, _, _) in enumerate(calls) if step == 0]
    assert not torch.equal(calls[starts[1]][1], calls[starts[1] - 1][2][:, -1:])


# -- batches == rows alone ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("kv_lookup", ["latest", "skip"])
def test_batch_rows_decode_as_alone(continuous, kv_lookup):
    """Rows exit at different steps; each keeps its state at its exit and decodes as it does alone."""
    model = tiny_model(init_scale=0.0)
    torch.manual_seed(2)
    lengths = [5, 3, 4]
    rows = [torch.randint(3, TINY["vocab_size"], (n,)) for n in lengths]
    S = max(lengths)
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, S - len(row) :], mask[b, S - len(row) :] = row, 1
    common = dict(
        exit_criterion="entropy-diff",
        exit_threshold=0.05,
        continuous_compute=continuous,
        kv_lookup=kv_lookup,
        num_steps=6,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    batch = model.generate(ids, attention_mask=mask, **common)
    assert len(set(batch.compute_steps.flatten().tolist())) >= 3  # rows and tokens exit at different steps
    assert len({tuple(col) for col in batch.compute_steps.T.tolist()}) > 1
    for b, row in enumerate(rows):
        alone = model.generate(row[None], **common)
        assert torch.equal(batch.sequences[b, S - len(row) :], alone.sequences[0]), b
        assert torch.equal(batch.compute_steps[b], alone.compute_steps[0]), b


def test_sampling_is_reproducible_with_a_generator():
    model = tiny_model(dtype=torch.float32)
    ids = torch.randint(3, TINY["vocab_size"], (2, 4))
    outs = [
        model.generate(
            ids, exit_criterion="entropy-diff", exit_threshold=0.05, num_steps=5, max_new_tokens=6, do_sample=True,
            top_k=8, temperature=0.7, generator=torch.Generator().manual_seed(11), return_dict_in_generate=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    assert torch.equal(outs[0].sequences, outs[1].sequences) and outs[0].sequences.shape == (2, 10)
    assert torch.equal(outs[0].compute_steps, outs[1].compute_steps)


def test_bad_arguments_are_named():
    model = tiny_model()
    ids = torch.randint(3, TINY["vocab_size"], (1, 3))
    with pytest.raises(ValueError, match="exit_criterion"):
        model.generate(ids, exit_criterion="entropy", max_new_tokens=2)
    with pytest.raises(ValueError, match="kv_lookup"):
        model.generate(ids, exit_criterion="kl", kv_lookup="full", max_new_tokens=2)
    with pytest.raises(ValueError, match="exit_threshold"):
        model.generate(ids, exit_threshold=0.1, max_new_tokens=2)
    with pytest.raises(TypeError, match="exit_threshold"):
        model.generate(ids, exit_criterion="argmax-stability", exit_threshold=0.5, max_new_tokens=2)
    with pytest.raises(ValueError, match="kv_lookup"):
        model.generate(ids, exit_criterion="kl", kv_lookup="skip", past_key_values=model.new_cache(2))
    with pytest.raises(ValueError, match="exit_threshold"):
        model.generate(ids, exit_criterion=Counting(), exit_threshold=0.1, max_new_tokens=2)
    with pytest.raises(ValueError, match="min_steps"):
        model.generate(ids, exit_criterion="kl", min_steps=-1, max_new_tokens=2)
    with pytest.raises(TypeError, match="unexpected"):
        model.generate(ids, exit_criterion="kl", not_an_option=1, max_new_tokens=2)
