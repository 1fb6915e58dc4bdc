from hf_seqmodels.models.linearized import LinearizedLlamaConfig


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
