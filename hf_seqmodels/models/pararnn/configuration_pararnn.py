from hf_seqmodels.models.causal_lm import SeqModelConfig

MODES = ("parallel", "sequential")
ON_FAIL = ("fallback", "raise")


class ParaRNNConfig(SeqModelConfig):
    """ParaRNN language model (Danieli et al., 2025): nonlinear RNN cells with diagonal recurrent weights, trained in
    parallel over the sequence by Newton's method.

    Args:
        cell: ``"gru"`` (ParaGRU), ``"lstm"`` (ParaLSTM, CIFG with peepholes) or a name given to ``register_cell``.
        state_size: units of the cell (default: ``hidden_size``).
        num_heads: groups of the gated RMSNorm on the cell output.
        use_short_conv / conv_size: causal depthwise convolution before the cell.
        mode: ``"parallel"`` (Newton + parallel scans) or ``"sequential"`` (step by step; same result).
        newton_tol / newton_max_iter: convergence threshold (relative residual; None = by dtype) and iteration cap.
        newton_on_fail: ``"fallback"`` (warn, solve sequentially) or ``"raise"`` when Newton does not converge.
    """

    model_type = "hf_seqmodels_pararnn"
    lora_target_modules = ["in_proj", "g_proj", "o_proj"]

    def __init__(
        self,
        cell: str = "gru",
        state_size: int | None = None,
        num_heads: int = 1,
        use_short_conv: bool = True,
        conv_size: int = 4,
        mode: str = "parallel",
        newton_tol: float | None = None,
        newton_max_iter: int = 10,
        newton_on_fail: str = "fallback",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.cell = cell
        self.state_size = state_size if state_size is not None else self.hidden_size
        self.num_heads = num_heads
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.mode = mode
        self.newton_tol = newton_tol
        self.newton_max_iter = newton_max_iter
        self.newton_on_fail = newton_on_fail
        if mode not in MODES:
            raise ValueError(f"ParaRNNConfig.mode must be one of {MODES}, got {mode!r}")
        if newton_on_fail not in ON_FAIL:
            raise ValueError(f"ParaRNNConfig.newton_on_fail must be one of {ON_FAIL}, got {newton_on_fail!r}")
        if self.state_size % num_heads:
            raise ValueError(f"ParaRNNConfig.state_size ({self.state_size}) must be divisible by num_heads ({num_heads})")
