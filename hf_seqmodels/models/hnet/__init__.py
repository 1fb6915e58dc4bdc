from .configuration_hnet import PRESETS, HNetConfig
from .modeling_hnet import HNetCausalLMOutput, HNetForCausalLM, HNetModel, HNetPreTrainedModel
from .tokenization_byte import ByteTokenizer

__all__ = [
    "HNetConfig",
    "HNetModel",
    "HNetForCausalLM",
    "HNetPreTrainedModel",
    "HNetCausalLMOutput",
    "ByteTokenizer",
    "PRESETS",
]
