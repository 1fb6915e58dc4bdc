"""Recurrent-depth language model (Huginn-0125: Geiping et al., 2025), computed as the reference
``recpre/raven_modeling_minimal.py`` of seal-rg/recurrent-pretraining, with its published parameter names.

    e = prelude(wte(ids) * sqrt(n_embd))                      # embed_inputs
    s_0 ~ TruncNormal(0, std, [-3 std, 3 std]) * sqrt(n_embd) # initialize_state, std = sqrt(2 / (5 n_embd)) * scale
    s_t = core_block(adapter([s_{t-1}; e]))                   # iterate_one_step, t = 1 .. num_steps
    logits = lm_head(ln_f(coda(ln_f(s_T))))                   # predict_from_latents

Every block is a sandwich: ``x = norm_2(x + attn(norm_1(x))); x = norm_4(x + mlp(norm_3(x)))``; attention adds
``qk_bias`` to queries and keys before RoPE (interleaved pairs), the MLP is ``proj(silu(a) * b)`` with
``[a, b] = fc(x).chunk(2)``.

Decoding keeps keys and values per block application (:class:`RecurrentDepthCache`), written at explicit columns.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.compat import CACHE_KWARG, pop_cache
from hf_seqmodels.layers.norm import RMSNorm
from hf_seqmodels.models.causal_lm import (
    PACKING_KWARGS,
    SeqForCausalLM,
    SeqPreTrainedModel,
    packed_sequences,
    resolve_return_dict,
)

from .act import ACTHalting, act_recurrence
from .configuration_recurrent_depth import HuginnRavenConfig, RecurrentDepthConfig
from .exits import generate_with_adaptive_compute
from .sampler import generate_with_sampler


@dataclass
class RecurrentDepthModelOutput(BaseModelOutputWithPast):
    """``last_hidden_state``: ``ln_f(coda(...))``, the head's input. ``latent_states``: ``ln_f`` of the last core
    state, detached (what the reference returns). ``ponder_cost`` / ``ponder_loss``: ACT's, see
    :class:`RecurrentDepthCausalLMOutput`."""

    latent_states: torch.Tensor | None = None
    ponder_cost: torch.Tensor | None = None
    ponder_loss: torch.Tensor | None = None


@dataclass
class RecurrentDepthCausalLMOutput(CausalLMOutputWithPast):
    """``latent_states``: ``ln_f`` of the last core state, detached (what the reference returns). With ACT
    (``config.act_threshold``): ``ponder_cost`` ``[B, S]`` (n_updates + remainder per position) and ``ponder_loss``
    (its mean over the tokens; ``loss`` includes ``act_loss_weight`` times it)."""

    latent_states: torch.Tensor | None = None
    ponder_cost: torch.Tensor | None = None
    ponder_loss: torch.Tensor | None = None


class RecurrentDepthCache(RecurrentCache):
    """Keys and values of every block application, addressed by column (absolute position in the cache).

    Slots: prelude block ``i`` -> ``"p{i}"``; core application ``a = step * n_layers_in_recurrent_block + layer``
    -> ``"c{a}"``; coda block ``j`` -> ``"o{j}"``. With ``core_slots=k`` (the reference's "compress-s<k>" lookup),
    core application ``a`` uses slot ``"c{a % k}"``: the core's memory stays bounded whatever the number of steps,
    and a query reads, for each earlier token, the keys that the latest application sharing its slot wrote.

    Writes go to explicit columns (one per token, per row), so a caller may rewrite positions in flight (the parallel
    sampler) and rows may hold different lengths; each slot keeps a ``[B, columns]`` mask of written, non-padding
    entries, and a query attends to the masked-in columns at or before its own. ``crop(n)`` forgets columns >= n.
    """

    def __init__(self, core_slots: int | None = None):
        super().__init__(1)
        if core_slots is not None and (
            isinstance(core_slots, bool) or not isinstance(core_slots, int) or core_slots < 1
        ):
            raise ValueError(f"RecurrentDepthCache: core_slots must be None or an int >= 1, got {core_slots!r}")
        self.core_slots = core_slots
        self.last_columns: torch.Tensor | None = None  # columns of the latest embed_inputs / forward

    def __repr__(self):
        return (
            f"RecurrentDepthCache(seen_tokens={self.seen_tokens}, core_slots={self.core_slots}, "
            f"slots={len(self.states[0]) // 3})"
        )

    def core_slot(self, application: int) -> str:
        return f"c{application if self.core_slots is None else application % self.core_slots}"

    def update(self, slot: str, key, value, columns, valid, length: int):
        """Write ``key``/``value`` ``[B, H, S, D]`` at ``columns`` ``[B, S]`` (``valid`` ``[B, S]`` bool: not
        padding) of ``slot``; return the slot's keys, values ``[B, H, length, D]`` and its mask ``[B, length]``."""
        store = self.states[0]
        B, H, S, D = key.shape
        keys, values, mask = store.get("k" + slot), store.get("v" + slot), store.get("m" + slot)
        if keys is None or keys.shape[2] < length:
            capacity = max(length, 2 * keys.shape[2]) if keys is not None else max(length, 16)
            new_keys = key.new_zeros(B, H, capacity, D)
            new_values = value.new_zeros(B, H, capacity, D)
            new_mask = torch.zeros(B, capacity, dtype=torch.bool, device=key.device)
            if keys is not None:
                new_keys[:, :, : keys.shape[2]] = keys
                new_values[:, :, : keys.shape[2]] = values
                new_mask[:, : mask.shape[1]] = mask
            keys, values, mask = new_keys, new_values, new_mask
            store["k" + slot], store["v" + slot], store["m" + slot] = keys, values, mask
        index = columns[:, None, :, None].expand(B, H, S, D)
        keys.scatter_(2, index, key.to(keys.dtype))
        values.scatter_(2, index, value.to(values.dtype))
        mask.scatter_(1, columns, valid)
        self.seen_tokens = max(self.seen_tokens, length)
        return keys[:, :, :length], values[:, :, :length], mask[:, :length]

    @property
    def is_croppable(self) -> bool:
        return True

    def crop(self, max_length: int) -> None:
        """Forget every column >= ``max_length`` (a negative value counts from the end)."""
        if max_length < 0:
            max_length = self.seen_tokens + max_length
        for name, tensor in self.states[0].items():
            if name.startswith("m"):
                tensor[:, max_length:] = False
        self.seen_tokens = min(self.seen_tokens, max(max_length, 0))


class _Context:
    """Where the current tokens are: their cache columns ``[B, S]``, RoPE positions ``[B, S]``, padding mask
    (``[B, S]`` bool, None when nothing is padded), the cache and its length after this write, and the packed
    sequence of each token (``[1, S]``, None when not packed)."""

    def __init__(self, columns, positions, valid, cache, length, segments=None):
        self.columns, self.positions, self.valid, self.cache, self.length = columns, positions, valid, cache, length
        self.segments = segments


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs ``(x[2i], x[2i+1])`` of ``x`` ``[B, S, H, D]`` (cos, sin ``[B, S, 1, D/2]``), in
    fp32 at least, returned in ``x``'s dtype."""
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))
    first, second = pairs[..., 0], pairs[..., 1]
    out = torch.stack([first * cos - second * sin, second * cos + first * sin], dim=-1).flatten(-2)
    return out.to(x.dtype)


