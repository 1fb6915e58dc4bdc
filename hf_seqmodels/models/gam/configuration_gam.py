from hf_seqmodels.layers.checks import check_int
from hf_seqmodels.models.causal_lm import SeqModelConfig


class GAMConfig(SeqModelConfig):
    """Gated Associative Memory (arXiv 2509.00605; reference rishiraj/gam): pre-LayerNorm blocks whose token mixer
    fuses a causal depthwise convolution (local) and retrieval ``softmax(h M^T) M`` from a learned static memory bank
    ``M`` (global) by sigmoid gates, followed by a GELU FFN (``hidden_size -> intermediate_size -> hidden_size`` with
    biases), as the reference's ``GAMBlock``.

    What it can and cannot model: the memory bank is the same for every sequence and is read token by token, so the
    "global" path never mixes tokens; only the convolution does. A stack of ``num_hidden_layers`` GAM layers sees at
    most ``num_hidden_layers * (conv_kernel_size - 1)`` tokens back (an n-gram-like model): it cannot copy, recall or
    attend to anything further away. Decoding keeps only the convolution's last inputs.

    Differences from the reference: no learned absolute position embeddings (the convolution gives the local order;
    they would cap the length and break left padding), the Linear layers use the package's normal(initializer_range)
    init, and dropout is left to the user.

    Args:
        num_memory_slots: rows of the memory bank ``M`` (paper: 512).
        conv_kernel_size: width of the causal depthwise convolution (paper: 3).
    Shared fields are those of :class:`SeqModelConfig`, with GAM's defaults: ``intermediate_size`` None means
    ``4 * hidden_size``, ``hidden_act="gelu"``, ``mlp_bias=True``; ``rms_norm_eps`` (default 1e-5) is the epsilon of
    the LayerNorms (the name is shared with the other architectures).
    """

    model_type = "hf_seqmodels_gam"
    #: the documented default LoRA targets (PEFT ``LoraConfig(target_modules=...)``): the gates and the FFN
    lora_target_modules = ["gate", "fc_in", "fc_out"]

    def __init__(
        self,
        num_memory_slots: int = 512,
        conv_kernel_size: int = 3,
        hidden_size: int = 512,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        mlp_bias: bool = True,
        rms_norm_eps: float = 1e-5,
        **kwargs,
    ):
        self.num_memory_slots = num_memory_slots
        self.conv_kernel_size = conv_kernel_size
        check_int(type(self).__name__, "hidden_size", hidden_size)
        if intermediate_size is None:
            intermediate_size = 4 * hidden_size
        super().__init__(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            hidden_act=hidden_act,
            mlp_bias=mlp_bias,
            rms_norm_eps=rms_norm_eps,
            **kwargs,
        )
        check_int(type(self).__name__, "num_memory_slots", num_memory_slots)
        check_int(type(self).__name__, "conv_kernel_size", conv_kernel_size)
