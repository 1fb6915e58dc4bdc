from hf_seqmodels.layers.liger import LigerAttention, LinearizedDecoderBlock
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_liger import LigerConfig


class LigerPreTrainedModel(SeqPreTrainedModel):
    config_class = LigerConfig
    _no_split_modules = ["LinearizedDecoderBlock"]


class LigerModel(SeqModel, LigerPreTrainedModel):
    def build_block(self, config, layer_idx):
        return LinearizedDecoderBlock(config, LigerAttention.from_config(config, layer_idx))


class LigerForCausalLM(SeqForCausalLM, LigerPreTrainedModel):
    base_model_class = LigerModel
