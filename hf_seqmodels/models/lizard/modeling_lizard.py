from hf_seqmodels.layers.lizard import LizardAttention
from hf_seqmodels.models.causal_lm import SeqForCausalLM
from hf_seqmodels.models.linearized import LinearizedModel, LinearizedPreTrainedModel

from .configuration_lizard import LizardConfig


class LizardPreTrainedModel(LinearizedPreTrainedModel):
    config_class = LizardConfig


class LizardModel(LinearizedModel, LizardPreTrainedModel):
    attention_class = LizardAttention


class LizardForCausalLM(SeqForCausalLM, LizardPreTrainedModel):
    base_model_class = LizardModel
