"""The model classes every linearized Llama-shaped model shares: Liger and Lizard only name their config and their
attention class."""

from hf_seqmodels.layers.linearized import LinearizedDecoderBlock, SoftmaxAttention
from hf_seqmodels.models.causal_lm import SeqModel, SeqPreTrainedModel


class LinearizedPreTrainedModel(SeqPreTrainedModel):
    """Base of a linearized architecture's classes (it sets ``config_class``)."""

    _no_split_modules = ["LinearizedDecoderBlock"]


class LinearizedModel(SeqModel):
    """A linearized decoder: the teacher family's MLP and RMSNorm (transformers' own classes), the method's attention
    (``attention_class``) in every layer except ``config.softmax_layers``, which keep the teacher's softmax
    attention."""

    attention_class = None

    def build_block(self, config, layer_idx):
        family = config.family
        mixer = SoftmaxAttention if layer_idx in config.softmax_layers else self.attention_class
        return LinearizedDecoderBlock(
            config,
            mixer.from_config(config, layer_idx),
            mlp=family.component("MLP")(config.family_config()),
            norm_class=family.component("RMSNorm"),
        )

    def build_norm(self, config):
        return config.family.component("RMSNorm")(config.hidden_size, eps=config.rms_norm_eps)
