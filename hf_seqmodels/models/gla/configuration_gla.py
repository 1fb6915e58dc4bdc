from hf_seqmodels.layers.checks import check_bool, check_int, check_number
from hf_seqmodels.layers.gla import gla_dims
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
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        super().__init__(**kwargs)
        where = type(self).__name__
        gla_dims(where, self.hidden_size, num_heads, expand_k, expand_v)  # the layer's own shape check
        check_int(where, "gate_low_rank_dim", gate_low_rank_dim)
        check_number(where, "gate_logit_normalizer", gate_logit_normalizer)  # log gates: logsigmoid(.) / it
        check_bool(where, "use_short_conv", use_short_conv)
        check_int(where, "conv_size", conv_size)
