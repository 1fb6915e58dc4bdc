from .configuration_liger import LigerConfig
from .modeling_liger import LigerForCausalLM, LigerModel, LigerPreTrainedModel

__all__ = ["LigerConfig", "LigerModel", "LigerForCausalLM", "LigerPreTrainedModel"]
