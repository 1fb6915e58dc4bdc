from hf_seqmodels.layers.checks import check_number
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
        # checked here too: LinearizedLlamaConfig's check of the linear branch reads None as Lizard's "no gla_weight"
        check_number(type(self).__name__, "gla_weight", gla_weight, positive=False, minimum=0.0, maximum=1.0)
        self.gla_weight = gla_weight
        super().__init__(window_size=window_size, **kwargs)
        self.gla_weight = float(gla_weight)
