from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import LlamaMLP

from .norm import RMSNorm


class DecoderBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (SwiGLU MLP).

    Norm and MLP names follow Llama's (``input_layernorm``, ``post_attention_layernorm``, ``mlp``); the token mixer is
    registered under ``mixer_name`` (``"mixer"``; linearized Llama blocks use ``"self_attn"``). ``use_mlp=False``
    gives a mixer-only block (H-Net's lowercase layers). ``mlp`` and ``norm_class`` replace Llama's MLP and RMSNorm
    (a linearized model uses its teacher family's own).
    """

    mixer_name = "mixer"

    def __init__(
        self, config, mixer: nn.Module, use_mlp: bool = True, mlp: nn.Module | None = None, norm_class=RMSNorm
    ):
        super().__init__()
        self.input_layernorm = norm_class(config.hidden_size, eps=config.rms_norm_eps)
        self.add_module(self.mixer_name, mixer)
        if use_mlp:
            self.post_attention_layernorm = norm_class(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = LlamaMLP(config) if mlp is None else mlp
        else:
            self.mlp = None

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]`` (same dtype); ``attention_mask``,
        ``cache`` and ``kwargs`` (``position_ids``, ``cu_seqlens``) go to the mixer."""
        mixer = getattr(self, self.mixer_name)
        residual = hidden_states
        hidden_states = residual + mixer(
            self.input_layernorm(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs
        )
        if self.mlp is None:
            return hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
