from .configuration_hnet import PRESETS, HNetConfig
from .modeling_hnet import (
    HNetCausalLMOutput,
    HNetCompressionCallback,
    HNetForCausalLM,
    HNetModel,
    HNetPreTrainedModel,
    hnet_parameter_groups,
)
from .tokenization_byte import ByteTokenizer

__all__ = [
    "HNetConfig",
    "HNetModel",
    "HNetForCausalLM",
    "HNetPreTrainedModel",
    "HNetCausalLMOutput",
    "HNetCompressionCallback",
    "hnet_parameter_groups",
    "ByteTokenizer",
    "PRESETS",
]
