from .configuration_pararnn import ParaRNNConfig
from .modeling_pararnn import ParaRNNForCausalLM, ParaRNNModel, ParaRNNPreTrainedModel

__all__ = ["ParaRNNConfig", "ParaRNNModel", "ParaRNNForCausalLM", "ParaRNNPreTrainedModel"]
