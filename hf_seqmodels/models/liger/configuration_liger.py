from hf_seqmodels.kernels.attention import check_window
from hf_seqmodels.layers.checks import check_int
from hf_seqmodels.layers.liger import check_liger_options
from hf_seqmodels.models.causal_lm import SeqModelConfig

#: Llama config fields a linearized model keeps (shapes, RoPE, grouped-query heads, special tokens)
LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_parameters", "attention_bias",
    "mlp_bias",
)


class LinearizedLlamaConfig(SeqModelConfig):
    """A Llama whose attention was linearized: every Llama field, the window, and the base model's name.

    Args:
        num_attention_heads / num_key_value_heads / head_dim: Llama's (grouped-query) attention shape.
        max_position_embeddings / rope_parameters: Llama's RoPE, used on the sliding-window branch.
        attention_bias: biases on q, k, v, o projections (as in Llama).
        window_size: keys each query sees in the sliding-window branch, itself included (query ``t`` attends to
            ``t - window_size < j <= t``). Must be > 0.
        gate_logit_normalizer: log forget gates are ``logsigmoid(.) / gate_logit_normalizer``.
        gla_scale: score scale of the linear branch (None: ``feature size ** -0.5`` as in fla's ``chunk_gla``).
        base_model_name_or_path: the Llama checkpoint this model was converted from.
        card_data: extra model-card fields (method, base model, perplexities) written by ``save_pretrained``.
    """

    #: the LoRA targets of the papers (Liger and Lizard: r=8 on q, k, v)
    lora_target_modules = ["q_proj", "k_proj", "v_proj"]

    def __init__(
        self,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 2048,
        rope_parameters: dict | None = None,
        attention_bias: bool = False,
        window_size: int = 64,
        gate_logit_normalizer: float = 16.0,
        gla_scale: float | None = None,
        base_model_name_or_path: str | None = None,
        card_data: dict | None = None,
        **kwargs,
    ):
        for name in ("rope_theta", "rope_scaling", "pretraining_tp", "attention_dropout"):
            kwargs.pop(name, None)  # legacy or unused Llama fields: RoPE comes from rope_parameters
        where = type(self).__name__
        check_int(where, "num_attention_heads", num_attention_heads)
        check_int(where, "num_key_value_heads", num_key_value_heads, allow_none=True)
        check_int(where, "head_dim", head_dim, allow_none=True)
        check_int(where, "max_position_embeddings", max_position_embeddings)
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        super().__init__(**kwargs)
        self.head_dim = head_dim or self.hidden_size // num_attention_heads
        if self.head_dim < 1:
            raise ValueError(f"{where}: hidden_size ({self.hidden_size}) // num_attention_heads "
                             f"({num_attention_heads}) is 0; pass head_dim or fewer heads")
        self.max_position_embeddings = max_position_embeddings
        self.rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        self.rope_parameters.setdefault("rope_type", "default")
        self.attention_bias = attention_bias
        self.window_size = window_size
        self.gate_logit_normalizer = gate_logit_normalizer
        check_liger_options(where, getattr(self, "gla_weight", None), gate_logit_normalizer, gla_scale)
        self.gla_scale = gla_scale
        self.base_model_name_or_path = base_model_name_or_path
        self.card_data = dict(card_data or {})
        check_window(type(self).__name__, window_size, "window_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{type(self).__name__}: num_attention_heads ({num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )


class LigerConfig(LinearizedLlamaConfig):
    """Liger (arXiv 2503.01496): a Llama with Liger Attention, no parameters beyond Llama's.

    Args:
        gla_weight: ``o = gla_weight * o_gla + (1 - gla_weight) * o_window`` (paper: 0.5; 0 = window only).
        window_size: default 64 (the paper's).
    Other fields: :class:`LinearizedLlamaConfig`.
    """

    model_type = "hf_seqmodels_liger"

    def __init__(self, gla_weight: float = 0.5, window_size: int = 64, **kwargs):
        self.gla_weight = gla_weight  # checked with the linear branch's other fields by LinearizedLlamaConfig
        super().__init__(window_size=window_size, **kwargs)
        self.gla_weight = float(gla_weight)
