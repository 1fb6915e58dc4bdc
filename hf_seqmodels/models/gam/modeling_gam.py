from torch import nn
from transformers.activations import ACT2FN

from hf_seqmodels.layers.block import DecoderBlock
from hf_seqmodels.layers.gam import GatedAssociativeMemory
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_gam import GAMConfig


class GAMFeedForward(nn.Module):
    """The reference's FFN: ``fc_out(act(fc_in(x)))`` (``hidden_size -> intermediate_size -> hidden_size``)."""

    def __init__(self, config):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class GAMPreTrainedModel(SeqPreTrainedModel):
    config_class = GAMConfig


class GAMModel(SeqModel, GAMPreTrainedModel):
    """GAM blocks: ``x + gam(LayerNorm(x))`` then ``x + ffn(LayerNorm(x))``, and a final LayerNorm."""

    def build_block(self, config, layer_idx):
        mixer = GatedAssociativeMemory.from_config(config, layer_idx)
        return DecoderBlock(config, mixer, mlp=GAMFeedForward(config), norm_class=nn.LayerNorm)

    def build_norm(self, config):
        return nn.LayerNorm(config.hidden_size, eps=config.rms_norm_eps)


class GAMForCausalLM(SeqForCausalLM, GAMPreTrainedModel):
    base_model_class = GAMModel
