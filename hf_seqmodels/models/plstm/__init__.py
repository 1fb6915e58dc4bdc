from .configuration_plstm import PLSTMConfig
from .modeling_plstm import PLSTMForCausalLM, PLSTMModel, PLSTMPreTrainedModel

__all__ = ["PLSTMConfig", "PLSTMModel", "PLSTMForCausalLM", "PLSTMPreTrainedModel"]
