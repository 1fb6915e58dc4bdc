from .configuration_s4d import S4DConfig
from .modeling_s4d import S4DForCausalLM, S4DModel, S4DPreTrainedModel

__all__ = ["S4DConfig", "S4DModel", "S4DForCausalLM", "S4DPreTrainedModel"]
