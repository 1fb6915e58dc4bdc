"""H-Net (Hwang, Wang, Gu, 2025): a byte-level LM whose stages chunk the sequence with a learned router.

Structure and parameter names follow the reference (goombalab/hnet): ``model.backbone`` is the outermost stage with
``encoder`` / ``main_network`` / ``decoder`` (each an isotropic stack of blocks ending in an RMSNorm, or a nested stage
for ``main_network``), ``routing_module`` (``q_proj_layer``, ``k_proj_layer``), ``residual_proj`` (fp32) and
``pad_dimension`` on a stage wider than its parent. The blocks are this package's shared :class:`DecoderBlock`.

Decoding keeps every stage's state in one :class:`~hf_seqmodels.cache.RecurrentCache`: the layers' own entries
(one slot per block) plus, per chunking stage, the router's last encoder output, the smoothing EMA's last value and
(word router) the previous byte and the current chunk's length. A stage's inner network advances only on rows whose
token is a chunk boundary: it runs on the boundary rows of the batch and every other row's state is kept as it was,
so rows may hit boundaries at different steps. Left padding is exact (a row computes what it computes alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.compat import CACHE_KWARG, pop_cache
from hf_seqmodels.kernels import context_parallel
from hf_seqmodels.layers.aaren import Aaren
from hf_seqmodels.layers.attention import CausalSelfAttention
from hf_seqmodels.layers.block import DecoderBlock
from hf_seqmodels.layers.gam import GatedAssociativeMemory
from hf_seqmodels.layers.gla import GatedLinearAttention
from hf_seqmodels.layers.hnet import (
    RoutingModule,
    StraightThrough,
    downsample,
    init_identity,
    ratio_loss,
    smooth_chunks,
    upsample,
)
from hf_seqmodels.layers.mamba2 import Mamba2Mixer
from hf_seqmodels.layers.norm import RMSNorm
from hf_seqmodels.layers.pararnn import ParaRNNMixer
from hf_seqmodels.layers.plstm import PLSTM
from hf_seqmodels.layers.s4d import S4D
from hf_seqmodels.layers.word_boundary import word_boundaries, word_boundary_state, word_boundary_step
from hf_seqmodels.models.causal_lm import (
    PACKING_KWARGS,
    SeqForCausalLM,
    SeqPreTrainedModel,
    packed_sequences,
    padding_mask,
    resolve_return_dict,
)

from .configuration_hnet import LAYER_LETTERS, HNetConfig, parse_layer_string

_RESIDUAL_OUTPUTS = ("out_proj", "o_proj", "down_proj")  # projections that write into the residual stream


@dataclass
class HNetModelOutput(BaseModelOutputWithPast):
    """``boundary_masks`` / ``boundary_probs``: per chunking stage (outermost first), ``[B, T_s]`` on that stage's
    input sequence (``T_0 = T``; an inner stage's sequence is its parent's chunks, right-aligned with padding first);
    ``stage_masks``: the real-token masks of those sequences."""

    boundary_masks: tuple | None = None
    boundary_probs: tuple | None = None
    stage_masks: tuple | None = None


@dataclass
class HNetCausalLMOutput(CausalLMOutputWithPast):
    """``loss`` = ``lm_loss`` + ``ratio_loss_weight`` x ``ratio_loss`` (summed over learned stages);
    ``boundary_fractions`` ``[num_stages]``: the fraction of real tokens selected as chunk boundaries per stage."""

    lm_loss: torch.FloatTensor | None = None
    ratio_loss: torch.FloatTensor | None = None
    boundary_fractions: torch.FloatTensor | None = None
    boundary_masks: tuple | None = None
    boundary_probs: tuple | None = None
    stage_masks: tuple | None = None


def _stage_view(config: HNetConfig, stage: int) -> SimpleNamespace:
    """What DecoderBlock / LlamaMLP / the ParaRNN mixer read from a config, at one stage's widths."""
    return SimpleNamespace(
        hidden_size=config.d_model[stage],
        intermediate_size=config.d_intermediate[stage],
        rms_norm_eps=config.rms_norm_eps,
        hidden_act="silu",
        mlp_bias=False,
    )


