from .configuration_recurrent_depth import HUGINN_0125, HuginnRavenConfig, RecurrentDepthConfig
from .modeling_recurrent_depth import (
    RecurrentDepthCache,
    RecurrentDepthCausalLMOutput,
    RecurrentDepthForCausalLM,
    RecurrentDepthModel,
    RecurrentDepthModelOutput,
    RecurrentDepthPreTrainedModel,
)
from .sampler import DiffusionSamplerOutput, diffusion_generate

__all__ = [
    "DiffusionSamplerOutput",
    "HUGINN_0125",
    "HuginnRavenConfig",
    "RecurrentDepthConfig",
    "RecurrentDepthCache",
    "RecurrentDepthCausalLMOutput",
    "RecurrentDepthForCausalLM",
    "RecurrentDepthModel",
    "RecurrentDepthModelOutput",
    "RecurrentDepthPreTrainedModel",
    "diffusion_generate",
]
