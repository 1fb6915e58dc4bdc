from hf_seqmodels.layers.s4d import S4D
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_s4d import S4DConfig


class S4DPreTrainedModel(SeqPreTrainedModel):
    config_class = S4DConfig


class S4DModel(SeqModel, S4DPreTrainedModel):
    def build_mixer(self, config, layer_idx):
        return S4D.from_config(config, layer_idx)


class S4DForCausalLM(SeqForCausalLM, S4DPreTrainedModel):
    base_model_class = S4DModel