def build_mixer(letter: str, config: HNetConfig, stage: int, layer_idx: int) -> nn.Module:
    kind, d = LAYER_LETTERS[letter.lower()], config.d_model[stage]
    if kind == "mamba2":
        s = config.ssm_cfg
        return Mamba2Mixer(
            d,
            d_state=s["d_state"],
            expand=s["expand"],
            head_dim=s["head_dim"],
            n_groups=s["n_groups"],
            d_conv=s["d_conv"],
            chunk_size=s["chunk_size"],
            norm_eps=config.rms_norm_eps,
            layer_idx=layer_idx,
        )
    if kind == "attention":
        a = config.attn_cfg
        window = a["window_size"][stage]
        return CausalSelfAttention(
            d,
            a["num_heads"][stage],
            rotary_dim=a["rotary_emb_dim"][stage],
            window=None if window < 0 else window + 1,
            rope_theta=config.rope_theta,
            layer_idx=layer_idx,
        )
    if kind == "gla":
        g = config.gla_cfg
        return GatedLinearAttention(
            hidden_size=d,
            num_heads=g["num_heads"],
            expand_k=g["expand_k"],
            expand_v=g["expand_v"],
            use_short_conv=g["use_short_conv"],
            conv_size=g["conv_size"],
            norm_eps=config.rms_norm_eps,
            layer_idx=layer_idx,
        )
    if kind == "plstm":  # PLSTM's defaults: its widths do not depend on the stage width
        return PLSTM(d, norm_eps=config.rms_norm_eps, layer_idx=layer_idx)
    if kind == "s4d":  # the layer's defaults (S4D-Lin, d_state 64) at the stage width
        return S4D(d, layer_idx=layer_idx)
    if kind == "aaren":
        return Aaren(d, config.attn_cfg["num_heads"][stage], layer_idx=layer_idx)
    if kind == "gam":
        return GatedAssociativeMemory(d, layer_idx=layer_idx)
    return ParaRNNMixer(
        hidden_size=d,
        state_size=d,
        cell="gru" if kind == "paragru" else "lstm",
        norm_eps=config.rms_norm_eps,
        layer_idx=layer_idx,
        **config.pararnn_cfg,
    )


class HNetIsotropic(nn.Module):
    """A stack of pre-norm blocks at one stage's width, ending in an RMSNorm (the reference's ``Isotropic``)."""

    def __init__(self, config: HNetConfig, stage: int, spec: str, next_slot):
        super().__init__()
        letters = parse_layer_string(spec)
        view = _stage_view(config, stage)
        self.layers = nn.ModuleList(
            [DecoderBlock(view, build_mixer(c, config, stage, next_slot()), use_mlp=c.isupper()) for c in letters]
        )
        self.norm = RMSNorm(config.d_model[stage], eps=config.rms_norm_eps)
        self.height = sum(2 if c.isupper() else 1 for c in letters)  # additions to the residual stream

    def mark_residual_outputs(self, n_residuals: int) -> None:
        """Scale the init of the projections that write into the residual stream by ``1/sqrt(n_residuals)``."""
        for name, module in self.layers.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in _RESIDUAL_OUTPUTS:
                module.init_std_scale = 1 / math.sqrt(max(1, n_residuals))

    def forward(self, hidden_states, mask, cache):
        """hidden_states ``[B, T, d_model[stage]]``, mask ``[B, T]`` or None -> ``[B, T, d_model[stage]]``."""
        for block in self.layers:
            hidden_states = block(hidden_states, attention_mask=mask, cache=cache)
        return self.norm(hidden_states)


