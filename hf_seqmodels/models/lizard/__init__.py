from .configuration_lizard import LizardConfig
from .modeling_lizard import LizardForCausalLM, LizardModel, LizardPreTrainedModel

__all__ = ["LizardConfig", "LizardModel", "LizardForCausalLM", "LizardPreTrainedModel"]
