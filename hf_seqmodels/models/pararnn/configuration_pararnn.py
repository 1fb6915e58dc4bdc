from hf_seqmodels.kernels.pararnn import check_newton_options
from hf_seqmodels.layers.checks import check_bool, check_choice, check_int, check_number
from hf_seqmodels.layers.conv import CONV_INITS
from hf_seqmodels.layers.pararnn import RECURRENT_INITS, check_cell_name, check_mode, pararnn_shape
from hf_seqmodels.models.causal_lm import SeqModelConfig


class ParaRNNConfig(SeqModelConfig):
    """ParaRNN language model (Danieli et al., 2025): nonlinear RNN cells with diagonal recurrent weights, trained in
    parallel over the sequence by Newton's method.

    Args:
        cell: ``"gru"`` (ParaGRU), ``"lstm"`` (ParaLSTM, CIFG with peepholes) or a name given to ``register_cell``.
        state_size: units of the cell (default: ``hidden_size``).
        num_heads: groups of the gated RMSNorm on the cell output.
        use_short_conv / conv_size: causal depthwise convolution before the cell.
        mode: ``"auto"`` (default: the faster solve for each forward, below), ``"parallel"`` (Newton + parallel
            scans, adjoint backward) or ``"sequential"`` (step by step, autograd through the loop); all three give the
            same result. ``"auto"`` solves by Newton off the CPU (the fused solver). On the CPU, when a step updates
            >= 256 state elements (batch x state_size, x 2 for ParaLSTM), it solves step by step (a fused loop of the
            built-in cell, no graph), and when gradients flow (training) adds Newton's adjoint backward to that
            forward (one reverse scan: cheaper than Newton's iterations, and than autograd through the loop); by
            Newton below 256, where the loop's per-step overhead dominates. Measured (``python -m
            benchmarks.pararnn_auto``, 1 CPU thread, a loaded machine, so indicative), step-by-step / Newton time
            without gradients, cells at T 512: ParaGRU 2.7-2.9 up to 64 state elements, 1.8-2.7 at 128, 1.1 at 256,
            0.70 at 512, 0.37 at 1024; ParaLSTM 4.1 at 32, 1.6 at 128, 0.8 at 256, 0.25-0.43 at 512, 0.11-0.24
            above; the ParaGRU mixer at B 4, d 256: 0.50-0.61 at T 64-1024. Training figures: BENCHMARKS.md.
        newton_tol / newton_max_iter: convergence threshold (relative residual; None = by dtype) and iteration cap.
        newton_on_fail: ``"fallback"`` (warn, solve sequentially) or ``"raise"`` when Newton does not converge.
        conv_init: ``"identity"`` (default: the short convolution starts by passing the current input through) or
            ``"normal"`` (transformers' normal(0, initializer_range), as fla's models, and what earlier versions
            did). With the normal init the cell's input is ~50x smaller than the block's, its gates see almost no
            input, and 1-layer ParaGRU / ParaLSTM stayed at chance on parity at length 32 (see BENCHMARKS.md, state
            tracking).
        recurrent_init: the diagonal recurrent weights' init, ``"xavier_clipped"`` (default: Xavier-normal, each
            vector's norm clipped to 0.5, as the paper), ``"xlstm"`` (the reference library: N(0, (2 / sqrt(5 D))^2))
            or ``"uniform"`` (U(-0.9, 0.9) per element, the reference library's uniform option). For state tracking
            (parity, cycle navigation, modular arithmetic) use ``"uniform"``: the two others start every ``|a|``
            below ~0.3 at D 64 (less at larger D), a parity flip needs ``|a| > 1`` on some unit, and 1-layer
            ParaLSTM then learned parity at length 32 in 2 of 6 runs against 4 of 4 (BENCHMARKS.md, state tracking).
            The larger weights cost Newton iterations (cycle navigation at length 100: 5.5 per solve and some
            sequential fallbacks while learning, against 3.0 and none with ``"xavier_clipped"``).
        recurrent_clip: None, or a bound on ``|a|`` applied elementwise in every step (the paper clips at 0.9 on
            its synthetic tasks except parity).
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
        mode: str = "auto",
        newton_tol: float | None = None,
        newton_max_iter: int = 10,
        newton_on_fail: str = "fallback",
        conv_init: str = "identity",
        recurrent_init: str = "xavier_clipped",
        recurrent_clip: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        where = type(self).__name__
        state_size = state_size if state_size is not None else self.hidden_size
        # the layer's own checks, run here so that a bad field fails when the config is made
        check_cell_name(where, cell, registered=True)
        pararnn_shape(where, self.hidden_size, state_size, num_heads)
        check_bool(where, "use_short_conv", use_short_conv)
        check_int(where, "conv_size", conv_size)
        check_mode(where, mode)
        check_newton_options(where, newton_tol, newton_max_iter, newton_on_fail, prefix="newton_")
        check_choice(where, "conv_init", conv_init, CONV_INITS)
        check_choice(where, "recurrent_init", recurrent_init, RECURRENT_INITS)
        check_number(where, "recurrent_clip", recurrent_clip, allow_none=True)
        self.cell = cell
        self.state_size = state_size
        self.num_heads = num_heads
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.mode = mode
        self.newton_tol = newton_tol
        self.newton_max_iter = newton_max_iter
        self.newton_on_fail = newton_on_fail
        self.conv_init = conv_init
        self.recurrent_init = recurrent_init
        self.recurrent_clip = recurrent_clip
