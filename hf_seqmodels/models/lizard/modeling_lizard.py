from hf_seqmodels.layers.liger import LinearizedDecoderBlock
from hf_seqmodels.layers.lizard import LizardAttention
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_lizard import LizardConfig


class LizardPreTrainedModel(SeqPreTrainedModel):
    config_class = LizardConfig
    _no_split_modules = ["LinearizedDecoderBlock"]


class LizardModel(SeqModel, LizardPreTrainedModel):
    def build_block(self, config, layer_idx):
        return LinearizedDecoderBlock(config, LizardAttention.from_config(config, layer_idx))


class LizardForCausalLM(SeqForCausalLM, LizardPreTrainedModel):
    base_model_class = LizardModel
