from hf_seqmodels.layers.liger import LigerAttention
from hf_seqmodels.models.causal_lm import SeqForCausalLM
from hf_seqmodels.models.linearized import LinearizedModel, LinearizedPreTrainedModel

from .configuration_liger import LigerConfig


class LigerPreTrainedModel(LinearizedPreTrainedModel):
    config_class = LigerConfig


class LigerModel(LinearizedModel, LigerPreTrainedModel):
    attention_class = LigerAttention


class LigerForCausalLM(SeqForCausalLM, LigerPreTrainedModel):
    base_model_class = LigerModel
