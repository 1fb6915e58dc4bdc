from hf_seqmodels.layers.aaren import Aaren
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_aaren import AarenConfig


class AarenPreTrainedModel(SeqPreTrainedModel):
    config_class = AarenConfig


class AarenModel(SeqModel, AarenPreTrainedModel):
    def build_mixer(self, config, layer_idx):
        return Aaren.from_config(config, layer_idx)


class AarenForCausalLM(SeqForCausalLM, AarenPreTrainedModel):
    base_model_class = AarenModel
