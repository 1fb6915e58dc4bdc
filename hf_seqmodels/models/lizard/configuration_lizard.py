from hf_seqmodels.layers.lizard import check_lizard_options
from hf_seqmodels.models.linearized import LinearizedLlamaConfig


class LizardConfig(LinearizedLlamaConfig):
    """Lizard (arXiv 2507.09025): a Llama whose attention is GLA with learned Hedgehog feature maps and a learned
    gate, plus sliding-window attention with learned sink logits, mixed by a learned per-head weight.

    Args:
        window_size: default 128 (the paper's).
        feature_dim: Hedgehog projection width per head (None: head_dim); the linear branch's key size is twice it.
        num_sinks: learned "meta-memory" sink logits per head in the window's softmax denominator (paper: 4).
        sink_init: initial value of the sink logits.
    Other fields: :class:`LinearizedLlamaConfig`.
    """

    model_type = "hf_seqmodels_lizard"

    def __init__(
        self,
        window_size: int = 128,
        feature_dim: int | None = None,
        num_sinks: int = 4,
        sink_init: float = -4.0,
        **kwargs,
    ):
        check_lizard_options(type(self).__name__, feature_dim, num_sinks, sink_init)
        self.feature_dim = feature_dim
        self.num_sinks = num_sinks
        self.sink_init = float(sink_init)
        super().__init__(window_size=window_size, **kwargs)