class RecurrentDepthAttention(nn.Module):
    """Causal self-attention: ``Wqkv`` (no bias), ``qk_bias`` ``[2, 1, H, D]`` on queries and keys, RoPE, SDPA,
    ``proj``."""

    def __init__(self, config: RecurrentDepthConfig):
        super().__init__()
        self.n_head, self.head_dim, self.width = config.n_heads, config.head_dim, config.n_embd
        self.Wqkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.qk_bias = nn.Parameter(torch.zeros(2, 1, self.n_head, self.head_dim)) if config.qk_bias else None
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.proj.init_kind = "out"

    def forward(self, x, rope, ctx: _Context, slot: str):
        B, S, _ = x.shape
        q, k, v = self.Wqkv(x).view(B, S, 3, self.n_head, self.head_dim).unbind(2)
        if self.qk_bias is not None:
            q, k = q + self.qk_bias[0], k + self.qk_bias[1]
        q, k = rotate_pairs(q, *rope), rotate_pairs(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if ctx.cache is not None:
            valid = ctx.valid if ctx.valid is not None else torch.ones_like(ctx.columns, dtype=torch.bool)
            k, v, key_ok = ctx.cache.update(slot, k, v, ctx.columns, valid, ctx.length)
            key_col = torch.arange(k.shape[2], device=x.device)
            query_col = ctx.columns[:, :, None]
            mask = ((key_col <= query_col) & key_ok[:, None, :]) | (key_col == query_col)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None].to(x.device))
        elif ctx.valid is not None or ctx.segments is not None:
            col = torch.arange(S, device=x.device)
            mask = (col[None, :] <= col[:, None])[None]
            if ctx.valid is not None:
                mask = mask & ctx.valid[:, None, :]
            if ctx.segments is not None:
                mask = mask & (ctx.segments[:, :, None] == ctx.segments[:, None, :])
            mask = mask | (col[None, :] == col[:, None])
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, S, self.width))


