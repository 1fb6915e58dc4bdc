"""The causal-LM scaffolding every architecture shares, written once.

An architecture's ``modeling_<arch>.py`` only says how to build its token mixer (``build_mixer``) and, if it has
parameters the generic init does not cover, how to initialize them (``init_extra_weights``). An architecture with
a forward of its own (H-Net) reuses the input handling: :func:`padding_mask`, :func:`packed_sequences` and
:func:`resolve_return_dict`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.compat import CACHE_KWARG, causal_lm_output, model_output, pop_cache
from hf_seqmodels.kernels._dispatch import debug_checks_enabled
from hf_seqmodels.layers.block import DecoderBlock
from hf_seqmodels.layers.checks import check_bool, check_choice, check_int, check_number
from hf_seqmodels.layers.norm import RMSNorm


def default_intermediate_size(hidden_size: int) -> int:
    """The MLP width left unset: SwiGLU with 8/3 expansion, rounded up to a multiple of 64."""
    return 64 * ((int(hidden_size * 8 / 3) + 63) // 64)


class SeqModelConfig(PretrainedConfig):
    """Fields every architecture shares: embeddings, depth, SwiGLU MLP, norms, init, special tokens.

    ``intermediate_size`` None: :func:`default_intermediate_size` of ``hidden_size``. ``pad_token_id``: None or an id
    of the vocabulary (the embedding row kept at zero).
    """

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
        where = type(self).__name__
        check_int(where, "vocab_size", vocab_size)
        check_int(where, "hidden_size", hidden_size)
        check_int(where, "num_hidden_layers", num_hidden_layers)
        check_int(where, "intermediate_size", intermediate_size, allow_none=True)
        check_choice(where, "hidden_act", hidden_act, ACT2FN)
        check_bool(where, "mlp_bias", mlp_bias)
        check_bool(where, "tie_word_embeddings", tie_word_embeddings)
        check_number(where, "rms_norm_eps", rms_norm_eps)
        check_number(where, "initializer_range", initializer_range, positive=False, minimum=0.0)
        if pad_token_id is not None:  # torch's Embedding asserts otherwise (it also takes -vocab_size..-1)
            check_int(where, "pad_token_id", pad_token_id, minimum=-vocab_size)
            if pad_token_id >= vocab_size:
                raise ValueError(
                    f"{where}.pad_token_id must be None or a token id < vocab_size ({vocab_size}), got {pad_token_id}"
                )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        if intermediate_size is None:
            intermediate_size = default_intermediate_size(hidden_size)
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

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """transformers' reader, refusing the config of a published checkpoint format (fla's ``gla``...), which our
        config would read wrongly: such a folder loads through our model's ``from_pretrained`` or ``convert``."""
        config_dict, rest = super().get_config_dict(*args, **kwargs)
        from hf_seqmodels.registry import checkpoint_format_for_model_type

        fmt = checkpoint_format_for_model_type(config_dict.get("model_type"))
        if fmt is not None:
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            raise ValueError(
                f"{cls.__name__}: {source!r} holds a {fmt.description} checkpoint (model_type "
                f"{config_dict['model_type']!r}), not an hf-seqmodels config. Load its local folder with our "
                "model class's from_pretrained (converted on load), or convert it once: hf-seqmodels convert SRC DST "
                "(a Hub repository: download it first, e.g. `hf download REPO --local-dir SRC`)"
            )
        return config_dict, rest


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

    def check_inputs(self, input_ids, inputs_embeds) -> None:
        """Refuse, by argument name, what the embedding or the mixers would fail on deep inside: both or neither of
        ``input_ids`` and ``inputs_embeds``, a wrong shape, no positions (T = 0), or a token id outside
        ``[0, config.vocab_size)``.

        Cost: shape checks, plus one ``aminmax`` over the ids and two numbers read back. That read is free where the
        ids are on the CPU; on an accelerator it would be a host synchronization in every forward (every generated
        token), so there the ids are checked only under ``HF_SEQMODELS_DEBUG=1`` (elsewhere an out-of-range id stops
        at the embedding's device-side assert), as are the kernels' value checks. Never on meta tensors or while
        torch.compile traces. Padding ids are ids like any other: padded batches pass when the pad id is in the
        vocabulary.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`")
        if inputs_embeds is not None:
            width = self.config.hidden_size
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != width:
                raise ValueError(
                    f"`inputs_embeds` must be [batch, seq_len, hidden_size={width}], got shape "
                    f"{list(inputs_embeds.shape)}"
                )
            if inputs_embeds.shape[1] == 0:
                raise ValueError(
                    f"`inputs_embeds` has 0 positions (shape {list(inputs_embeds.shape)}): give at least one position"
                )
            return
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError(f"`input_ids` must hold token ids as torch.long (or int32), got dtype {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError(f"`input_ids` has 0 positions (shape {list(input_ids.shape)}): give at least one token")
        tracing = torch.compiler.is_compiling() if hasattr(torch, "compiler") else False
        device = input_ids.device.type
        if input_ids.numel() and not tracing and device != "meta" and (device == "cpu" or debug_checks_enabled()):
            low, high = torch.aminmax(input_ids)
            low, high, vocab = int(low), int(high), self.config.vocab_size
            if low < 0 or high >= vocab:
                raise ValueError(
                    f"`input_ids` holds token id {low if low < 0 else high} but vocab_size is {vocab} "
                    f"(config field vocab_size): token ids must be in [0, {vocab})"
                )

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
            raise TypeError(f"`{CACHE_KWARG}` must be a hf_seqmodels RecurrentCache, got {type(cache).__name__}")
        if not use_cache:
            return None
        return self.new_cache() if cache is None else cache

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # A local folder in a published format (fla GLA, Liger-GLA: hf_seqmodels.conversion) is converted on load.
        from hf_seqmodels.registry import checkpoint_format_of

        fmt = checkpoint_format_of(args[0]) if args else None
        if fmt is not None:
            return cls._from_published(fmt, *args, **kwargs)
        # safetensors only: a folder or repo with nothing but pytorch_model.bin is refused rather than unpickled
        # (pass use_safetensors=False to opt in to transformers' weights-only unpickling).
        kwargs.setdefault("use_safetensors", True)
        try:
            return super().from_pretrained(*args, **kwargs)
        except OSError as err:
            from hf_seqmodels.hub import pickle_only_message

            why = pickle_only_message(args[0]) if args and kwargs["use_safetensors"] else None
            if why is None:
                raise
            raise OSError(why) from err

    @classmethod
    def _from_published(cls, fmt, path, *args, **kwargs):
        """``from_pretrained`` of a folder in a published checkpoint format: converted (safetensors only) and loaded
        with transformers' own loader (``dtype``, ``device_map``... apply as usual)."""
        from hf_seqmodels.registry import classes_for_config

        where = f"{cls.__name__}.from_pretrained({path!r})"
        if args or "config" in kwargs or "state_dict" in kwargs:
            raise ValueError(
                f"{where}: the folder is a {fmt.description} checkpoint, converted on load; pass no "
                "config, state_dict or other positional arguments"
            )
        if kwargs.pop("use_safetensors", True) is False:
            raise ValueError(f"{where}: a {fmt.description} checkpoint is converted from safetensors weights only")
        converted = fmt.load(path)
        if not isinstance(converted.config, cls.config_class):
            lm_class = classes_for_config(converted.config)[2]
            raise ValueError(
                f"{where}: the folder is a {fmt.description} checkpoint, which converts to "
                f"{lm_class.__name__}, not {cls.__name__}: load it with {lm_class.__name__}"
            )
        model = super().from_pretrained(None, config=converted.config, state_dict=converted.state_dict, **kwargs)
        model.card_data = converted.card_data
        return model

    @property
    def card_data(self) -> dict:
        """Extra model-card fields written by ``save_pretrained`` (``license``, ``base_model`` as a Hub id, ``tags``,
        and ``metric: value`` rows); kept on the model, never in config.json."""
        from hf_seqmodels.hub import card_data_of

        return card_data_of(self)

    @card_data.setter
    def card_data(self, value: dict) -> None:
        from hf_seqmodels.hub import set_card_data

        set_card_data(self, value)

    def save_pretrained(self, save_directory, *args, **kwargs):
        from hf_seqmodels.hub import prepare_auto_map, write_hub_files

        prepare_auto_map(self)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_hub_files(self, save_directory)


