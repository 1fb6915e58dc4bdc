from hf_seqmodels.layers.gla import GatedLinearAttention
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_gla import GLAConfig


class GLAPreTrainedModel(SeqPreTrainedModel):
    config_class = GLAConfig


class GLAModel(SeqModel, GLAPreTrainedModel):
    def build_mixer(self, config, layer_idx):
        return GatedLinearAttention.from_config(config, layer_idx)


class GLAForCausalLM(SeqForCausalLM, GLAPreTrainedModel):
    base_model_class = GLAModel