class GatedMLP(nn.Module):
    """``proj(silu(a) * b)`` with ``[a, b] = fc(x).chunk(2, -1)`` (one ``fc`` to twice ``intermediate_size``)."""

    def __init__(self, config: RecurrentDepthConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 2 * config.intermediate_size, bias=False)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)
        self.fc.init_kind, self.proj.init_kind = "glu", "out"

    def forward(self, x):
        a, b = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(a) * b)


class SandwichBlock(GradientCheckpointingLayer):
    """``x = norm_2(x + attn(norm_1(x))); x = norm_4(x + mlp(norm_3(x)))``. With gradient checkpointing on, every
    application that runs with gradients is recomputed in the backward pass."""

    def __init__(self, config: RecurrentDepthConfig):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = RecurrentDepthAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = GatedMLP(config)
        self.norm_3 = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.norm_4 = RMSNorm(config.n_embd, eps=config.norm_eps)

    def forward(self, x, rope, ctx: _Context, slot: str):
        x = self.norm_2(x + self.attn(self.norm_1(x), rope, ctx, slot))
        return self.norm_4(x + self.mlp(self.norm_3(x)))


def _steps_pair(num_steps) -> tuple[int, int]:
    """``num_steps``: an int n (n steps, all without gradients, as the reference) or a pair ``(n, k)`` (n without
    gradients, then k with)."""
    if isinstance(num_steps, torch.Tensor):
        num_steps = num_steps.tolist()
    if isinstance(num_steps, (list, tuple)):
        if len(num_steps) == 1:
            num_steps = num_steps[0]
        elif len(num_steps) != 2:
            raise ValueError(f"`num_steps` must be an int or a pair (no_grad_steps, grad_steps), got {num_steps!r}")
    pair = tuple(num_steps) if isinstance(num_steps, (list, tuple)) else (num_steps, 0)
    for n in pair:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"`num_steps` must be an int >= 0 or a pair of ints >= 0 (no_grad_steps, grad_steps), got {num_steps!r}"
            )
    return pair


