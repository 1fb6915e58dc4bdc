"""The parallel diffusion-forcing sampler for recurrent-depth models (Geiping, Yang and Su 2025, arXiv 2510.14961;
the reference is ``generate_diffusion_style`` in seal-rg/recurrent-pretraining ``recpre/raven_modeling_minimal.py``),
for batches: rows freeze, stop and finish independently.

After an ordinary prefill (``num_steps`` core steps on the prompt; its last position gives the first new token), each
row keeps a *wavefront* of in-flight positions: the last accepted token's position and the guessed tokens after it.
One sampler step, on every in-flight position of every row at once (one batched call per core iteration; the frozen
prefix is read from the KV cache):

1. embed the in-flight tokens (prelude), mixed with the previous step's embeddings of the same positions:
   ``e = (1 - ema_embeds) * e_new + ema_embeds * e_old`` (a position new to the wavefront: ``(1 - ema_embeds) * e_new``,
   as the reference);
2. mix noise into the states: ``s = (1 - m) s + m r`` (``sqrt_mixer``: ``sqrt(1 - m) s + sqrt(m) r``), ``r`` a fresh
   :meth:`initialize_state` draw, ``m = state_noise_mixing / (1 + core iterations the position had so far)``
   (``dampened_state_mixer=False``: ``m = state_noise_mixing``);
3. ``inner_recurrence`` core iterations (``iterate_one_step``, iteration ``t`` of the step uses core cache slots
   ``(t * n_layers_in_recurrent_block + layer) % core_slots``), then the coda and head: each in-flight position
   predicts the token after it (greedy or sampled);
4. freeze: ``freeze_strategy="latent-diff"`` (the reference's default): the relative change of a position's state in
   this step, ``||s - s_prev|| / ||s||`` (``s_prev``: its state before the noise of step 2), is below
   ``exit_threshold``; the furthest such position and every position before it freeze (as the reference, the
   furthest exit, not the longest all-below prefix); ``"fixed"``: positions that have had ``num_steps`` core
   iterations freeze. Only positions whose token is the one accepted for them (this step's prediction of the
   position before) can freeze, so the frozen cache always belongs to the output text. A frozen position's keys and
   values stay in the cache for good, and the token it predicts is accepted; the wavefront then starts at the last
   accepted token;
5. append up to ``headway`` new positions (fresh :meth:`initialize_state` draws, or with ``continuous_compute`` the
   latest states of the wavefront's last positions): the first takes the last prediction, the others random tokens;
   at most ``max_wavefront`` positions stay in flight.

A row finishes when it accepted ``max_new_tokens`` tokens (an int, or one per row) or an ``eos_token_id``; it then
stops changing (its tokens after the end are ``pad_token_id``).

**The degenerate setting equals ordinary decoding** (the reference's claim, tested): with ``max_wavefront=1``,
``state_noise_mixing=0``, ``ema_embeds=0`` and ``freeze_strategy="fixed"``, or ``freeze_strategy="latent-diff"`` with
``exit_threshold=inf``, and ``inner_recurrence=num_steps`` (with ``"fixed"``, any ``inner_recurrence`` dividing
``num_steps`` when ``core_slots`` divides ``n_layers_in_recurrent_block``, as the default: the slot of a core
iteration then does not depend on which sampler step runs it), the sampler produces, token by token, exactly what
``model.generate(num_steps=num_steps)`` produces with a cache that has the same core slots
(``past_key_values=model.new_cache(core_slots=core_slots)``) and the same latent init (same generator): each token
gets ``num_steps`` core iterations from a fresh state, then freezes.

Where this differs from the reference (which is batch 1): a position's convergence freezes its own prediction (the
reference accepts up to the token *at* the furthest converged position and keeps that position in flight one more
step, so that its degenerate setting does not reduce to ordinary decoding); the latent change is compared position by
position (the reference's comparison after a freeze is shifted by the number of positions that froze); a position
embedded with a token that this step's prediction replaced does not freeze (the reference may freeze its keys with a
token the text no longer has); freezing comes before appending, so a full wavefront grows in the step where its
front froze; a freshly started position's noise is damped by its own count (0), not by ``num_steps``; the random
tokens of ``headway > 1`` are drawn from the vocabulary with the row's generator; ``full_prefill=False`` is not
supported. So the reference's diffusion-style tokens are not reproduced token for token outside the degenerate
setting.

Randomness: every draw (initial states, noise, random tokens, sampling) of row ``b`` comes from ``generator[b]`` when
``generator`` is a list of one generator per row, so a row gives the same result in any batch as alone; a single
generator (or None: torch's global one) is shared by all rows in row order. The config's ``test_time_noise`` inside
the core draws batch-wide.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from hf_seqmodels.compat import CACHE_KWARG

from .exits import decoding_config, logits_processors

FREEZE_STRATEGIES = ("latent-diff", "fixed")
SAMPLERS = ("diffusion",)


@dataclass
class DiffusionSamplerOutput(ModelOutput):
    """``sequences`` ``[B, prompt + new]`` (padded after a row's end with ``pad_token_id``); ``statistics``: see
    :func:`diffusion_generate`; ``history``: one entry per sampler step when asked (``return_history=True``)."""

    sequences: torch.LongTensor | None = None
    statistics: dict | None = None
    history: list | None = None


def _int_option(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return value


def _float_option(name, value, low, high, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"`{name}` must be a number in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    if value < low or value > high or (high_open and value == high):
        raise ValueError(f"`{name}` must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    return float(value)


def _core_slots(model, core_slots, cache_lookup_strategy, num_steps):
    """The cache's shared core slots: ``core_slots``, or the ``k`` of the reference's ``"...compress-s<k>"``;
    default: one iteration's worth (``n_layers_in_recurrent_block``; the reference's default for Huginn)."""
    width = model.config.n_layers_in_recurrent_block
    if core_slots is not None and cache_lookup_strategy is not None:
        raise ValueError("pass `core_slots` or `cache_lookup_strategy`, not both")
    if cache_lookup_strategy is not None:
        found = re.search(r"compress-s(\d+)$", str(cache_lookup_strategy))
        if found is None:
            raise ValueError(
                "the diffusion sampler shares core cache slots: `cache_lookup_strategy` must end in 'compress-s<k>' "
                f"(as the reference's default 'latest-m4-compress-s4'), got {cache_lookup_strategy!r}"
            )
        core_slots = int(found.group(1))
    if core_slots is None:
        core_slots = width
    _int_option("core_slots", core_slots, 1)
    if core_slots > num_steps * width:
        raise ValueError(
            f"`core_slots` ({core_slots}) must be <= num_steps * n_layers_in_recurrent_block = {num_steps * width}: "
            "the prefill writes the prompt's keys to every core slot the sampler reads"
        )
    return core_slots


class _Rows:
    """Per-row random draws: ``generator`` None, one generator, or a list of one per row."""

    def __init__(self, model, generator, batch, init_scale, dtype, device):
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError(
                    f"`generator` must be a torch.Generator, None, or a list of {batch} torch.Generators (one per "
                    f"row), got {generator!r}"
                )
            self.generators = list(generator)
        elif generator is None or isinstance(generator, torch.Generator):
            self.generators = [generator] * batch
        else:
            raise ValueError(f"`generator` must be a torch.Generator, None or a list of them, got {generator!r}")
        self.per_row = isinstance(generator, (list, tuple))
        self.model, self.init_scale, self.dtype, self.device = model, init_scale, dtype, device

    def states(self, row, n):
        """``[n, n_embd]`` initial states (``initialize_state`` from the row's generator)."""
        shape = (1, n, self.model.config.n_embd)
        zeros = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return self.model.initialize_state(zeros, scale=self.init_scale, generator=self.generators[row])[0]

    def tokens(self, row, n):
        vocab = self.model.config.vocab_size
        return torch.randint(0, vocab, (n,), generator=self.generators[row], device=self.device)


def _choose(logits, row, rows: _Rows, config: GenerationConfig, processors):
    """Tokens ``[N]`` from fp32 logits ``[N, V]`` of one row: argmax, or a sample (``processors``: temperature,
    top-k, top-p, min-p) drawn from the row's generator."""
    if not config.do_sample:
        return logits.argmax(-1)
    probs = processors(None, logits.float()).softmax(-1)
    return torch.multinomial(probs, 1, generator=rows.generators[row])[:, 0]


def _generation_config(model, generation_config, kwargs):
    config = decoding_config(model, generation_config, kwargs, "diffusion sampler")
    if (config.num_beams or 1) != 1 or (config.num_return_sequences or 1) != 1:
        raise ValueError("the diffusion sampler decodes one sequence per row: num_beams and num_return_sequences 1")
    if config.repetition_penalty not in (None, 1.0):
        raise ValueError("the diffusion sampler does not apply `repetition_penalty`")
    return config


def _left_padding(attention_mask, input_ids):
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` must be shaped like input_ids {tuple(input_ids.shape)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(input_ids.device).bool()
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:].long() < mask[:, :-1].long()).any()):
        raise ValueError("the diffusion sampler takes left-padded prompts: `attention_mask` rows 0...0 1...1")
    return mask


@torch.no_grad()
def diffusion_generate(
    model,
    input_ids: torch.LongTensor,
    generation_config: GenerationConfig | None = None,
    tokenizer=None,
    streamer=None,
    init_scale: float | None = None,
    cache_lookup_strategy: str | None = None,
    full_prefill: bool = True,
    ema_embeds: float = 0.1,
    state_noise_mixing: float = 0.5,
    inner_recurrence: int = 4,
    num_steps: int | None = None,
    freeze_strategy: str = "latent-diff",
    headway: int = 1,
    dampened_state_mixer: bool = True,
    sqrt_mixer: bool = False,
    continuous_compute: bool = False,
    exit_threshold: float | None = None,
    exit_t: float | None = None,
    max_wavefront: int = 128,
    max_diffusion_steps: int = 4096,
    attention_mask: torch.Tensor | None = None,
    generator=None,
    core_slots: int | None = None,
    return_history: bool = False,
    **kwargs,
):
    """Generate with the parallel diffusion-forcing sampler (see the module docstring); the reference's argument
    names and defaults (``num_steps`` defaults to ``config.mean_recurrence``, ``init_scale`` to ``config.init_scale``;
    ``exit_threshold``, alias the reference's ``exit_t``, to 0.03; ``max_wavefront=0``: no limit).

    ``input_ids`` ``[B, P]`` with ``attention_mask`` (left padding); generation options as transformers' (keyword
    arguments or ``generation_config``: ``max_new_tokens`` (an int, or a list of one per row), ``max_length``,
    ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``pad_token_id``,
    ``return_dict_in_generate``). ``core_slots`` (or ``cache_lookup_strategy="...compress-s<k>"``): the core cache
    slots all iterations share (default ``n_layers_in_recurrent_block``). ``generator``: see the module docstring.
    ``tokenizer`` is not used (the reference reads stop strings from it); ``streamer`` (batch 1) receives accepted
    tokens as they freeze. A row unfinished after ``max_diffusion_steps`` sampler steps raises a RuntimeError (the
    reference stops silently).

    Returns the sequences ``[B, P + new]``, or with ``return_dict_in_generate`` a :class:`DiffusionSamplerOutput` whose
    ``statistics`` hold ``diffusion_steps`` (sampler steps run), ``num_core_forward_passes`` (batched core
    iterations of the sampler steps: ``diffusion_steps * inner_recurrence``; the prefill's ``num_steps`` not counted),
    ``num_tokens_forward`` ``[B]`` (in-flight positions times core iterations, per row), ``steps_per_row`` ``[B]``
    (the step each row finished in), ``recurrence_per_position`` ``[B, P + new]`` (core iterations of each
    position's state: ``num_steps`` in the prompt), ``frozen_at_step`` ``[B, P + new]`` (the step whose freeze
    accepted each token: 0 for the prefill's token, -1 in the prompt and after the end), ``max_in_flight`` ``[B]``,
    ``num_standing_waves`` (row-steps whose growth ``max_wavefront`` cut) and ``len_prefill``.
    """
    config = model.config
    if input_ids is None or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        raise ValueError("`input_ids` must be a [batch, prompt_length] tensor of token ids")
    if tokenizer is not None:
        raise ValueError("the diffusion sampler takes no `tokenizer` (stop strings are not supported): pass eos ids")
    if not full_prefill:
        raise ValueError("`full_prefill=False` is not supported: the prompt is prefilled with `num_steps` core steps")
    if exit_threshold is not None and exit_t is not None:
        raise ValueError("pass `exit_threshold` or its alias `exit_t`, not both")
    threshold = exit_threshold if exit_threshold is not None else (exit_t if exit_t is not None else 0.03)
    threshold = _float_option("exit_threshold", threshold, 0.0, math.inf)
    num_steps = _int_option("num_steps", config.mean_recurrence if num_steps is None else num_steps, 1)
    inner_recurrence = _int_option("inner_recurrence", inner_recurrence, 1)
    headway = _int_option("headway", headway, 1)
    max_wavefront = _int_option("max_wavefront", max_wavefront, 0)
    max_diffusion_steps = _int_option("max_diffusion_steps", max_diffusion_steps, 1)
    ema = _float_option("ema_embeds", ema_embeds, 0.0, 1.0, high_open=True)
    mixing = _float_option("state_noise_mixing", state_noise_mixing, 0.0, 1.0)
    init_scale = _float_option("init_scale", config.init_scale if init_scale is None else init_scale, 0.0, math.inf)
    if freeze_strategy not in FREEZE_STRATEGIES:
        raise ValueError(f"`freeze_strategy` must be one of {FREEZE_STRATEGIES}, got {freeze_strategy!r}")
    core_slots = _core_slots(model, core_slots, cache_lookup_strategy, num_steps)
    max_new_arg = kwargs.pop("max_new_tokens", None)
    gen = _generation_config(model, generation_config, kwargs)
    processors = logits_processors(gen)
    B, P = input_ids.shape
    device = input_ids.device
    if max_new_arg is None:
        max_new_arg = gen.max_new_tokens if gen.max_new_tokens is not None else gen.max_length - P
    max_new = [max_new_arg] * B if isinstance(max_new_arg, int) else list(max_new_arg)
    if len(max_new) != B or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in max_new):
        raise ValueError(f"`max_new_tokens` must be an int >= 1 or a list of {B} ints >= 1, got {max_new_arg!r}")
    eos = gen.eos_token_id
    eos = torch.tensor([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)), device=device).long()
    pad = gen.pad_token_id if gen.pad_token_id is not None else (int(eos[0]) if len(eos) else None)
    if pad is None and (len(set(max_new)) > 1):
        raise ValueError("rows of different `max_new_tokens` need a `pad_token_id` (or an `eos_token_id`)")
    if streamer is not None and B != 1:
        raise ValueError("a `streamer` takes batch 1")
    prompt_mask = _left_padding(attention_mask, input_ids)
    dtype = model.get_input_embeddings().weight.dtype
    rows = _Rows(model, generator, B, init_scale, dtype, device)

    # -- prefill: ordinary forward with num_steps; the last position gives the first token -------------------------
    cache = model.new_cache(core_slots=core_slots)
    input_states = None
    if rows.per_row:  # each row draws for its own tokens only: the same draws as alone
        input_states = torch.zeros(B, P, config.n_embd, dtype=dtype, device=device)
        for b in range(B):
            n = int(prompt_mask[b].sum())
            input_states[b, P - n :] = rows.states(b, n)
    out = model(
        input_ids,
        attention_mask=prompt_mask.long(),
        num_steps=num_steps,
        input_states=input_states,
        init_scale=init_scale,
        generator=None if rows.per_row else generator,
        use_cache=True,
        logits_to_keep=1,
        **{CACHE_KWARG: cache},
    )
    total = P + max(max_new)
    tokens = torch.full((B, total), pad if pad is not None else 0, dtype=torch.long, device=device)
    tokens[:, :P] = input_ids
    recurrences = torch.zeros(B, total, dtype=torch.long, device=device)
    recurrences[:, :P] = prompt_mask.long() * num_steps
    frozen_at = torch.full((B, total), -1, dtype=torch.long, device=device)
    start = [P] * B  # the wavefront starts at the last accepted token
    states, previous, embeds_old, counts = [None] * B, [None] * B, [None] * B, [None] * B
    finished, length = [False] * B, [P + 1] * B
    steps_per_row = [0] * B
    for b in range(B):
        tokens[b, P] = _choose(out.logits[b, -1:].float(), b, rows, gen, processors)[0]
        frozen_at[b, P] = 0
        if streamer is not None:
            streamer.put(tokens[b, P : P + 1].cpu())
        if max_new[b] == 1 or bool((eos == tokens[b, P]).any()):
            finished[b] = True
            continue
        states[b] = rows.states(b, 1)
        previous[b], embeds_old[b], counts[b] = states[b].clone(), None, torch.zeros(1, dtype=torch.long, device=device)
    tokens_forward = [0] * B
    max_in_flight = [1 if not finished[b] else 0 for b in range(B)]
    standing_waves, step, history = 0, 0, []

    while not all(finished) and step < max_diffusion_steps:
        step += 1
        active = [b for b in range(B) if not finished[b]]
        W = max(states[b].shape[0] for b in active)
        offsets = torch.arange(W, device=device)
        columns = torch.tensor(start, device=device)[:, None] + offsets
        end = int(columns.max()) + 1
        mask = torch.zeros(B, end, dtype=torch.long, device=device)
        mask[:, :P] = prompt_mask.long()
        for b in active:
            mask[b, P : start[b] + states[b].shape[0]] = 1
        ids = tokens.gather(1, columns.clamp(max=total - 1))
        aux = dict(attention_mask=mask, cache_position=columns, **{CACHE_KWARG: cache})
        embeds = model.embed_inputs(ids, **aux)
        x = torch.zeros(B, W, config.n_embd, dtype=dtype, device=device)
        for b in active:
            n = states[b].shape[0]
            if ema > 0:
                mixed = embeds[b, :n] * (1 - ema)
                old = embeds[b, :1] if embeds_old[b] is None else embeds_old[b]  # the first start: old == new
                mixed[: old.shape[0]] += ema * old
                embeds[b, :n] = embeds_old[b] = mixed
            s = states[b]
            if mixing > 0:
                m = mixing / (1 + counts[b].to(dtype))[:, None] if dampened_state_mixer else torch.tensor(mixing)
                r = rows.states(b, n)
                s = s * (1 - m).clamp(min=0).sqrt() + m.sqrt() * r if sqrt_mixer else s * (1 - m) + m * r
            x[b, :n] = s
        for t in range(inner_recurrence):
            x = model.iterate_one_step(embeds, x, step=t, generator=None if rows.per_row else generator, **aux)
        logits = model.predict_from_latents(x, **aux)
        if return_history:
            history.append(
                dict(
                    tokens=tokens.clone(),
                    start=list(start),
                    in_flight=[states[b].shape[0] if not finished[b] else 0 for b in range(B)],
                    frozen_length=list(length),
                )
            )
        for b in active:
            n, c = states[b].shape[0], start[b]
            new = x[b, :n]
            counts[b] = counts[b] + inner_recurrence
            recurrences[b, c : c + n] = counts[b]
            tokens_forward[b] += n * inner_recurrence
            predicted = _choose(logits[b, :n], b, rows, gen, processors)
            tokens[b, c + 1 : c + n + 1] = predicted
            if freeze_strategy == "latent-diff":
                change = (new - previous[b]).norm(dim=-1) / new.norm(dim=-1)
                exits = change < threshold
            else:
                exits = counts[b] >= num_steps
            # only positions embedded with the token now accepted for them may freeze: the kept cache matches the text
            stale = (ids[b, 1:n] != predicted[: n - 1]).nonzero()
            if len(stale):
                exits[int(stale[0, 0]) + 1 :] = False
            exited = exits.nonzero()
            n_freeze = int(exited[-1, 0]) + 1 if len(exited) else 0
            accepted = range(c + 1, c + 1 + n_freeze)
            frozen_at[b, c + 1 : c + 1 + n_freeze] = step
            new_length = c + 1 + n_freeze
            hits = (tokens[b, c + 1 : c + 1 + n_freeze, None] == eos).any(-1).nonzero()
            if len(hits):
                new_length = c + 2 + int(hits[0, 0])
            new_length = min(new_length, P + max_new[b])
            if streamer is not None and n_freeze:
                streamer.put(tokens[b, accepted.start : new_length].cpu())
            if new_length == P + max_new[b] or len(hits):
                finished[b], steps_per_row[b] = True, step
                tokens[b, new_length:] = pad if pad is not None else 0
                frozen_at[b, new_length:] = -1
                recurrences[b, new_length:] = 0
                length[b] = new_length
                continue
            length[b] = new_length
            keep = slice(n_freeze, None)
            kept_states, counts[b] = new[keep], counts[b][keep]
            embeds_old[b] = embeds_old[b][keep] if embeds_old[b] is not None else None
            start[b] = c + n_freeze
            room = P + max_new[b] - 2 - (start[b] + kept_states.shape[0] - 1)  # the last state needed: P + max - 2
            limit = max_wavefront - kept_states.shape[0] if max_wavefront > 0 else headway
            n_new = min(headway, room, limit)
            if max_wavefront > 0 and limit < min(headway, room):
                standing_waves += 1
            if n_new > 0:
                if continuous_compute and n >= n_new:
                    fresh = new[n - n_new :].clone()
                else:
                    fresh = rows.states(b, n_new)
                first = start[b] + kept_states.shape[0]
                if n_new > 1:
                    tokens[b, first + 1 : first + n_new] = rows.tokens(b, n_new - 1)
                kept_states = torch.cat([kept_states, fresh])
                counts[b] = torch.cat([counts[b], counts[b].new_zeros(n_new)])
            states[b], previous[b] = kept_states, kept_states.clone()
            max_in_flight[b] = max(max_in_flight[b], kept_states.shape[0])
    if not all(finished):
        raise RuntimeError(
            f"the diffusion sampler did not finish in max_diffusion_steps={max_diffusion_steps} steps (rows "
            f"{[b for b in range(B) if not finished[b]]}): raise it, or loosen `exit_threshold`"
        )
    if streamer is not None:
        streamer.end()
    longest = max(length)
    sequences = tokens[:, :longest]
    if not gen.return_dict_in_generate:
        return sequences
    statistics = dict(
        diffusion_steps=step,
        num_core_forward_passes=step * inner_recurrence,
        num_tokens_forward=torch.tensor(tokens_forward),
        steps_per_row=torch.tensor(steps_per_row),
        recurrence_per_position=recurrences[:, :longest],
        frozen_at_step=frozen_at[:, :longest],
        max_in_flight=torch.tensor(max_in_flight),
        num_standing_waves=standing_waves,
        len_prefill=P,
    )
    return DiffusionSamplerOutput(sequences=sequences, statistics=statistics, history=history or None)


def generate_with_sampler(model, recurrent_sampler: str, *args, **kwargs):
    """``model.generate(..., recurrent_sampler=name)``: ``"diffusion"`` is :func:`diffusion_generate`."""
    if recurrent_sampler not in SAMPLERS:
        raise ValueError(f"`recurrent_sampler` must be one of {SAMPLERS} (or None), got {recurrent_sampler!r}")
    if "inputs" in kwargs:
        kwargs["input_ids"] = kwargs.pop("inputs")
    return diffusion_generate(model, *args, **kwargs)
