"""What the linearized Llama-shaped models (Liger, Lizard) share: their base config and model body. Not an
architecture of its own (nothing here is registered with the Auto classes)."""

from .configuration_linearized import LLAMA_FIELDS, LinearizedLlamaConfig, check_softmax_layers, every_kth_layer
from .modeling_linearized import LinearizedModel, LinearizedPreTrainedModel

__all__ = [
    "LinearizedLlamaConfig",
    "LinearizedModel",
    "LinearizedPreTrainedModel",
    "LLAMA_FIELDS",
    "check_softmax_layers",
    "every_kth_layer",
]