def _fp32_at_least(logits):
    """Logits in fp32 (the reference's ``.float()``), fp64 ones kept."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class RecurrentDepthPreTrainedModel(SeqPreTrainedModel):
    config_class = RecurrentDepthConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["SandwichBlock"]
    _is_stateful = False
    # the reference registers its RoPE table as a persistent buffer: a Huginn checkpoint may hold it; it is recomputed
    _keys_to_ignore_on_load_unexpected = [r"freqs_cis"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As transformers', and a local folder with a published Huginn ``config.json`` (``model_type
        "huginn_raven"``) reads it as :class:`HuginnRavenConfig` (its defaults: Huginn-0125's)."""
        if args and "config" not in kwargs and isinstance(args[0], (str, os.PathLike)):
            config_file = os.path.join(args[0], "config.json")
            if os.path.isfile(config_file):
                with open(config_file, encoding="utf-8") as f:
                    model_type = json.load(f).get("model_type")
                if model_type == HuginnRavenConfig.model_type:
                    kwargs["config"] = HuginnRavenConfig.from_pretrained(args[0])
        return super().from_pretrained(*args, **kwargs)

    def new_cache(self, core_slots: int | None = None) -> RecurrentDepthCache:
        """An empty cache; ``core_slots``: see :class:`RecurrentDepthCache` (the reference's "compress-s<k>")."""
        return RecurrentDepthCache(core_slots)

    def resolve_cache(self, cache, use_cache):
        if cache is not None and not isinstance(cache, RecurrentDepthCache):
            raise TypeError(f"`{CACHE_KWARG}` must be a RecurrentDepthCache, got {type(cache).__name__}")
        if self.config.act_threshold is not None:
            if cache is not None or use_cache:
                raise ValueError(
                    f"act_threshold: a model with ACT runs without a KV cache (positions halt at different core "
                    f"steps, so a later token's step would read keys no earlier step wrote): pass use_cache=False "
                    f"and no `{CACHE_KWARG}` (generate(..., use_cache=False) recomputes the prefix each token)"
                )
            return None
        return super().resolve_cache(cache, use_cache)

    @torch.no_grad()
    def _init_weights(self, module):
        """The reference's init (truncated normal at +-3 std): std ``sqrt(2 / (5 n_embd))`` for embeddings, qkv,
        the first half of ``fc``, adapter, head; ``std / sqrt(2 * effective_expected_depth)`` for the output
        projections and the second half of ``fc``; norms 1, ``qk_bias`` and biases 0. ``config.initializer_range``:
        that std everywhere instead. Tensors loaded from a checkpoint are left alone."""
        config = self.config
        std = config.initializer_range or config.init_std
        out_std = config.initializer_range or config.init_std / math.sqrt(2 * config.effective_expected_depth)

        def normal(param, std, rows=None):
            if getattr(param, "_is_hf_initialized", False):
                return
            target = param if rows is None else param[rows]
            nn.init.trunc_normal_(target, mean=0.0, std=std, a=-3 * std, b=3 * std)

        def fill(param, value):
            if param is not None and not getattr(param, "_is_hf_initialized", False):
                param.fill_(value)

        if isinstance(module, ACTHalting):
            if not getattr(module.proj.weight, "_is_hf_initialized", False):
                module.reset_parameters()
        elif isinstance(module, RMSNorm):
            fill(module.weight, 1.0)
        elif isinstance(module, RecurrentDepthAttention):
            fill(module.qk_bias, 0.0)
        elif isinstance(module, nn.Embedding):
            normal(module.weight, std)
        elif isinstance(module, nn.Linear):
            kind = getattr(module, "init_kind", "std")  # set where the layer is built: "glu", "out" or the default
            if kind == "act":
                return
            if kind == "glu":
                half = module.weight.shape[0] // 2
                normal(module.weight, std, slice(0, half))
                normal(module.weight, out_std, slice(half, None))
            else:
                normal(module.weight, out_std if kind == "out" else std)
            fill(module.bias, 0.0)


