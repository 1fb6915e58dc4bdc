from hf_seqmodels.layers.s4d import s4d_dims
from hf_seqmodels.models.causal_lm import SeqModelConfig


class S4DConfig(SeqModelConfig):
    """S4D (Gu et al., 2022): a diagonal state-space token mixer (complex diagonal ``A``, zero-order hold, ``D`` skip,
    GELU, ``Linear(H, 2H)`` + GLU output) and a SwiGLU MLP in every block.

    Args:
        d_state: real state size per channel; the layer keeps ``d_state / 2`` complex states per channel (even;
            reference: 64).
        ssm_init: initialisation of ``A``: ``"lin"`` (S4D-Lin, ``A_n = -1/2 + i pi n``) or ``"legs"`` (S4D-LegS: the
            diagonal of HiPPO-LegS's normal-plus-low-rank form, as LSSL / S4; its ``B`` folded into ``C``).
        dt_min / dt_max: the step ``dt`` is initialised log-uniform in ``[dt_min, dt_max]`` per channel (reference:
            1e-3, 1e-1).
    Shared fields (vocab, depth, MLP, norms, embeddings tying) are those of :class:`SeqModelConfig`. Train with
    :func:`hf_seqmodels.training.s4d_parameter_groups` (``dt`` and ``A`` at ``lr <= 1e-3``, no weight decay).
    """

    model_type = "hf_seqmodels_s4d"
    #: the documented default LoRA targets (PEFT ``LoraConfig(target_modules=...)``): the mixer's output projection
    lora_target_modules = ["output_linear"]

    def __init__(
        self,
        d_state: int = 64,
        ssm_init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        **kwargs,
    ):
        self.d_state = d_state
        self.ssm_init = ssm_init
        self.dt_min = dt_min
        self.dt_max = dt_max
        super().__init__(**kwargs)
        s4d_dims(type(self).__name__, self.hidden_size, d_state, ssm_init, dt_min, dt_max)
