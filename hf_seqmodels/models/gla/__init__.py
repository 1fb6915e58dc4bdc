from .configuration_gla import GLAConfig
from .modeling_gla import GLAForCausalLM, GLAModel, GLAPreTrainedModel

__all__ = ["GLAConfig", "GLAModel", "GLAForCausalLM", "GLAPreTrainedModel"]