class RecurrentDepthModel(RecurrentDepthPreTrainedModel):
    """Embedding, prelude, recurrent core with its adapter, coda, ``ln_f`` (used twice): everything but the head.

    The alternative interfaces the samplers use (the reference's names) are :meth:`embed_inputs`,
    :meth:`initialize_state`, :meth:`iterate_one_step` and :meth:`decode_latents` (the head's input).
    """

    def __init__(self, config: RecurrentDepthConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.prelude = nn.ModuleList(SandwichBlock(config) for _ in range(config.n_layers_in_prelude))
        self.adapter = nn.Linear(2 * config.n_embd, config.n_embd, bias=config.bias)
        self.core_block = nn.ModuleList(SandwichBlock(config) for _ in range(config.n_layers_in_recurrent_block))
        self.coda = nn.ModuleList(SandwichBlock(config) for _ in range(config.n_layers_in_coda))
        self.ln_f = RMSNorm(config.n_embd, eps=config.norm_eps)
        if config.act_threshold is not None:
            self.act_halting = ACTHalting(config.n_embd, config.act_threshold)
            self.act_halting.proj.init_kind = "act"  # ACTHalting's own init (t2t's), see _init_weights
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    # -- where the tokens are ---------------------------------------------------------------------------------------
    def context(
        self,
        batch,
        seq_len,
        device,
        cache=None,
        attention_mask=None,
        position_ids=None,
        cache_position=None,
        start=True,
    ) -> _Context:
        """Columns, RoPE positions and padding of ``seq_len`` tokens.

        ``cache_position`` (``[S]`` or ``[B, S]`` long): the cache columns written; default: the next ``seq_len``
        columns (``start``: a new forward / embed_inputs), or the columns of the latest one (``start=False``: a core
        step or the coda on the same tokens). ``attention_mask`` ``[B, columns]`` (1 = token; the columns up to the
        last one written): padding, and the RoPE positions (count of tokens before; left padding == unpadded);
        ``position_ids`` ``[B, S]`` override the positions; default: the columns.
        """
        if cache_position is not None:
            columns = torch.as_tensor(cache_position, device=device).long()
            if columns.dim() == 1:
                columns = columns[None].expand(batch, -1)
            if columns.shape != (batch, seq_len):
                raise ValueError(
                    f"`cache_position` must be [seq_len] or [batch, seq_len] = [{batch}, {seq_len}], got "
                    f"{tuple(columns.shape)}"
                )
            end = int(columns.max()) + 1
        elif cache is not None and not start and cache.last_columns is not None:
            columns = cache.last_columns
            if columns.shape != (batch, seq_len):
                raise ValueError(
                    f"the cache's latest columns are {tuple(columns.shape)}, not [batch, seq_len] = [{batch}, "
                    f"{seq_len}]: pass `cache_position`"
                )
            end = cache.seen_tokens
        else:
            past = cache.get_seq_length() if cache is not None else 0
            columns = torch.arange(past, past + seq_len, device=device)[None].expand(batch, -1)
            end = past + seq_len
        length = max(end, cache.seen_tokens) if cache is not None else end
        if cache is not None:
            cache.last_columns = columns
        valid, positions = None, columns
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < end:
                raise ValueError(
                    f"`attention_mask` must be a 2-D padding mask [batch={batch}, columns >= {end}] (1 = token, one "
                    f"column per cache position), got shape {tuple(attention_mask.shape)}"
                )
            mask = attention_mask.to(device).bool()
            if cache is None and attention_mask.shape[1] != seq_len:
                mask = mask[:, -seq_len:]
            valid = mask.gather(1, columns)
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0).gather(1, columns)
            if bool(valid.all()):
                valid = None
        if position_ids is not None:
            positions = torch.as_tensor(position_ids, device=device).long().expand(batch, seq_len)
        if (
            cache is None
            and cache_position is not None
            and not torch.equal(columns[0], torch.arange(seq_len, device=device))
        ):
            raise ValueError("`cache_position` other than 0 .. seq_len - 1 needs a cache")
        return _Context(columns, positions, valid, cache, length)

    def rope(self, ctx: _Context, dtype):
        """cos, sin ``[B, S, 1, head_dim / 2]`` of the positions (fp32 at least; the reference's table)."""
        dtype = torch.promote_types(dtype, torch.float32)
        head_dim = self.config.head_dim
        exponents = torch.arange(0, head_dim, 2, dtype=dtype, device=ctx.positions.device) / head_dim
        inv_freq = 1.0 / (self.config.rope_base**exponents)
        angles = ctx.positions.to(dtype)[..., None] * inv_freq
        return angles.cos()[:, :, None], angles.sin()[:, :, None]

    # -- the alternative interfaces ---------------------------------------------------------------------------------
    def embed_inputs(
        self,
        input_ids=None,
        position_ids=None,
        past_key_values=None,
        attention_mask=None,
        cache_position=None,
        inputs_embeds=None,
        **kwargs,
    ):
        """``wte(input_ids) * sqrt(n_embd)`` (or ``inputs_embeds * sqrt(n_embd)``) through the prelude; writes the
        prelude's keys to the cache. Returns the embeddings ``[B, S, n_embd]``."""
        cache = pop_cache(past_key_values, kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        B, S, _ = inputs_embeds.shape
        ctx = self.context(B, S, inputs_embeds.device, cache, attention_mask, position_ids, cache_position)
        return self._prelude(inputs_embeds, ctx)

    def _prelude(self, inputs_embeds, ctx):
        x = inputs_embeds * self.config.emb_scale
        rope = self.rope(ctx, x.dtype)
        for i, block in enumerate(self.prelude):
            x = block(x, rope, ctx, f"p{i}")
        return x

    def initialize_state(self, embeds, scale: float = 1.0, generator: torch.Generator | None = None):
        """A random latent state shaped like ``embeds``: truncated normal (mean 0, std ``sqrt(2 / (5 n_embd)) *
        scale``, cut at +-3 std) times ``sqrt(n_embd)``, drawn from ``generator`` (seed one for reproducible
        results; default: torch's global generator, which, seeded as the reference's, gives its states); zeros when
        ``scale`` is 0."""
        std = self.config.init_std * scale
        # drawn as the reference draws it (a normal draw, overwritten by the truncated one), so that a seed gives the
        # reference's state
        state = torch.randn(embeds.shape, generator=generator, dtype=embeds.dtype, device=embeds.device)
        if std > 0:
            nn.init.trunc_normal_(state, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)
            return state * self.config.emb_scale
        return state.zero_()

    def _inject_noise(self, x, step: int, generator=None):
        """The reference's test-time noise (``config.test_time_noise`` > 0), renormalized by the core's last norm."""
        config = self.config
        if config.test_time_noise <= 0:
            return x
        n = config.test_time_noise * config.init_std * config.emb_scale

        def randn():
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        kind = config.test_time_noise_type
        if kind == "geom":
            x = x * (1 - n / (step + 1)) + randn() * n / (step + 1)
        elif kind == "sqrt":
            root = math.sqrt(step + 1)
            x = x * (1 - n / root) + randn() * n / root
        elif kind == "line":
            noise = max(n, (config.mean_recurrence - step) / config.mean_recurrence)
            x = x * (1 - noise) + randn() * noise
        elif kind == "chi":
            noise = 2 * torch.rand(1, generator=generator, device=x.device, dtype=x.dtype) * n
            x = x * (1 - noise) + randn() * noise
        else:  # fixed
            x = x * (1 - n) + randn() * n
        return self.core_block[-1].norm_4(x)

    def _core(self, state, embeds, rope, ctx, step: int, generator=None):
        x = self._inject_noise(state, step, generator)
        x = self.adapter(torch.cat([x, embeds], dim=-1))
        width = len(self.core_block)
        for layer, block in enumerate(self.core_block):
            slot = ctx.cache.core_slot(step * width + layer) if ctx.cache is not None else ""
            x = block(x, rope, ctx, slot)
        return x

    def iterate_one_step(
        self,
        embeds,
        state,
        position_ids=None,
        past_key_values=None,
        step: int = 0,
        attention_mask=None,
        cache_position=None,
        generator=None,
        **kwargs,
    ):
        """One core iteration (number ``step``, counted from 0: it picks the cache slots and the noise schedule):
        noise injection if configured, ``adapter([state; embeds])``, the core blocks. Returns the new state."""
        cache = pop_cache(past_key_values, kwargs)
        B, S, _ = state.shape
        ctx = self.context(B, S, state.device, cache, attention_mask, position_ids, cache_position, start=False)
        return self._core(state, embeds, self.rope(ctx, state.dtype), ctx, step, generator)

    def decode_latents(
        self, latents, position_ids=None, past_key_values=None, attention_mask=None, cache_position=None, **kwargs
    ):
        """``ln_f(coda(ln_f(latents)))``, the head's input; writes the coda's keys to the cache."""
        cache = pop_cache(past_key_values, kwargs)
        B, S, _ = latents.shape
        ctx = self.context(B, S, latents.device, cache, attention_mask, position_ids, cache_position, start=False)
        return self._coda(latents, self.rope(ctx, latents.dtype), ctx)

    def _coda(self, latents, rope, ctx):
        x = self.ln_f(latents)
        for j, block in enumerate(self.coda):
            x = block(x, rope, ctx, f"o{j}")
        return self.ln_f(x)

    def sample_depth(self, generator: torch.Generator | None = None) -> tuple[int, int]:
        """Core steps ``(without gradients, with gradients)``: in training, the reference's Poisson-lognormal
        depth ``p = 1 + Poisson(LogNormal(log(r) - 1/8, 1/2))`` (``r = mean_recurrence``), split as
        ``(max(p - b, 0), min(p, b))`` with ``b = mean_backprop_depth`` (``sampling_scheme="fixed"``:
        ``(max(r - b, 0), b)``); in eval, ``(mean_recurrence, 0)``."""
        config = self.config
        if not self.training:
            return config.mean_recurrence, 0
        t = max(config.mean_recurrence - config.mean_backprop_depth, 0)
        s = config.mean_backprop_depth
        if config.sampling_scheme == "fixed":
            return t, s
        sigma = 0.5
        mu = math.log(t + s) - sigma**2 / 2
        rate = torch.empty(1).log_normal_(mean=mu, std=sigma, generator=generator)
        p = int(torch.poisson(rate, generator=generator).item()) + 1
        return max(p - s, 0), min(s, p)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        num_steps=None,
        input_states=None,
        init_scale=None,
        generator=None,
        cache_position=None,
        **kwargs,
    ):
        """input_ids ``[B, S]`` or inputs_embeds; attention_mask ``[B, past + S]`` (1 = token); ``num_steps``: an
        int (steps without gradients, as the reference) or ``(no_grad_steps, grad_steps)``; default: the training
        depth sampler (:meth:`sample_depth`) in training, ``mean_recurrence`` in eval. ``input_states``
        ``[B, S, n_embd]``: the initial latent state (default: :meth:`initialize_state` with ``init_scale``, default
        ``config.init_scale``, from ``generator``). Returns ``last_hidden_state`` (the head's input), the cache,
        ``latent_states`` (``ln_f`` of the last core state, detached) and, if asked, the hidden states after the
        prelude, after the recurrence, and the last one."""
        cache = pop_cache(cache, kwargs)
        self.check_inputs(input_ids, inputs_embeds)
        B, S = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        packed = packed_sequences(B, S, position_ids, kwargs)
        if packed is not None:
            if cache is not None or use_cache or (attention_mask is not None and not bool(attention_mask.all())):
                raise ValueError(
                    "Packed sequences (position_ids restarting at 0, or cu_seq_lens_q) are for training and scoring: "
                    "pass no cache, use_cache=False and no padding `attention_mask`"
                )
            use_cache, attention_mask = False, None
        cache = self.resolve_cache(cache, use_cache)
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        ctx = self.context(B, S, inputs_embeds.device, cache, attention_mask, position_ids, cache_position)
        if packed is not None:
            device = inputs_embeds.device
            lengths = torch.tensor(packed.lengths, device=device)
            ctx.segments = torch.repeat_interleave(torch.arange(packed.N, device=device), lengths)[None]
            if position_ids is None:  # cu_seq_lens / seq_idx: positions restart with each sequence
                starts = torch.tensor(packed.offsets[:-1], device=device)
                ctx.positions = (torch.arange(S, device=device) - starts[ctx.segments[0]])[None]
        embeds = self._prelude(inputs_embeds, ctx)
        rope = self.rope(ctx, embeds.dtype)
        if input_states is None:
            scale = self.config.init_scale if init_scale is None else init_scale
            state = self.initialize_state(embeds, scale=scale, generator=generator)
        else:
            if input_states.shape != embeds.shape:
                raise ValueError(
                    f"`input_states` must be [batch, seq_len, n_embd] = {list(embeds.shape)}, got "
                    f"{list(input_states.shape)}"
                )
            state = input_states.to(embeds.dtype).clone()
        no_grad_steps, grad_steps = self.sample_depth() if num_steps is None else _steps_pair(num_steps)
        act = None
        if self.config.act_threshold is not None:
            mask = None if attention_mask is None else attention_mask[:, -S:]
            act = act_recurrence(
                lambda s, step: self._core(s, embeds, rope, ctx, step, generator),
                state,
                self.act_halting,
                no_grad_steps + grad_steps,
                attention_mask=mask,
            )
            state = act.state
        else:
            with torch.no_grad():
                for step in range(no_grad_steps):
                    state = self._core(state, embeds, rope, ctx, step, generator)
            for step in range(no_grad_steps, no_grad_steps + grad_steps):
                state = self._core(state, embeds, rope, ctx, step, generator)
        latents = self.ln_f(state)
        hidden = self._coda(state, rope, ctx)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        out = RecurrentDepthModelOutput(
            last_hidden_state=hidden,
            hidden_states=(embeds, latents, hidden) if output_hidden_states else None,
            latent_states=latents.detach(),
            ponder_cost=None if act is None else act.ponder_cost,
            ponder_loss=None if act is None else act.ponder_loss,
            **{CACHE_KWARG: cache},
        )
        return out if resolve_return_dict(return_dict, self.config) else out.to_tuple()


