"""Per-token adaptive compute for recurrent-depth decoding, as the reference's ``generate_with_adaptive_compute``
and its exit evaluators (``recpre/raven_modeling_minimal.py`` of seal-rg/recurrent-pretraining).

Each new token (the prompt, in prefill, counts as one) iterates the core up to ``num_steps`` times and stops after
the first step whose criterion says so. Criteria, their values after step ``n`` (``s_n`` the core state, ``p_n`` the
softmax of the last position's logits ``lm_head(ln_f(coda(ln_f(s_n))))``) and their ``"auto"`` thresholds:

    "entropy-diff"      |H(p_n) - H(p_{n-1})| < thr,  H(p) = -sum p log(p + 1e-10),  H(p_0) = 100        (1e-3)
    "latent-diff"       mean over positions of ||s_n - s_{n-1}|| / ||s_n|| < thr                          (0.03)
    "kl"                KL(p_{n-1} || p_n) < thr,  p_0 uniform                                           (1e-3)
    "minp-kl"           the same on min-p filtered p (entries < 0.1 max p set to 1/V, renormalized)      (1e-5)
    "argmax-stability"  argmax p_n unchanged for >= thr consecutive steps (counted from the 2nd step)   (5)
    "cosine"            1 - mean over positions of cos(s_n, s_{n-1}) < thr                               (1e-3)
    "none"              never (fixed ``num_steps``)

``s_0`` is the token's initial state; with ``continuous_compute`` a new token's recurrence starts from the previous
token's final state (the prompt starts from the random init). The reference carries the core state itself in its
adaptive generate, but ``ln_f`` of it (its forward's ``latent_states``) in ``generate_minimal``, where it sends
``continuous_compute`` without a criterion; ``continuous_state="core"`` or ``"ln_f"`` picks (``model.generate``: as
the reference, ``"ln_f"`` when no ``exit_criterion`` is given).

Keys and values of core applications a token skipped (later tokens read them) follow ``kv_lookup``: ``"latest"``
(the reference's ``"latest-m4"``, the lookup its model card pairs with adaptive compute) reads, for core application
``a`` (``a = step * L + block``, ``L = n_layers_in_recurrent_block``) of a token that took ``e`` steps, its last
application of the same block, ``(e - 1) * L + a % L``; ``"skip"`` (what the reference's default ``"full"`` lookup
amounts to with missing entries) leaves the token out of that application's attention. Both are written into the
cache once the token is done. With a bounded cache (``core_slots``, "latest" only) those writes go to the skipped
applications' slots, so a slot holds the token's last write to it, as the reference's "compress-s<k>" (which itself
fails on missing entries).

Batches: the reference iterates every row until the last one exits, so rows that exited keep changing the keys that
later tokens read (its docstring warns of it). Here a row that exited keeps its state, logits and keys as at its exit
(its later applications are rewritten by ``kv_lookup`` once the token is done), so each row of a batch decodes as it
would alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig
from transformers.generation import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from hf_seqmodels.compat import CACHE_NAMES, pop_cache
from hf_seqmodels.layers.checks import check_choice, check_int, check_number

KV_LOOKUPS = ("latest", "skip")


def _fp32(x):
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked_mean(values, valid):
    """Mean of ``values`` ``[B, S]`` over the positions where ``valid`` ``[B, S]`` (None: all)."""
    if valid is None:
        return values.mean(dim=-1)
    valid = valid.to(values.dtype)
    return (values * valid).sum(-1) / valid.sum(-1).clamp(min=1)


class ExitCriterion:
    """Decides, after each core step of a token, which rows stop. ``init(state, valid)`` is called with the token's
    initial state ``[B, S, E]`` (``valid`` ``[B, S]`` bool: not padding, or None); ``check(state, logits, valid)``
    with the state after the step and, when ``needs_logits``, the logits of the last position ``[B, V]``; it returns
    ``(exit [B] bool, value [B])``."""

    name = "none"
    needs_logits = False
    auto_threshold: float = 0.0

    def __init__(self, exit_threshold="auto"):
        if exit_threshold == "auto":
            exit_threshold = self.auto_threshold
        check_number(type(self).__name__, "exit_threshold", exit_threshold, positive=False)
        self.exit_threshold = exit_threshold

    def init(self, state, valid=None):
        pass

    def check(self, state, logits, valid=None):
        value = state.new_zeros(state.shape[0])
        return torch.zeros_like(value, dtype=torch.bool), value


class NoExit(ExitCriterion):
    """Never exits: every token takes ``num_steps``."""


class EntropyDiffExit(ExitCriterion):
    name, needs_logits, auto_threshold = "entropy-diff", True, 1e-3

    def init(self, state, valid=None):
        self.prev = torch.full((state.shape[0],), 100.0, device=state.device, dtype=_fp32(state).dtype)

    def check(self, state, logits, valid=None):
        probs = _fp32(logits).softmax(-1)
        entropy = -(probs * torch.log(probs + 1e-10)).sum(-1)
        value = (entropy - self.prev).abs()
        self.prev = entropy
        return value < self.exit_threshold, value


class LatentDiffExit(ExitCriterion):
    name, auto_threshold = "latent-diff", 0.03

    def init(self, state, valid=None):
        self.prev = state.clone()

    def check(self, state, logits, valid=None):
        value = _masked_mean((state - self.prev).norm(dim=-1) / state.norm(dim=-1), valid)
        self.prev = state.clone()
        return value < self.exit_threshold, value


class KLExit(ExitCriterion):
    """``KL(p_{n-1} || p_n)`` (the reference's ``F.kl_div(log p_n, log p_{n-1}, log_target=True)``)."""

    name, needs_logits, auto_threshold = "kl", True, 1e-3

    def init(self, state, valid=None):
        self.prev = None

    def log_probs(self, logits):
        return F.log_softmax(_fp32(logits), dim=-1)

    def check(self, state, logits, valid=None):
        log_p = self.log_probs(logits)
        prev = self.prev if self.prev is not None else torch.full_like(log_p, -math.log(log_p.shape[-1]))
        value = (prev.exp() * (prev - log_p)).sum(-1)
        self.prev = log_p
        return value < self.exit_threshold, value


class MinPKLExit(KLExit):
    """:class:`KLExit` on min-p filtered distributions: probabilities below a tenth of the largest set to ``1/V``,
    then renormalized."""

    name, auto_threshold = "minp-kl", 1e-5

    def log_probs(self, logits):
        probs = _fp32(logits).softmax(-1)
        small = probs < 0.1 * probs.max(dim=-1, keepdim=True).values
        probs = torch.where(small, 1.0 / probs.shape[-1], probs)
        return (probs / probs.sum(-1, keepdim=True)).log()


class ArgmaxStabilityExit(ExitCriterion):
    """Exits once the argmax has not changed for ``exit_threshold`` (an int) consecutive steps."""

    name, needs_logits, auto_threshold = "argmax-stability", True, 5

    def __init__(self, exit_threshold="auto"):
        if exit_threshold == "auto":
            exit_threshold = self.auto_threshold
        check_int(type(self).__name__, "exit_threshold", exit_threshold, minimum=0)
        self.exit_threshold = exit_threshold

    def init(self, state, valid=None):
        self.prev = torch.full((state.shape[0],), -1, dtype=torch.long, device=state.device)
        self.stable = torch.zeros_like(self.prev)

    def check(self, state, logits, valid=None):
        argmax = logits.argmax(-1)
        self.stable = torch.where(argmax == self.prev, self.stable + 1, torch.zeros_like(self.stable))
        self.prev = argmax
        return self.stable >= self.exit_threshold, self.stable


class CosineExit(ExitCriterion):
    name, auto_threshold = "cosine", 1e-3

    def init(self, state, valid=None):
        self.prev = state.clone()

    def check(self, state, logits, valid=None):
        cosine = (state * self.prev).sum(-1) / state.norm(dim=-1) / self.prev.norm(dim=-1)
        value = 1 - _masked_mean(cosine, valid)
        self.prev = state.clone()
        return value < self.exit_threshold, value


EXIT_CRITERIA = {
    cls.name: cls
    for cls in (NoExit, EntropyDiffExit, LatentDiffExit, KLExit, MinPKLExit, ArgmaxStabilityExit, CosineExit)
}


def exit_criterion_from_name(name: str, exit_threshold="auto") -> ExitCriterion:
    """The criterion called ``name`` (one of :data:`EXIT_CRITERIA`) with ``exit_threshold`` (``"auto"``: the
    reference's default for it)."""
    check_choice("generate", "exit_criterion", name, tuple(EXIT_CRITERIA))
    return EXIT_CRITERIA[name](exit_threshold)


@dataclass
class AdaptiveComputeGenerateOutput(GenerateDecoderOnlyOutput):
    """``compute_steps`` ``[B, new_tokens]`` (long): core steps each new token took (the first column: the prompt's
    prefill, which yields the first new token); 0 for rows that had already finished."""

    compute_steps: torch.LongTensor | None = None


def share_skipped_applications(cache, columns, valid, exit_steps, num_steps: int, width: int, kv_lookup: str):
    """After a token (``columns`` ``[B, S]``, ``valid`` ``[B, S]``) ran ``exit_steps`` ``[B]`` of ``num_steps`` core
    steps (0: row skipped), write its core applications ``exit_steps * width .. num_steps * width - 1``: ``"latest"``
    copies the keys and values of its latest application of the same block, ``"skip"`` masks them out."""
    store = cache.states[0]
    B, S = columns.shape
    length = cache.seen_tokens
    first = min((e for e in exit_steps.tolist() if e > 0), default=num_steps)
    for app in range(first * width, num_steps * width):
        rows = (exit_steps > 0) & (exit_steps * width <= app)
        if not bool(rows.any()):
            continue
        dst = cache.core_slot(app)
        keys, values = store.get("k" + dst), store.get("v" + dst)
        if keys is not None and keys.shape[2] > int(columns.max()):
            H, D = keys.shape[1], keys.shape[3]
            index = columns[:, None, :, None].expand(B, H, S, D)
            own_k, own_v = keys.gather(2, index), values.gather(2, index)
            own_mask = store["m" + dst].gather(1, columns)
        else:
            own_k = own_v = own_mask = None
        new_k, new_v = None, None
        for e in exit_steps[rows].unique().tolist():
            src = cache.core_slot((e - 1) * width + app % width)
            src_k = store["k" + src]
            H, D = src_k.shape[1], src_k.shape[3]
            index = columns[:, None, :, None].expand(B, H, S, D)
            pick = (rows & (exit_steps == e))[:, None, None, None]
            k, v = src_k.gather(2, index), store["v" + src].gather(2, index)
            new_k = k if new_k is None else new_k
            new_v = v if new_v is None else new_v
            new_k, new_v = torch.where(pick, k, new_k), torch.where(pick, v, new_v)
        if own_k is None:
            own_k, own_v = torch.zeros_like(new_k), torch.zeros_like(new_v)
            own_mask = torch.zeros_like(valid)
        pick = rows[:, None, None, None]
        written = valid if kv_lookup == "latest" else torch.zeros_like(valid)
        cache.update(
            dst,
            torch.where(pick, new_k, own_k),
            torch.where(pick, new_v, own_v),
            columns,
            torch.where(rows[:, None], written, own_mask),
            length,
        )


def decoding_config(model, generation_config: GenerationConfig | None, kwargs: dict, where: str) -> GenerationConfig:
    """A copy of ``generation_config`` (default: the model's) updated with the generation fields in ``kwargs``;
    any other keyword is an error naming ``where``."""
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unused = config.update(**kwargs)
    if unused:
        raise TypeError(f"{where}: unexpected keyword arguments {sorted(unused)}")
    return config


def logits_processors(config: GenerationConfig) -> LogitsProcessorList:
    """transformers' processors for ``config``'s repetition penalty and, when sampling, temperature, top-k, top-p,
    min-p (in generate()'s order)."""
    processors = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        if config.min_p:
            processors.append(MinPLogitsWarper(config.min_p))
    return processors


@torch.no_grad()
def generate_with_adaptive_compute(
    model,
    input_ids: torch.LongTensor | None = None,
    generation_config: GenerationConfig | None = None,
    attention_mask: torch.Tensor | None = None,
    exit_criterion: str | ExitCriterion = "none",
    exit_threshold="auto",
    continuous_compute: bool = False,
    continuous_state: str = "core",
    num_steps: int | None = None,
    init_scale: float | None = None,
    generator: torch.Generator | None = None,
    kv_lookup: str = "latest",
    min_steps: int = 0,
    check_criterion_every_n_steps: int = 1,
    do_not_exit_in_prefill: bool = False,
    **kwargs,
):
    """Decode ``input_ids`` ``[B, S]`` (left-padded with ``attention_mask``) with per-token adaptive compute (see
    the module's docstring). ``exit_criterion``: a name of :data:`EXIT_CRITERIA` or an :class:`ExitCriterion`;
    ``exit_threshold``: its threshold (``"auto"``: the reference's); ``num_steps``: the most core steps a token takes
    (default ``config.mean_recurrence``); ``init_scale``/``generator``: the random initial state's scale (default
    ``config.init_scale``) and generator (also used for sampling); ``kv_lookup``: ``"latest"`` or ``"skip"``. Other
    keywords are generation-config fields (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``,
    ``top_p``, ``min_p``, ``repetition_penalty``, ``eos_token_id``, ``pad_token_id``, ``return_dict_in_generate``,
    ``output_scores``) and an empty cache (``past_key_values=model.new_cache(...)``). As the reference, the criterion
    is consulted after step index ``n`` (0-based) only when ``n >= min_steps``, ``(n - min_steps)`` is a multiple of
    ``check_criterion_every_n_steps``, and, with ``do_not_exit_in_prefill``, not on the prompt. Returns the
    sequences, or with ``return_dict_in_generate`` an :class:`AdaptiveComputeGenerateOutput` with
    ``compute_steps``."""
    cache = pop_cache(None, kwargs)
    kwargs.pop("use_cache", None)
    if input_ids is None:
        input_ids = kwargs.pop("inputs", None)
    config = decoding_config(model, generation_config, kwargs, "generate with adaptive compute")
    if config.num_beams not in (None, 1):
        raise ValueError(f"generate with adaptive compute: `num_beams` must be 1, got {config.num_beams}")
    check_choice("generate", "kv_lookup", kv_lookup, KV_LOOKUPS)
    if input_ids is None or input_ids.dim() != 2:
        raise ValueError("generate with adaptive compute: `input_ids` must be a [batch, seq_len] tensor")
    steps = model.config.mean_recurrence if num_steps is None else num_steps
    check_int("generate", "num_steps", steps)
    check_choice("generate", "continuous_state", continuous_state, ("core", "ln_f"))
    check_int("generate", "min_steps", min_steps, minimum=0)
    check_int("generate", "check_criterion_every_n_steps", check_criterion_every_n_steps)
    scale = model.config.init_scale if init_scale is None else init_scale
    if isinstance(exit_criterion, str):
        criterion = exit_criterion_from_name(exit_criterion, exit_threshold)
    elif isinstance(exit_criterion, ExitCriterion):
        if exit_threshold != "auto":
            raise ValueError("`exit_threshold` goes with a criterion's name; an ExitCriterion object holds its own")
        criterion = exit_criterion
    else:
        raise TypeError(f"`exit_criterion` must be a name in {tuple(EXIT_CRITERIA)} or an ExitCriterion")
    if cache is None:
        cache = model.new_cache()
    if kv_lookup == "skip" and cache.core_slots is not None:
        raise ValueError(
            "`kv_lookup='skip'` needs a cache without `core_slots` (a shared slot holds other steps' keys)"
        )
    if cache.get_seq_length() != 0:
        raise ValueError("generate with adaptive compute: `past_key_values` must be an empty cache")
    B, S = input_ids.shape
    device = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device).long()
    if mask.shape != input_ids.shape:
        raise ValueError(f"`attention_mask` must be shaped like `input_ids` {tuple(input_ids.shape)}")
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - S
    eos = config.eos_token_id
    eos = torch.as_tensor([] if eos is None else eos, device=device).long().flatten()
    pad = config.pad_token_id if config.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
    processors = logits_processors(config)
    width = model.config.n_layers_in_recurrent_block

    sequences, tokens = input_ids, input_ids
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    compute_steps, scores, last_state = [], [], None
    for token in range(max_new):
        aux = dict(past_key_values=cache, attention_mask=mask)
        embeds = model.embed_inputs(tokens, **aux)
        columns = cache.last_columns
        valid = mask.gather(1, columns).bool()
        if continuous_compute and last_state is not None:
            state = last_state
        else:
            state = model.initialize_state(embeds, scale=scale, generator=generator)
        criterion.init(state, valid)
        running, exit_steps = unfinished.clone(), torch.zeros(B, dtype=torch.long, device=device)
        logits = None
        for step in range(steps):
            new = model.iterate_one_step(embeds, state, step=step, generator=generator, **aux)
            state = torch.where(running[:, None, None], new, state)
            exit_steps = torch.where(running, step + 1, exit_steps)
            if step == steps - 1:
                break
            if (
                step < min_steps
                or (step - min_steps) % check_criterion_every_n_steps
                or (do_not_exit_in_prefill and token == 0)
            ):
                continue
            logits = model.predict_from_latents(new, **aux)[:, -1] if criterion.needs_logits else None
            stop, _ = criterion.check(new, logits, valid)
            if not bool((running & ~stop).any()):
                if not torch.equal(running, unfinished):
                    logits = None  # rows that stopped earlier keep their states: run the coda on those
                break  # else `new` is every row's state, `logits` (if any) its logits, its coda keys written
            running &= ~stop
            logits = None
        if logits is None:
            logits = model.predict_from_latents(state, **aux)[:, -1]
        share_skipped_applications(cache, columns, valid, exit_steps * unfinished, steps, width, kv_lookup)
        compute_steps.append(exit_steps * unfinished)
        logits = processors(sequences, _fp32(logits))
        if config.output_scores:
            scores.append(logits)
        if config.do_sample:
            next_tokens = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        else:
            next_tokens = logits.argmax(-1)
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
        unfinished &= ~torch.isin(next_tokens, eos)
        if not bool(unfinished.any()):
            break
        tokens, last_state = next_tokens[:, None], state[:, -1:]
        if continuous_state == "ln_f":
            last_state = model.transformer.ln_f(last_state)
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
    if not config.return_dict_in_generate:
        return sequences
    return AdaptiveComputeGenerateOutput(
        sequences=sequences,
        scores=tuple(scores) if config.output_scores else None,
        **{name: cache for name in CACHE_NAMES if name in AdaptiveComputeGenerateOutput.__dataclass_fields__},
        compute_steps=torch.stack(compute_steps, dim=1),
    )
