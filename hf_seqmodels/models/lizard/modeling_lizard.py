from hf_seqmodels.layers.lizard import LizardAttention
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqPreTrainedModel
from hf_seqmodels.models.linearized import LinearizedModel

from .configuration_lizard import LizardConfig


class LizardPreTrainedModel(SeqPreTrainedModel):
    config_class = LizardConfig
    _no_split_modules = ["LinearizedDecoderBlock"]


class LizardModel(LinearizedModel, LizardPreTrainedModel):
    attention_class = LizardAttention


class LizardForCausalLM(SeqForCausalLM, LizardPreTrainedModel):
    base_model_class = LizardModel