class RecurrentDepthForCausalLM(SeqForCausalLM, RecurrentDepthPreTrainedModel):
    """The recurrent-depth model and its (tied) head. ``generate()`` takes ``num_steps`` (and ``init_scale``,
    ``generator``) and passes them to every forward; a constant-memory cache: ``model.new_cache(core_slots=k)`` as its
    cache; ``continuous_compute=True`` (with a cache): each new token's recurrence starts from the previous token's
    ``latent_states`` instead of noise (the reference's "continuous compute").

    Labels are shifted inside (transformers' convention; the reference takes pre-shifted labels).
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    base_model_class = RecurrentDepthModel

    def __init__(self, config: RecurrentDepthConfig):
        RecurrentDepthPreTrainedModel.__init__(self, config)
        self.transformer = RecurrentDepthModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    @property
    def model(self) -> RecurrentDepthModel:
        """The base model, as the package's other causal LMs name it (here under its published name,
        ``transformer``)."""
        return self.transformer

    # -- the alternative interfaces (the reference's names) ---------------------------------------------------------
    def embed_inputs(self, input_ids=None, position_ids=None, past_key_values=None, **kwargs):
        """See :meth:`RecurrentDepthModel.embed_inputs`."""
        return self.transformer.embed_inputs(input_ids, position_ids, past_key_values, **kwargs)

    def initialize_state(self, embeds, scale: float = 1.0, generator: torch.Generator | None = None):
        """See :meth:`RecurrentDepthModel.initialize_state`."""
        return self.transformer.initialize_state(embeds, scale, generator)

    def iterate_one_step(self, embeds, state, position_ids=None, past_key_values=None, step: int = 0, **kwargs):
        """See :meth:`RecurrentDepthModel.iterate_one_step`."""
        return self.transformer.iterate_one_step(embeds, state, position_ids, past_key_values, step, **kwargs)

    def predict_from_latents(self, latents, position_ids=None, past_key_values=None, **kwargs):
        """``lm_head(ln_f(coda(ln_f(latents))))``: logits ``[B, S, vocab_size]`` (fp32)."""
        return _fp32_at_least(
            self.lm_head(self.transformer.decode_latents(latents, position_ids, past_key_values, **kwargs))
        )

    def generate(
        self,
        *args,
        recurrent_sampler: str | None = None,
        exit_criterion=None,
        exit_threshold=None,
        continuous_compute=False,
        **kwargs,
    ):
        """transformers' ``generate``, plus two decoding modes of the reference:

        - ``recurrent_sampler="diffusion"``: the parallel diffusion-forcing sampler
          (:func:`~hf_seqmodels.models.recurrent_depth.sampler.diffusion_generate`, its options as keyword arguments);
        - ``exit_criterion`` (per-token adaptive compute) or ``continuous_compute=True``:
          :func:`~hf_seqmodels.models.recurrent_depth.exits.generate_with_adaptive_compute` (also takes
          ``exit_threshold``, ``kv_lookup``; ``return_dict_in_generate`` adds ``compute_steps``).
        """
        if recurrent_sampler is not None:
            if exit_criterion is not None:
                raise ValueError(
                    "`exit_criterion` (per-token adaptive compute) and `recurrent_sampler` are two decoding modes: "
                    "pass one of them"
                )
            if exit_threshold is not None:
                kwargs["exit_threshold"] = exit_threshold
            if continuous_compute:
                kwargs["continuous_compute"] = True
            return generate_with_sampler(self, recurrent_sampler, *args, **kwargs)
        if exit_criterion is not None or continuous_compute:
            if exit_criterion is None:  # the reference's generate_minimal: it carries ln_f of the state
                kwargs.setdefault("continuous_state", "ln_f")
            return generate_with_adaptive_compute(
                self,
                *args,
                exit_criterion="none" if exit_criterion is None else exit_criterion,
                exit_threshold="auto" if exit_threshold is None else exit_threshold,
                continuous_compute=continuous_compute,
                **kwargs,
            )
        if exit_threshold is not None:
            raise ValueError("`exit_threshold` needs an `exit_criterion`")
        return super().generate(*args, **kwargs)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep=0,
        num_steps=None,
        input_states=None,
        init_scale=None,
        generator=None,
        cache_position=None,
        **kwargs,
    ):
        """As :meth:`RecurrentDepthModel.forward`, plus labels ``[B, S]`` (-100 ignored, shifted inside). Returns
        fp32 ``logits`` (of the last ``logits_to_keep`` positions if > 0), ``loss``, the cache and
        ``latent_states``."""
        cache = pop_cache(cache, kwargs)
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            num_steps=num_steps,
            input_states=input_states,
            init_scale=init_scale,
            generator=generator,
            cache_position=cache_position,
            **{name: kwargs[name] for name in PACKING_KWARGS if name in kwargs},
        )
        logits = _fp32_at_least(self.head_logits(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if outputs.ponder_loss is not None:  # ACT: t2t's act_loss_weight * mean ponder cost
                loss = loss + self.config.act_loss_weight * outputs.ponder_loss
        out = RecurrentDepthCausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            latent_states=outputs.latent_states,
            ponder_cost=outputs.ponder_cost,
            ponder_loss=outputs.ponder_loss,
            **{CACHE_KWARG: getattr(outputs, CACHE_KWARG)},
        )
        return out if resolve_return_dict(return_dict, self.config) else out.to_tuple()