class SeqModel(SeqPreTrainedModel):
    """Embeddings, a stack of :class:`DecoderBlock` (mixer + MLP), final RMSNorm.

    Subclasses define ``build_mixer(config, layer_idx)`` (or ``build_block`` for a different block), usually
    ``Mixer.from_config(config, layer_idx)``: every mixer in ``hf_seqmodels.layers`` takes keyword arguments and
    has that classmethod. A mixer is
    called as ``mixer(hidden_states, attention_mask=mask_or_None, cache=RecurrentCache_or_None, position_ids=...)``
    where the mask is the 2-D padding mask of the current tokens (None when nothing is padded); it keeps its decode
    state in the cache under its own ``layer_idx``. The model advances the cache's token count once per forward.
    """

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([self.build_block(config, i) for i in range(config.num_hidden_layers)])
        self.norm = self.build_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def build_norm(self, config) -> nn.Module:
        """The final norm (RMSNorm)."""
        return RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def build_block(self, config, layer_idx: int) -> nn.Module:
        return DecoderBlock(config, self.build_mixer(config, layer_idx))

    def build_mixer(self, config, layer_idx: int) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define build_mixer(config, layer_idx)")

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
        """input_ids ``[B, T]`` (long) or inputs_embeds ``[B, T, hidden_size]``; attention_mask ``[B, past + T]``
        (1 = token); position_ids ``[B, T]``; cache: a RecurrentCache. Returns ``last_hidden_state``
        ``[B, T, hidden_size]`` (the embeddings' dtype), the cache, and per-layer hidden states if asked."""
        cache = pop_cache(cache, kwargs)
        self.check_inputs(input_ids, inputs_embeds)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, T, _ = inputs_embeds.shape
        mask = padding_mask(attention_mask, B, T)
        packed = packed_sequences(B, T, position_ids, kwargs)
        if packed is not None:
            self._check_packed(packed, mask, cache, use_cache)
            use_cache = False
        cache = self.resolve_cache(cache, use_cache)
        extra = {} if packed is None else {"cu_seqlens": packed}
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        hidden_states = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        for block in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states = block(hidden_states, attention_mask=mask, cache=cache, position_ids=position_ids, **extra)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        if cache is not None:
            cache.advance(T)
        out = model_output(hidden_states, cache, tuple(all_hidden) if all_hidden is not None else None)
        return out if resolve_return_dict(return_dict, self.config) else out.to_tuple()

    def _check_packed(self, packed, mask, cache, use_cache):
        """Packed sequences (padding-free batches) need: no padding mask, no cache, and mixers that honour them."""
        if mask is not None:
            raise ValueError(
                "Packed sequences (position_ids restarting at 0, or cu_seq_lens_q) cannot be combined with a padding "
                "`attention_mask` that has zeros: a padding-free batch has no padding"
            )
        if cache is not None or use_cache is True:
            raise ValueError(
                "Packed sequences (position_ids restarting at 0, or cu_seq_lens_q) are for training and scoring; "
                "cached decoding with packed input is not supported: pass use_cache=False and no cache, or run the "
                "sequences as a padded batch"
            )
        for block in self.layers:
            mixer = getattr(block, getattr(block, "mixer_name", "mixer"), None)
            if not getattr(mixer, "supports_packed", False):
                raise ValueError(
                    f"{type(self).__name__}: the token mixer {type(mixer).__name__} does not support packed sequences "
                    "(cu_seqlens); pass a padded batch instead"
                )


