from hf_seqmodels.layers.liger import LigerAttention
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqPreTrainedModel
from hf_seqmodels.models.linearized import LinearizedModel

from .configuration_liger import LigerConfig


class LigerPreTrainedModel(SeqPreTrainedModel):
    config_class = LigerConfig
    _no_split_modules = ["LinearizedDecoderBlock"]


class LigerModel(LinearizedModel, LigerPreTrainedModel):
    attention_class = LigerAttention


class LigerForCausalLM(SeqForCausalLM, LigerPreTrainedModel):
    base_model_class = LigerModel
