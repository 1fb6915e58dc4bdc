from hf_seqmodels.layers.pararnn import ParaRNNMixer
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_pararnn import ParaRNNConfig


class ParaRNNPreTrainedModel(SeqPreTrainedModel):
    config_class = ParaRNNConfig


class ParaRNNModel(SeqModel, ParaRNNPreTrainedModel):
    def build_mixer(self, config, layer_idx):
        return ParaRNNMixer(config, layer_idx)


class ParaRNNForCausalLM(SeqForCausalLM, ParaRNNPreTrainedModel):
    base_model_class = ParaRNNModel