class HNetStage(nn.Module):
    """One level of the hierarchy: encoder -> chunk -> main network (a stage or a stack) -> dechunk -> decoder."""

    def __init__(self, config: HNetConfig, stage: int, layout, next_slot, parent_residuals: int = 0):
        super().__init__()
        self.stage_idx, self.d_model = stage, config.d_model[stage]
        self.is_innermost = len(layout) == 1
        self.word_router = stage == 0 and config.boundary_router == "word"
        self.max_chunk_bytes = config.word_max_chunk_bytes
        first = next_slot.count
        if self.is_innermost:
            self.main_network = HNetIsotropic(config, stage, layout[0], next_slot)
            self.main_network.mark_residual_outputs(parent_residuals + self.main_network.height)
        else:
            self.encoder = HNetIsotropic(config, stage, layout[0], next_slot)
            self.decoder = HNetIsotropic(config, stage, layout[2], next_slot)
            n_res = parent_residuals + self.encoder.height + self.decoder.height
            self.encoder.mark_residual_outputs(n_res)
            self.decoder.mark_residual_outputs(n_res)
            self.main_network = HNetStage(config, stage + 1, layout[1], next_slot, n_res)
            self.routing_module = None if self.word_router else RoutingModule(self.d_model)
            # at least fp32 (the reference keeps it fp32 under bf16; an fp64 model gets fp64)
            self.residual_proj = nn.Linear(
                self.d_model, self.d_model, dtype=torch.promote_types(torch.get_default_dtype(), torch.float32)
            )
            self.residual_proj.init_zeros = True
            self.state_slot = next_slot()
        self.lr_multipliers = config.lr_multipliers
        widen = self.d_model - config.d_model[stage - 1] if stage > 0 else 0
        self.pad_dimension = nn.Parameter(torch.zeros(widen)) if widen > 0 else None
        self.slots = list(range(first, next_slot.count))  # every cache slot of this stage and the ones inside it

    def init_extra_weights(self, config):
        if self.pad_dimension is not None:
            init.zeros_(self.pad_dimension)

    def forward(self, hidden_states, mask, cache, input_ids=None):
        """hidden_states ``[B, T, D_parent]``, mask ``[B, T]`` bool or None. Returns (hidden_states, per-stage
        stats)."""
        B, T, width_in = hidden_states.shape
        # A single decoding step with some rows inactive (padding, or no boundary in the parent): those rows' states
        # must not move. Layers always write new tensors into the cache, so keeping references suffices.
        keep = None
        if cache is not None and mask is not None and T == 1 and not bool(mask.all()):
            keep = {i: dict(cache.states[i]) for i in self.slots}
        if self.pad_dimension is not None:
            hidden_states = torch.cat([hidden_states, self.pad_dimension.to(hidden_states.dtype).expand(B, T, -1)], -1)
        if self.is_innermost:
            out, stats = self.main_network(hidden_states, mask, cache), []
        else:
            out, stats = self._chunked(hidden_states, mask, cache, input_ids)
        if keep is not None:
            _restore_rows(cache, keep, mask[:, 0])
        return out[..., :width_in], stats

    def _route(self, enc, mask, state, input_ids):
        """(p, b, word-chunk lengths after these bytes or None)."""
        if not self.word_router:
            return (*self.routing_module(enc, mask, state.get("router_last"), state.get("router_seen")), None)
        if state.get("word_prev") is None:
            b = word_boundaries(input_ids, attention_mask=mask, max_chunk_bytes=self.max_chunk_bytes)
            return b.float(), b, None
        # decoding: one byte per call (the model runs longer continuations byte by byte)
        b, length = word_boundary_step(
            input_ids[:, 0], state["word_prev"], state["word_len"], max_chunk_bytes=self.max_chunk_bytes
        )
        return b[:, None].float(), b[:, None], length

    def _chunked(self, hidden_states, mask, cache, input_ids):
        enc = self.encoder(hidden_states, mask, cache)
        residual = self.residual_proj(enc.to(self.residual_proj.weight.dtype))
        state = cache.states[self.state_slot] if cache is not None else {}
        p, b, word_len = self._route(enc, mask, state, input_ids)
        chunks, chunk_mask, counts, index = downsample(enc, b)
        previous = state.get("ema_last")
        inner_stats = []
        if chunks.shape[1] > 0:
            all_real = bool(chunk_mask.all())
            inner, inner_stats = self.main_network(chunks, None if all_real else chunk_mask, cache)
            zbar = smooth_chunks(inner, p.gather(1, index), chunk_mask, previous)
        else:
            zbar = residual.new_zeros(enc.shape[0], 0, enc.shape[-1])
        up = upsample(zbar, b, counts, previous)
        confidence = torch.maximum(p, 1 - p)
        out = (up * StraightThrough.apply(confidence)[..., None] + residual).to(enc.dtype)
        out = self.decoder(out, mask, cache)
        if cache is not None:
            self._update_state(cache, state, enc, mask, b, zbar, previous, input_ids, word_len)
        stats = [dict(p=p, b=b, mask=mask, learned=not self.word_router)]
        return out, stats + inner_stats

    def _update_state(self, cache, state, enc, mask, b, zbar, previous, input_ids, word_len):
        B, T, D = enc.shape
        real = torch.ones(B, T, dtype=torch.bool, device=enc.device) if mask is None else mask
        any_real = real.any(1)
        t = torch.arange(T, device=enc.device)
        last = t.expand(B, T).masked_fill(~real, -1).max(1).values.clamp(min=0)  # each row's last real token
        rows = torch.arange(B, device=enc.device)
        last_enc = enc[rows, last]
        if state.get("router_last") is not None:
            last_enc = torch.where(any_real[:, None], last_enc, state["router_last"].to(last_enc.dtype))
        seen = any_real if state.get("router_seen") is None else (any_real | state["router_seen"])
        if zbar.shape[1] > 0:  # rows are right-aligned and padding columns keep the EMA: the last column is current
            ema = zbar[:, -1]
        else:
            ema = previous if previous is not None else zbar.new_zeros(B, D)
        cache.set(self.state_slot, "router_last", last_enc)
        cache.set(self.state_slot, "router_seen", seen)
        cache.set(self.state_slot, "ema_last", ema)
        if self.word_router:  # rows without a real token here are put back by the caller (one-step decoding)
            if word_len is None:
                prev, length = word_boundary_state(input_ids, b, mask)
            else:
                prev, length = input_ids[:, 0].long(), word_len
            cache.set(self.state_slot, "word_prev", prev)
            cache.set(self.state_slot, "word_len", length)


