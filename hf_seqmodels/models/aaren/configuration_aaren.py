from hf_seqmodels.layers.aaren import aaren_dims
from hf_seqmodels.models.causal_lm import SeqModelConfig


class AarenConfig(SeqModelConfig):
    """Aaren, attention as an RNN (Feng et al., 2024): a stack of blocks whose token mixer is multi-head Aaren (a
    learned query per head attending over every prefix, computed by a parallel scan; a constant-size state when
    decoding) and a SwiGLU MLP, stacked as a Transformer stacks attention.

    Args:
        num_heads: heads of the Aaren mixer (one learned query each).
        head_dim: width of a head's keys and values; None for ``hidden_size // num_heads``.
    Shared fields (vocab, depth, MLP, norms, embeddings tying) are those of :class:`SeqModelConfig`.
    """

    model_type = "hf_seqmodels_aaren"
    #: the documented default LoRA targets (PEFT ``LoraConfig(target_modules=...)``): the mixer's projections
    lora_target_modules = ["k_proj", "v_proj", "o_proj"]

    def __init__(self, num_heads: int = 4, head_dim: int | None = None, **kwargs):
        self.num_heads = num_heads
        self.head_dim = head_dim
        super().__init__(**kwargs)
        aaren_dims(type(self).__name__, self.hidden_size, num_heads, head_dim)  # the layer's own shape check
