from .configuration_gam import GAMConfig
from .modeling_gam import GAMForCausalLM, GAMModel, GAMPreTrainedModel

__all__ = ["GAMConfig", "GAMModel", "GAMForCausalLM", "GAMPreTrainedModel"]
