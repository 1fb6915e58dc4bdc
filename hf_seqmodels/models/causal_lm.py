"""The causal-LM scaffolding every architecture shares, written once.

An architecture's ``modeling_<arch>.py`` only says how to build its token mixer (``build_mixer``) and, if it has
parameters the generic init does not cover, how to initialize them (``init_extra_weights``).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel

from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.compat import CACHE_KWARG, causal_lm_output, model_output, pop_cache
from hf_seqmodels.layers.block import DecoderBlock
from hf_seqmodels.layers.norm import RMSNorm


class SeqModelConfig(PretrainedConfig):
    """Fields every architecture shares: embeddings, depth, SwiGLU MLP, norms, init, special tokens."""

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 512,
        num_hidden_layers: int = 8,
        intermediate_size: int | None = None,
        hidden_act: str = "silu",
        mlp_bias: bool = False,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        if intermediate_size is None:  # SwiGLU with 8/3 expansion, rounded up to a multiple of 64
            intermediate_size = 64 * ((int(hidden_size * 8 / 3) + 63) // 64)
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.mlp_bias = mlp_bias
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class SeqPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderBlock"]
    _skip_keys_device_placement = [CACHE_KWARG]
    _is_stateful = True  # recurrent state: no cache cropping (assisted/contrastive decoding)
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        init_extra = getattr(module, "init_extra_weights", None)
        if callable(init_extra):
            init_extra(self.config)

    def new_cache(self) -> RecurrentCache:
        """An empty cache with one slot per layer (an architecture with other slots overrides this)."""
        return RecurrentCache(self.config.num_hidden_layers)

    def resolve_cache(self, cache, use_cache):
        """The cache this forward uses: the one passed, a new one, or None (``use_cache`` off, or gradient
        checkpointing in training, which recomputes blocks and must not advance a state twice)."""
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache = False
        if cache is not None and not isinstance(cache, RecurrentCache):
            raise ValueError(f"`{CACHE_KWARG}` must be a hf_seqmodels RecurrentCache, got {type(cache).__name__}")
        if not use_cache:
            return None
        return self.new_cache() if cache is None else cache

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # safetensors only: a folder or repo with nothing but pytorch_model.bin is refused rather than unpickled
        # (pass use_safetensors=False to opt in to transformers' weights-only unpickling).
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        from hf_seqmodels.hub import prepare_auto_map, write_hub_files

        prepare_auto_map(self)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_hub_files(self, save_directory)


class SeqModel(SeqPreTrainedModel):
    """Embeddings, a stack of :class:`DecoderBlock` (mixer + MLP), final RMSNorm.

    Subclasses define ``build_mixer(config, layer_idx)`` (or ``build_block`` for a different block). A mixer is
    called as ``mixer(hidden_states, attention_mask=mask_or_None, cache=RecurrentCache_or_None, position_ids=...)``
    where the mask is the 2-D padding mask of the current tokens (None when nothing is padded); it keeps its decode
    state in the cache under its own ``layer_idx``. The model advances the cache's token count once per forward.
    """

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([self.build_block(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def build_block(self, config, layer_idx: int) -> nn.Module:
        return DecoderBlock(config, self.build_mixer(config, layer_idx))

    def build_mixer(self, config, layer_idx: int) -> nn.Module:
        raise TypeError(f"{type(self).__name__} must define build_mixer(config, layer_idx)")

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

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
        cache = pop_cache(cache, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`")
        if inputs_embeds is None:
            if input_ids.dim() != 2:
                raise ValueError(f"`input_ids` must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
            inputs_embeds = self.embed_tokens(input_ids)
        B, T, _ = inputs_embeds.shape
        cache = self.resolve_cache(cache, use_cache)
        mask = _padding_mask(attention_mask, B, T)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        hidden_states = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        for block in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states = block(hidden_states, attention_mask=mask, cache=cache, position_ids=position_ids)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        if cache is not None:
            cache.advance(T)
        out = model_output(hidden_states, cache, tuple(all_hidden) if all_hidden is not None else None)
        return out if _return_dict(return_dict, self.config) else out.to_tuple()


def _return_dict(return_dict, config) -> bool:
    """``return_dict=False`` (or ``config.return_dict = False``) returns tuples, as transformers' own models do."""
    return bool(getattr(config, "return_dict", True)) if return_dict is None else bool(return_dict)


def _padding_mask(attention_mask, batch_size: int, seq_len: int):
    """The 2-D padding mask for the current tokens ``[B, T]``, or None when nothing is padded."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size or attention_mask.shape[1] < seq_len:
        raise ValueError(
            f"`attention_mask` must be a 2-D padding mask [batch, past + seq_len] with batch={batch_size} and at "
            f"least {seq_len} columns, got shape {tuple(attention_mask.shape)}"
        )
    mask = attention_mask[:, -seq_len:]
    return None if bool(mask.all()) else mask


class SeqForCausalLM(SeqPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    base_model_class: type[SeqModel] = SeqModel

    def __init__(self, config):
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        cache = pop_cache(None, model_kwargs)
        if cache is None and generation_config.use_cache is not False:
            cache = self.model.new_cache()
        if cache is not None:
            model_kwargs[CACHE_KWARG] = cache

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
        cache = pop_cache(cache, kwargs)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        out = causal_lm_output(loss, logits, getattr(outputs, CACHE_KWARG), outputs.hidden_states)
        return out if _return_dict(return_dict, self.config) else out.to_tuple()