#: keyword arguments of transformers' padding-free convention (DataCollatorWithFlattening, flash-attention kwargs)
PACKING_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def packed_sequences(batch_size, seq_len, position_ids, kwargs):
    """The packed-sequence offsets of a padding-free batch (a ``kernels._varlen.Packed``), or None.

    Read, in this order, from ``cu_seq_lens_q`` (and ``cu_seq_lens_k``, which must agree: no key prefix), from
    ``seq_idx`` ``[1, T]``, or from ``position_ids`` of batch 1 that restart (at their first value, 0 with
    DataCollatorWithFlattening) somewhere after the first token and count up by one in between. A single sequence
    gives None (nothing to separate).
    """
    from hf_seqmodels.kernels._varlen import check_cu_seqlens

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None or cu_k is not None:
        if cu_q is None or cu_k is None or not torch.equal(torch.as_tensor(cu_q).cpu(), torch.as_tensor(cu_k).cpu()):
            raise ValueError(
                "`cu_seq_lens_q` and `cu_seq_lens_k` must both be given and equal (no key prefix or cache)"
            )
        packed = check_cu_seqlens("packed sequences", cu_q, batch_size, seq_len, name="cu_seq_lens_q")
    elif kwargs.get("seq_idx") is not None:
        seq_idx = kwargs["seq_idx"]
        if not isinstance(seq_idx, torch.Tensor) or seq_idx.shape != (batch_size, seq_len) or batch_size != 1:
            raise ValueError(
                f"`seq_idx` must be a [1, T] = [1, {seq_len}] tensor of sequence indices, got "
                f"{getattr(seq_idx, 'shape', type(seq_idx).__name__)}"
            )
        ids = seq_idx[0].long()
        if seq_len > 1 and bool((ids[1:] < ids[:-1]).any()):
            raise ValueError("`seq_idx` must be non-decreasing (the sequence of each token, in order)")
        starts = (torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1).tolist()
        packed = check_cu_seqlens("packed sequences", torch.tensor([0, *starts, seq_len]), 1, seq_len, name="seq_idx")
    else:
        if position_ids is None or batch_size != 1 or seq_len < 2 or not isinstance(position_ids, torch.Tensor):
            return None
        pos = position_ids.reshape(-1)
        if pos.numel() != seq_len:
            return None
        restart = pos[1:] != pos[:-1] + 1
        if not bool(restart.any()) or not bool((pos[1:][restart] == pos[0]).all()):
            return None  # consecutive positions (one sequence), or not a restarting pattern
        starts = (torch.nonzero(restart).flatten() + 1).tolist()
        packed = check_cu_seqlens(
            "packed sequences", torch.tensor([0, *starts, seq_len]), 1, seq_len, name="position_ids"
        )
    return packed if packed.N > 1 else None