def _restore_rows(cache, kept: dict, active):
    """Put back the kept state of the rows that are not ``active`` ([B] bool), tensor by tensor. A tensor whose
    shape changed (an attention layer appended keys; it masks its own padding rows) is left as written."""
    for slot, old_states in kept.items():
        states = cache.states[slot]
        for name, new in states.items():
            old = old_states.get(name)
            if old is None or old is new or old.shape != new.shape:
                continue
            states[name] = torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, old)


class _SlotCounter:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1
        return self.count - 1


class HNetPreTrainedModel(SeqPreTrainedModel):
    config_class = HNetConfig
    # strict: fp32 under bf16 too (as the module is built), not only when loading in fp16
    _keep_in_fp32_modules_strict = ["residual_proj"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights, config, loader files and model card as every model here, plus the byte tokenizer's files (so
        ``AutoTokenizer.from_pretrained(save_directory)`` works)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            from .tokenization_byte import ByteTokenizer

            ByteTokenizer().save_pretrained(save_directory)

    def _init_weights(self, module):
        # Marks set at build time, on the Linear modules themselves: transformers skips the init of a module without
        # parameters of its own (such as the routing module) for custom code.
        super()._init_weights(module)
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.embedding_init_std)
        elif isinstance(module, nn.Linear):
            if getattr(module, "init_identity", False):
                init_identity(module)
            elif getattr(module, "init_zeros", False):
                init.zeros_(module.weight)
                init.zeros_(module.bias)
            elif hasattr(module, "init_std_scale"):
                init.normal_(module.weight, mean=0.0, std=self.config.initializer_range * module.init_std_scale)


