from .configuration_recurrent_depth import HUGINN_0125, HuginnRavenConfig, RecurrentDepthConfig
from .modeling_recurrent_depth import (
    RecurrentDepthCache,
    RecurrentDepthCausalLMOutput,
    RecurrentDepthForCausalLM,
    RecurrentDepthModel,
    RecurrentDepthModelOutput,
    RecurrentDepthPreTrainedModel,
)

__all__ = [
    "HUGINN_0125",
    "HuginnRavenConfig",
    "RecurrentDepthConfig",
    "RecurrentDepthCache",
    "RecurrentDepthCausalLMOutput",
    "RecurrentDepthForCausalLM",
    "RecurrentDepthModel",
    "RecurrentDepthModelOutput",
    "RecurrentDepthPreTrainedModel",
]
