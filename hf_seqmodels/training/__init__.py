"""Training helpers around the models: optimizer parameter groups and ``Trainer`` callbacks (one module per
architecture or method). :mod:`.hnet`: H-Net's per-stage learning rates and compression logging; :mod:`.s4d`: S4D's
state-space parameters at a lower learning rate; :mod:`.gradient_noise`: annealed Gaussian gradient noise;
:mod:`.depth`: nested sub-models by depth (SortedNet, sorted fine-tuning); :mod:`.pruning`: magnitude pruning of the
decoder's projections."""

from .depth import (
    SortedDepthCallback,
    SummedDepthLossCallback,
    decoder_layers,
    depth_perplexities,
    sample_depth,
    summed_depth_loss,
    truncated_depth,
)
from .gradient_noise import GradientNoiseCallback
from .hnet import HNetCompressionCallback, hnet_parameter_groups
from .pruning import projection_sparsity, prunable_projections, prune_projections, remove_pruning
from .s4d import s4d_parameter_groups
from .seeding import step_seed

__all__ = [
    "GradientNoiseCallback",
    "HNetCompressionCallback",
    "SortedDepthCallback",
    "SummedDepthLossCallback",
    "decoder_layers",
    "depth_perplexities",
    "hnet_parameter_groups",
    "projection_sparsity",
    "prunable_projections",
    "prune_projections",
    "remove_pruning",
    "s4d_parameter_groups",
    "sample_depth",
    "step_seed",
    "summed_depth_loss",
    "truncated_depth",
]