class HNetModel(HNetPreTrainedModel):
    """Byte embeddings and the nested stages; returns the outermost decoder's (normalized) outputs."""

    def __init__(self, config: HNetConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model[0])
        counter = _SlotCounter()
        self.backbone = HNetStage(config, 0, config.arch_layout, counter)
        self.num_cache_slots = counter.count
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def new_cache(self) -> RecurrentCache:
        return RecurrentCache(self.num_cache_slots)

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
        **kwargs,
    ):
        """input_ids ``[B, T]`` (bytes, long) or inputs_embeds ``[B, T, d_model[0]]``; attention_mask ``[B, T]``.
        Returns :class:`HNetModelOutput`: ``last_hidden_state`` ``[B, T, d_model[0]]`` and per-stage boundary
        masks/probabilities ``[B, T_s]``."""
        context_parallel.refuse("H-Net", "its inner network runs on a chunk sequence whose length differs per rank")
        cache = pop_cache(cache, kwargs)
        self.check_inputs(input_ids, inputs_embeds)
        if self.config.boundary_router == "word" and input_ids is None:
            raise ValueError("HNetConfig.boundary_router='word' reads the bytes: pass `input_ids`, not `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        B, T, _ = inputs_embeds.shape
        if packed_sequences(B, T, position_ids, kwargs) is not None:
            raise ValueError(
                "HNetModel does not support packed sequences (position_ids restarting at 0, cu_seq_lens_q or seq_idx, "
                "as DataCollatorWithFlattening gives): its routers, chunking, dechunking EMA and inner stages would "
                "need a per-sequence reset at every stage. Pass a padded batch (attention_mask) instead"
            )
        cache = self.resolve_cache(cache, use_cache)
        mask = padding_mask(attention_mask, B, T)
        mask = None if mask is None else mask.bool()

        if cache is not None and cache.seen_tokens > 0 and T > 1:
            # after cached tokens, rows' inner networks would resume at different places: go byte by byte (exact)
            outs = []
            for t in range(T):
                step_ids = None if input_ids is None else input_ids[:, t : t + 1]
                outs.append(
                    self._run(
                        inputs_embeds[:, t : t + 1], None if mask is None else mask[:, t : t + 1], cache, step_ids
                    )
                )
                cache.advance(1)
            hidden = torch.cat([o[0] for o in outs], 1)
            stats = outs[-1][1]
        else:
            hidden, stats = self._run(inputs_embeds, mask, cache, input_ids)
            if cache is not None:
                cache.advance(T)
        out = HNetModelOutput(
            last_hidden_state=hidden,
            hidden_states=(hidden,)
            if (self.config.output_hidden_states if output_hidden_states is None else output_hidden_states)
            else None,
            boundary_masks=tuple(s["b"] for s in stats),
            boundary_probs=tuple(s["p"] for s in stats),
            stage_masks=tuple(s["mask"] for s in stats),
            **{CACHE_KWARG: cache},
        )
        return out if resolve_return_dict(return_dict, self.config) else out.to_tuple()

    def _run(self, embeds, mask, cache, input_ids):
        if mask is not None and bool(mask.all()):
            mask = None
        return self.backbone(embeds, mask, cache, input_ids)


class HNetForCausalLM(SeqForCausalLM, HNetPreTrainedModel):
    base_model_class = HNetModel
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: HNetConfig):
        HNetPreTrainedModel.__init__(self, config)
        self.model = HNetModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.d_model[0], config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

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
        **kwargs,
    ):
        """As :meth:`HNetModel.forward`, plus labels ``[B, T]``. Returns :class:`HNetCausalLMOutput`: ``logits``
        ``[B, T', vocab_size]``, fp32 ``loss`` = ``lm_loss`` + weighted ``ratio_loss``, ``boundary_fractions``."""
        cache = pop_cache(cache, kwargs)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            position_ids=position_ids,
            **{n: kwargs[n] for n in PACKING_KWARGS if n in kwargs},
        )
        logits = self.head_logits(outputs.last_hidden_state, logits_to_keep)
        ratio, fractions = compression_stats(outputs, self.config)
        loss = lm_loss = None
        if labels is not None:
            lm_loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            loss = lm_loss
            if ratio is not None:
                weight = self.config.ratio_loss_weight
                total = kwargs.get("num_items_in_batch")
                if total is not None:
                    # Trainer normalizes the LM loss by the tokens of the whole step (all devices, all accumulation
                    # steps) and rescales by the world size: weigh this micro-batch's ratio loss by its share of those
                    # tokens, so the step's ratio loss is the same however the batch is split.
                    local = (labels[..., 1:] != -100).sum()
                    weight = weight * local / torch.as_tensor(total, device=local.device).clamp(min=1)
                loss = lm_loss + weight * ratio
        self.last_compression = {
            "ratio_loss": None if ratio is None else ratio.detach(),
            "boundary_fractions": fractions,
        }
        out = HNetCausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            lm_loss=lm_loss,
            ratio_loss=ratio,
            boundary_fractions=fractions,
            boundary_masks=outputs.boundary_masks,
            boundary_probs=outputs.boundary_probs,
            stage_masks=outputs.stage_masks,
            **{CACHE_KWARG: getattr(outputs, CACHE_KWARG)},
        )
        return out if resolve_return_dict(return_dict, self.config) else out.to_tuple()


def compression_stats(outputs, config: HNetConfig):
    """(summed ratio loss of the learned stages or None, boundary fraction per stage ``[S]`` detached)."""
    ratio, fractions = None, []
    for s, (p, b, mask) in enumerate(zip(outputs.boundary_probs, outputs.boundary_masks, outputs.stage_masks)):
        loss_s, frac = ratio_loss(p, b, mask, config.compression_ratio[s], config.ratio_loss_reduction)
        fractions.append(frac.detach())
        if config.boundary_router == "learned" or s > 0:
            ratio = loss_s if ratio is None else ratio + loss_s
    return ratio, torch.stack(fractions) if fractions else None
