"""Configuration of the recurrent-depth language model (Geiping et al., 2025, "Scaling up Test-Time Compute with
Latent Reasoning": Huginn-0125), with the field names of its published ``config.json``."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from hf_seqmodels.layers.checks import check_bool, check_choice, check_int, check_number

#: training-time depth distributions of ``sampling_scheme`` (names of the reference's training code)
SAMPLING_SCHEMES = ("poisson-lognormal-filling", "fixed")
#: noise schedules of ``test_time_noise_type`` (the reference's ``_maybe_inject_noise``)
NOISE_TYPES = ("fixed", "geom", "sqrt", "line", "chi")

# Fields of a published Huginn config.json that name the one variant implemented here: any other value is refused.
_FIXED_FIELDS = {
    "block_class_name": "SandwichBlock",
    "norm_class_name": "RMSNorm_llama",
    "mlp_class_name": "GatedMLP",
    "nonlin_name": "SiLU",
    "injection_type": "linear",
    "state_init": "like-init",
}
# Fields of a published config.json derived from the others (recomputed, never read).
_DERIVED_FIELDS = ("head_dim", "effective_expected_depth", "init_values", "padded_vocab_size")

#: Huginn-0125's shape (tomg-group-umd/huginn-0125): 3.5B parameters, 55 heads of 96, 2 + 4 x 32 + 2 layers
HUGINN_0125 = dict(
    vocab_size=65536,
    n_embd=5280,
    n_heads=55,
    intermediate_size=17920,
    n_layers_in_prelude=2,
    n_layers_in_recurrent_block=4,
    n_layers_in_coda=2,
    mean_recurrence=32,
    mean_backprop_depth=8,
    block_size=4096,
    rope_base=50000.0,
    norm_eps=1e-6,
    qk_bias=True,
    bias=False,
    tie_embeddings=True,
)
#: Huginn-0125's special tokens (its tokenizer's <|begin_text|>, <|end_text|> and <|pad|>)
HUGINN_0125_TOKENS = dict(bos_token_id=65504, eos_token_id=65505, pad_token_id=65509)


class RecurrentDepthConfig(PretrainedConfig):
    """A recurrent-depth decoder: a prelude of ``n_layers_in_prelude`` blocks embeds the tokens, a core of
    ``n_layers_in_recurrent_block`` blocks is applied ``num_steps`` times to a latent state (started from noise,
    re-fed the embedding through ``adapter`` on ``[state; embedding]`` at every step), and a coda of
    ``n_layers_in_coda`` blocks decodes it. Every block is a "sandwich" pre/post-RMSNorm attention + gated-MLP block.

    Args:
        vocab_size: tokens (the embedding and head rows).
        n_embd (``hidden_size``): the width. n_heads (``num_attention_heads``): attention heads (of ``n_embd /
            n_heads``); key/value heads are as many.
        intermediate_size: the gated MLP's hidden width (``fc`` maps to twice that).
        n_layers_in_prelude / n_layers_in_recurrent_block / n_layers_in_coda: blocks in each part.
        n_layers (``num_hidden_layers``): their sum, informative (None: computed; a different value is an error).
        mean_recurrence: core iterations at inference (the forward's ``num_steps`` default) and the mean of the
            training-time depth distribution.
        mean_backprop_depth: iterations that get gradients in training (the last ones of a sampled depth).
        sampling_scheme: the training depth: ``"poisson-lognormal-filling"`` (Huginn's: ``1 + Poisson(LogNormal)``
            with mean ``mean_recurrence + 1``) or ``"fixed"`` (always ``mean_recurrence``, deterministic).
        block_size: the longest sequence (RoPE positions).
        rope_base: RoPE base; rotation of interleaved pairs ``(x[2i], x[2i+1])``.
        norm_eps: RMSNorm epsilon. qk_bias: a learned bias on queries and keys (added before RoPE).
        bias: a bias on the adapter. tie_embeddings (``tie_word_embeddings``): the head shares the embedding.
        test_time_noise / test_time_noise_type: noise mixed into the state before each core step (0: none), one of
            :data:`NOISE_TYPES` (the reference's schedules).
        init_scale: scale of the latent state's random init (the forward's ``init_scale`` default; 0 starts from
            zeros, deterministic).
        act_threshold: None (default), no ACT; a number in (0, 1]: Adaptive Computation Time over the core steps
            (Universal Transformers; :mod:`.act`, tensor2tensor's semantics): a halting unit on the state decides per
            position when to stop, the output is the halting-weighted blend of the states, at most ``num_steps``
            steps (all with gradients: the truncated depth does not combine with ACT's halting gradients). Decodes
            without a KV cache (positions halt at different steps).
        act_loss_weight: the ponder cost's weight in the loss (t2t's ``act_loss_weight``, default 0.01).
        initializer_range: None, the reference's init (truncated normal, std ``sqrt(2 / (5 n_embd))``, the output
            projections divided by ``sqrt(2 * effective depth)``); a number, that std for every weight matrix.
    """

    model_type = "hf_seqmodels_recurrent_depth"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "tie_embeddings": "tie_word_embeddings",  # one field, so setting either name unties both
    }
    #: the documented default LoRA targets: attention and MLP projections of every block, and the adapter
    lora_target_modules = ["Wqkv", "proj", "fc", "adapter"]

    def __init__(
        self,
        vocab_size: int = 256,
        n_embd: int = 64,
        n_heads: int = 4,
        intermediate_size: int = 128,
        n_layers_in_prelude: int = 1,
        n_layers_in_recurrent_block: int = 2,
        n_layers_in_coda: int = 1,
        n_layers: int | None = None,
        mean_recurrence: int = 4,
        mean_backprop_depth: int = 2,
        sampling_scheme: str = "poisson-lognormal-filling",
        block_size: int = 4096,
        rope_base: float = 50000.0,
        norm_eps: float = 1e-6,
        qk_bias: bool = True,
        bias: bool = False,
        tie_embeddings: bool = True,
        test_time_noise: float = 0.0,
        test_time_noise_type: str = "fixed",
        init_scale: float = 1.0,
        initializer_range: float | None = None,
        act_threshold: float | None = None,
        act_loss_weight: float = 0.01,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        where = type(self).__name__
        # transformers' names of three fields (``attribute_map``), as a published config.json may spell them
        n_embd = kwargs.pop("hidden_size", n_embd)
        n_heads = kwargs.pop("num_attention_heads", n_heads)
        n_layers = kwargs.pop("num_hidden_layers", n_layers)
        for name, value in _FIXED_FIELDS.items():
            if name in kwargs and kwargs.pop(name) != value:
                raise ValueError(f"{where}.{name} must be {value!r} (the only variant implemented)")
        for name in _DERIVED_FIELDS:
            kwargs.pop(name, None)
        kv_heads = kwargs.pop("num_key_value_heads", None)
        tie_embeddings = kwargs.pop("tie_word_embeddings", tie_embeddings)
        for name in ("vocab_size", "n_embd", "n_heads", "intermediate_size", "block_size", "mean_recurrence"):
            check_int(where, name, locals()[name])
        for name in ("n_layers_in_prelude", "n_layers_in_recurrent_block", "n_layers_in_coda", "mean_backprop_depth"):
            check_int(where, name, locals()[name], minimum=0)
        if n_embd % n_heads or (n_embd // n_heads) % 2:
            raise ValueError(
                f"{where}.n_embd ({n_embd}) must be n_heads ({n_heads}) times an even head width (RoPE rotates pairs)"
            )
        if kv_heads is not None and kv_heads != n_heads:
            raise ValueError(f"{where}.num_key_value_heads must equal n_heads ({n_heads}), got {kv_heads}")
        total = n_layers_in_prelude + n_layers_in_recurrent_block + n_layers_in_coda
        if n_layers is not None and n_layers != total:
            raise ValueError(
                f"{where}.n_layers (num_hidden_layers) must be n_layers_in_prelude + n_layers_in_recurrent_block + "
                f"n_layers_in_coda = {total}, got {n_layers}"
            )
        check_number(where, "rope_base", rope_base)
        check_number(where, "norm_eps", norm_eps)
        check_number(where, "test_time_noise", test_time_noise, positive=False, minimum=0.0)
        check_number(where, "init_scale", init_scale, positive=False, minimum=0.0)
        check_number(where, "initializer_range", initializer_range, allow_none=True)
        check_number(where, "act_threshold", act_threshold, maximum=1.0, allow_none=True)
        check_number(where, "act_loss_weight", act_loss_weight, positive=False, minimum=0.0)
        check_choice(where, "test_time_noise_type", test_time_noise_type, NOISE_TYPES)
        check_choice(where, "sampling_scheme", sampling_scheme, SAMPLING_SCHEMES)
        for name in ("qk_bias", "bias", "tie_embeddings", "use_cache"):
            check_bool(where, name, locals()[name])
        self.vocab_size = vocab_size
        self.n_embd = n_embd
        self.n_heads = n_heads
        self.intermediate_size = intermediate_size
        self.n_layers_in_prelude = n_layers_in_prelude
        self.n_layers_in_recurrent_block = n_layers_in_recurrent_block
        self.n_layers_in_coda = n_layers_in_coda
        self.n_layers = total
        self.mean_recurrence = mean_recurrence
        self.mean_backprop_depth = mean_backprop_depth
        self.sampling_scheme = sampling_scheme
        self.block_size = block_size
        self.rope_base = float(rope_base)
        self.norm_eps = norm_eps
        self.qk_bias = qk_bias
        self.bias = bias
        self.test_time_noise = test_time_noise
        self.test_time_noise_type = test_time_noise_type
        self.init_scale = init_scale
        self.initializer_range = initializer_range
        self.act_threshold = act_threshold
        self.act_loss_weight = act_loss_weight
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.n_heads

    @property
    def effective_expected_depth(self) -> int:
        """Blocks applied at the mean depth: prelude + coda + core x mean_recurrence (the reference's init uses it)."""
        return (
            self.n_layers_in_prelude + self.n_layers_in_coda + self.n_layers_in_recurrent_block * self.mean_recurrence
        )

    @property
    def init_std(self) -> float:
        """The reference's base std ``sqrt(2 / (5 n_embd))``: weights, and the latent state's init (times
        ``sqrt(n_embd)``)."""
        return math.sqrt(2 / (5 * self.n_embd))

    @property
    def emb_scale(self) -> float:
        """The embedding's scale ``sqrt(n_embd)``."""
        return math.sqrt(self.n_embd)

    @classmethod
    def huginn_0125(cls, **kwargs) -> RecurrentDepthConfig:
        """Huginn-0125's shape (:data:`HUGINN_0125`) and special tokens, fields overridable."""
        return cls(**{**HUGINN_0125, **HUGINN_0125_TOKENS, **kwargs})


class HuginnRavenConfig(RecurrentDepthConfig):
    """The published Huginn config (``model_type "huginn_raven"``): a Huginn folder loads with the Auto classes
    after ``import hf_seqmodels``, without remote code, into the same model classes. Defaults: Huginn-0125's shape
    (no special tokens, as the reference's ``RavenConfig``)."""

    model_type = "huginn_raven"

    def __init__(self, **kwargs):
        super().__init__(**{**HUGINN_0125, **kwargs})
