from .configuration_liger import LigerConfig, LinearizedLlamaConfig
from .modeling_liger import LigerForCausalLM, LigerModel, LigerPreTrainedModel

__all__ = ["LigerConfig", "LinearizedLlamaConfig", "LigerModel", "LigerForCausalLM", "LigerPreTrainedModel"]
