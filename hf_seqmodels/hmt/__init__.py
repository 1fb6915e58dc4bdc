"""HMT: Hierarchical Memory Transformer around a pretrained causal LM (see :mod:`.modeling`)."""

from .config import HMTConfig
from .modeling import HMTMemory, HMTOutput, attach_hmt, hmt_forward, hmt_generate, hmt_parameters, set_hmt_stage
from .saving import HMTCheckpointError, load_hmt, load_reference_hmt, save_hmt

__all__ = [
    "HMTConfig",
    "HMTMemory",
    "HMTOutput",
    "HMTCheckpointError",
    "attach_hmt",
    "hmt_forward",
    "hmt_generate",
    "hmt_parameters",
    "set_hmt_stage",
    "save_hmt",
    "load_hmt",
    "load_reference_hmt",
]
