from hf_seqmodels.models.causal_lm import SeqModelConfig


class GLAConfig(SeqModelConfig):
    """Gated Linear Attention (Yang et al., 2023): a GLA token mixer and a SwiGLU MLP in every block.

    Args:
        num_heads: heads of the GLA mixer.
        expand_k / expand_v: key / value width as a multiple of ``hidden_size`` (paper: 0.5 and 1).
        gate_low_rank_dim: rank of the forget-gate projection ``x -> Linear(d, r) -> Linear(r, K)`` (paper: 16).
        gate_logit_normalizer: the log-gate is ``logsigmoid(.) / gate_logit_normalizer`` (paper: 16).
        use_short_conv / conv_size: causal depthwise convolutions on q, k, v.
    Shared fields (vocab, depth, MLP, norms, embeddings tying) are those of :class:`SeqModelConfig`.
    """

    model_type = "hf_seqmodels_gla"
    #: the documented default LoRA targets (PEFT ``LoraConfig(target_modules=...)``): the mixer's projections
    lora_target_modules = ["q_proj", "k_proj", "v_proj", "g_proj", "o_proj"]

    def __init__(
        self,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        use_short_conv: bool = False,
        conv_size: int = 4,
        **kwargs,
    ):
        self.num_heads = num_heads
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.gate_low_rank_dim = gate_low_rank_dim
        self.gate_logit_normalizer = gate_logit_normalizer
        if not isinstance(gate_logit_normalizer, (int, float)) or not gate_logit_normalizer > 0:
            raise ValueError(f"{type(self).__name__}.gate_logit_normalizer must be a number > 0 (log gates are "
                             f"logsigmoid(.) / gate_logit_normalizer), got {gate_logit_normalizer!r}")
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        super().__init__(**kwargs)
        hidden = self.hidden_size
        if int(hidden * expand_k) % num_heads or int(hidden * expand_v) % num_heads:
            raise ValueError(
                f"GLAConfig: hidden_size*expand_k ({hidden * expand_k}) and hidden_size*expand_v ({hidden * expand_v}) "
                f"must be divisible by num_heads ({num_heads})"
            )