def resolve_return_dict(return_dict, config) -> bool:
    """Whether a forward returns a ``ModelOutput``: ``return_dict`` when given, else ``config.return_dict``
    (default True). ``False`` gives tuples, as transformers' own models do."""
    return bool(getattr(config, "return_dict", True)) if return_dict is None else bool(return_dict)


def padding_mask(attention_mask, batch_size: int, seq_len: int):
    """The 2-D padding mask of the current tokens ``[B, T]`` (the last ``seq_len`` columns of ``attention_mask``
    ``[B, past + T]``), or None when nothing is padded; any other shape is an error naming it."""
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

    def head_logits(self, hidden_states, logits_to_keep=0):
        """The LM head on the positions ``logits_to_keep`` selects, as transformers' models take it: an int
        ``n > 0``, the last ``n``; a tensor, those indices; 0, every position."""
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        return self.lm_head(hidden_states)

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
        """As :meth:`SeqModel.forward`, plus labels ``[B, T]`` (long, -100 ignored; shifted inside). Returns
        ``logits`` ``[B, T', vocab_size]`` (T' = T or ``logits_to_keep``; the head's dtype), the fp32 ``loss``
        when labels are given, and the cache."""
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
            **{name: kwargs[name] for name in PACKING_KWARGS if name in kwargs},
        )
        logits = self.head_logits(outputs.last_hidden_state, logits_to_keep)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        out = causal_lm_output(loss, logits, getattr(outputs, CACHE_KWARG), outputs.hidden_states)
        return out if resolve_return_dict(return_dict, self.config) else out.to_tuple()
