from .configuration_aaren import AarenConfig
from .modeling_aaren import AarenForCausalLM, AarenModel, AarenPreTrainedModel

__all__ = ["AarenConfig", "AarenModel", "AarenForCausalLM", "AarenPreTrainedModel"]
