from hf_seqmodels.layers.gla import GatedLinearAttention
from hf_seqmodels.models.causal_lm import SeqForCausalLM, SeqModel, SeqPreTrainedModel

from .configuration_gla import GLAConfig


class GLAPreTrainedModel(SeqPreTrainedModel):
    config_class = GLAConfig


class GLAModel(SeqModel, GLAPreTrainedModel):
    def build_mixer(self, config, layer_idx):
        return GatedLinearAttention(
            hidden_size=config.hidden_size,
            num_heads=config.num_heads,
            expand_k=config.expand_k,
            expand_v=config.expand_v,
            gate_low_rank_dim=config.gate_low_rank_dim,
            gate_logit_normalizer=config.gate_logit_normalizer,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            norm_eps=config.rms_norm_eps,
            layer_idx=layer_idx,
        )


class GLAForCausalLM(SeqForCausalLM, GLAPreTrainedModel):
    base_model_class = GLAModel
