from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import LlamaMLP

from .norm import RMSNorm


class DecoderBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (SwiGLU MLP)."""

    def __init__(self, config, mixer: nn.Module):
        super().__init__()
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        hidden_states = hidden_states + self.mixer(self.mixer_norm(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))
