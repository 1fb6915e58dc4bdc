"""The configuration every linearized Llama-shaped model shares (Liger and Lizard subclass it), and the checks of
its hybrid layout (``softmax_layers``)."""

from hf_seqmodels.kernels.attention import check_window
from hf_seqmodels.layers.checks import check_bool, check_int
from hf_seqmodels.layers.families import get_family
from hf_seqmodels.layers.linearized import check_linear_branch
from hf_seqmodels.models.causal_lm import SeqModelConfig

#: Llama config fields a linearized model keeps (shapes, RoPE, grouped-query heads, special tokens)
LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
)


class LinearizedLlamaConfig(SeqModelConfig):
    """A Llama-shaped decoder whose attention was linearized: every Llama field, the teacher's family and its other
    fields, the window, the layers kept as softmax attention, and the base model's name.

    Args:
        base_model_type: the teacher's decoder family (``hf_seqmodels.layers.families.FAMILIES``: "llama",
            "mistral", "qwen2", "qwen3", "phi3"); its transformers modeling code gives the MLP, norms and RoPE.
        base_config: the teacher config's other fields (e.g. ``sliding_window``, ``layer_types``,
            ``partial_rotary_factor``), kept so that the family's own config can be rebuilt (:meth:`family_config`).
        softmax_layers: indices of layers that keep the teacher's softmax attention (a hybrid layout; with the
            teacher's own sliding window where it has one), the others are linearized. Default: none.
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

    #: the LoRA targets of the papers (Liger and Lizard: r=8 on q, k, v): q_proj, k_proj, v_proj, or the fused
    #: qkv_proj of a Phi-3 teacher (each family's own list: ``config.family.lora_targets``)
    lora_target_modules = ["q_proj", "k_proj", "v_proj", "qkv_proj"]

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
        base_model_type: str = "llama",
        base_config: dict | None = None,
        softmax_layers: list | tuple | None = None,
        **kwargs,
    ):
        for name in ("rope_theta", "rope_scaling", "pretraining_tp", "attention_dropout"):
            kwargs.pop(name, None)  # legacy or unused Llama fields: RoPE comes from rope_parameters
        where = type(self).__name__
        get_family(base_model_type, f"{where}.base_model_type")  # an unsupported family is named here
        if base_config is not None and not isinstance(base_config, dict):
            raise TypeError(
                f"{where}: base_config must be a dict of the teacher config's fields or None, got "
                f"{type(base_config).__name__}"
            )
        self.base_model_type = base_model_type
        self.base_config = dict(base_config or {})
        check_int(where, "num_attention_heads", num_attention_heads)
        check_int(where, "num_key_value_heads", num_key_value_heads, allow_none=True)
        check_int(where, "head_dim", head_dim, allow_none=True)
        check_int(where, "max_position_embeddings", max_position_embeddings)
        check_bool(where, "attention_bias", attention_bias)
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        super().__init__(**kwargs)
        self.head_dim = head_dim or self.hidden_size // num_attention_heads
        if self.head_dim < 1:
            raise ValueError(
                f"{where}: hidden_size ({self.hidden_size}) // num_attention_heads "
                f"({num_attention_heads}) is 0; pass head_dim or fewer heads"
            )
        self.max_position_embeddings = max_position_embeddings
        self.rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        self.rope_parameters.setdefault("rope_type", "default")
        rotary = self.rope_parameters.get("partial_rotary_factor", self.base_config.get("partial_rotary_factor", 1.0))
        if self.head_dim % 2 and int(self.head_dim * rotary) == self.head_dim:
            derived = "" if head_dim else f" (hidden_size {self.hidden_size} // num_attention_heads; pass head_dim)"
            raise ValueError(
                f"{where}: head_dim must be even, RoPE turns pairs of dimensions; got {self.head_dim}{derived}"
            )
        self.attention_bias = attention_bias
        self.window_size = window_size
        self.gate_logit_normalizer = gate_logit_normalizer
        check_linear_branch(where, getattr(self, "gla_weight", None), gate_logit_normalizer, gla_scale)
        self.gla_scale = gla_scale
        self.base_model_name_or_path = base_model_name_or_path
        self.card_data = dict(card_data or {})
        check_window(type(self).__name__, window_size, "window_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{type(self).__name__}: num_attention_heads ({num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        self.softmax_layers = check_softmax_layers(where, softmax_layers, self.num_hidden_layers)

    @property
    def family(self):
        """The teacher's :class:`~hf_seqmodels.layers.families.DecoderFamily`."""
        return get_family(self.base_model_type, type(self).__name__)

    def family_config(self):
        """The teacher family's own transformers config (e.g. a ``Qwen3Config``) with this model's fields: what
        transformers' rotary embedding, MLP and norm classes of the family are built from."""
        fields = {name: getattr(self, name) for name in LLAMA_FIELDS if hasattr(self, name)}
        return self.family.config_class()(**{**self.base_config, **fields})


def check_softmax_layers(where: str, layers, num_layers: int) -> list[int]:
    """``softmax_layers``: distinct layer indices in ``[0, num_layers)`` (None: none), returned sorted."""
    if layers is None:
        return []
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"{where}: softmax_layers must be a list of layer indices or None, got {layers!r}")
    layers = list(layers)
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"{where}: softmax_layers must hold layer indices in [0, {num_layers}) "
            f"(num_hidden_layers={num_layers}), got {bad}"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"{where}: softmax_layers has repeated indices: {layers}")
    return sorted(layers)


def every_kth_layer(num_layers: int, k: int) -> list[int]:
    """Layers ``k-1, 2k-1, ...``: every ``k``-th layer kept as softmax attention (k=4 with 30 layers: 3, 7, ..., 27)."""
    check_int("every_kth_layer", "k", k)
    return list(range(k - 1, num_layers, k))
