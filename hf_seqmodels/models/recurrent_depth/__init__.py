from .configuration_recurrent_depth import HUGINN_0125, HuginnRavenConfig, RecurrentDepthConfig
from .exits import EXIT_CRITERIA, AdaptiveComputeGenerateOutput, ExitCriterion
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
    "EXIT_CRITERIA",
    "AdaptiveComputeGenerateOutput",
    "DiffusionSamplerOutput",
    "ExitCriterion",
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
