from hf_seqmodels.layers.checks import check_bool, check_choice, check_int
from hf_seqmodels.layers.plstm import TRANSITION_MODES, plstm_dims
from hf_seqmodels.models.causal_lm import SeqModelConfig


class PLSTMConfig(SeqModelConfig):
    """pLSTM, one-dimensional (Poeppel et al., 2025): a pLSTM token mixer (source, transition, mark and direct gates,
    a dense ``JT x JT`` transition on the state) and a SwiGLU MLP in every block.

    Args:
        num_heads: heads of the mixer.
        head_k_dim / head_v_dim: query-key and value width per head.
        transition_dim: ``JT``, the state's channels mixed by the transition (the reference's state-tracking
            dimension); the state per head is ``[JT, head_k_dim, head_v_dim]``.
        source_dim / mark_dim: ``JV`` / ``JO``, the value's and the output's channels (reference: ``JV``, ``JO``).
        transition_mode: ``"P"`` (propagation: dense transitions whose absolute column sums are below one) or
            ``"D"`` (diffusion: diagonal transitions bounded by tanh); see :func:`~hf_seqmodels.layers.plstm.
            plstm_transition`.
        use_short_conv / conv_size: causal depthwise convolutions on q, k, v.
        chunk_size: steps per chunk of the chunked computation (a speed setting; results do not depend on it).
    Shared fields (vocab, depth, MLP, norms, embeddings tying) are those of :class:`SeqModelConfig`.
    """

    model_type = "hf_seqmodels_plstm"
    #: the documented default LoRA targets (PEFT ``LoraConfig(target_modules=...)``): the mixer's projections
    lora_target_modules = ["q_proj", "k_proj", "v_proj", "g_proj", "o_proj"]

    def __init__(
        self,
        num_heads: int = 4,
        head_k_dim: int = 16,
        head_v_dim: int = 16,
        transition_dim: int = 4,
        source_dim: int = 1,
        mark_dim: int = 1,
        transition_mode: str = "P",
        use_short_conv: bool = False,
        conv_size: int = 4,
        chunk_size: int = 32,
        **kwargs,
    ):
        self.num_heads = num_heads
        self.head_k_dim = head_k_dim
        self.head_v_dim = head_v_dim
        self.transition_dim = transition_dim
        self.source_dim = source_dim
        self.mark_dim = mark_dim
        self.transition_mode = transition_mode
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.chunk_size = chunk_size
        super().__init__(**kwargs)
        where = type(self).__name__
        plstm_dims(
            where, self.hidden_size, num_heads, head_k_dim, head_v_dim, transition_dim, source_dim, mark_dim
        )  # the layer's own shape check
        check_choice(where, "transition_mode", transition_mode, TRANSITION_MODES)
        check_bool(where, "use_short_conv", use_short_conv)
        check_int(where, "conv_size", conv_size)
        check_int(where, "chunk_size", chunk_size)
