from hf_seqmodels.layers.plstm import PLSTM
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_plstm import PLSTMConfig


class PLSTMPreTrainedModel(SeqPreTrainedModel):
    config_class = PLSTMConfig


class PLSTMModel(SeqModel, PLSTMPreTrainedModel):
    def build_mixer(self, config, layer_idx):
        return PLSTM.from_config(config, layer_idx)


class PLSTMForCausalLM(SeqForCausalLM, PLSTMPreTrainedModel):
    base_model_class = PLSTMModel
