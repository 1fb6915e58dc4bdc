"""hf-seqmodels: efficient non-Transformer sequence models as a Transformers plugin.

``import hf_seqmodels`` registers every architecture with AutoConfig / AutoModel / AutoModelForCausalLM.
"""

__version__ = "0.1.0"

from .cache import RecurrentCache
from .models import ARCHITECTURES, register_auto_classes, register_peft_targets
from .models.aaren import AarenConfig, AarenForCausalLM, AarenModel
from .models.gam import GAMConfig, GAMForCausalLM, GAMModel
from .models.gla import GLAConfig, GLAForCausalLM, GLAModel
from .models.hnet import ByteTokenizer, HNetConfig, HNetForCausalLM, HNetModel
from .models.liger import LigerConfig, LigerForCausalLM, LigerModel
from .models.lizard import LizardConfig, LizardForCausalLM, LizardModel
from .models.pararnn import ParaRNNConfig, ParaRNNForCausalLM, ParaRNNModel
from .models.plstm import PLSTMConfig, PLSTMForCausalLM, PLSTMModel
from .models.recurrent_depth import (
    HuginnRavenConfig,
    RecurrentDepthCache,
    RecurrentDepthConfig,
    RecurrentDepthForCausalLM,
    RecurrentDepthModel,
)
from .models.s4d import S4DConfig, S4DForCausalLM, S4DModel
from .training import (
    GradientNoiseCallback,
    HNetCompressionCallback,
    SortedDepthCallback,
    SummedDepthLossCallback,
    depth_perplexities,
    hnet_parameter_groups,
    prune_projections,
    remove_pruning,
    s4d_parameter_groups,
    summed_depth_loss,
    truncated_depth,
)

register_auto_classes()
register_peft_targets()

from .cola import search_layer_path, with_layer_path  # noqa: E402
from .conversion import convert  # noqa: E402  (fills the registry's checkpoint formats: converted on load)
from .hmt import HMTConfig, attach_hmt, load_hmt  # noqa: E402
from .linearize import linearize  # noqa: E402  (needs the registered classes)
from .memory import register_memory_auto_classes  # noqa: E402
from .parallel import context_parallel  # noqa: E402

register_memory_auto_classes()  # a folder saved with a memory bank loads through the Auto classes with its bank

__all__ = [
    "ARCHITECTURES",
    "RecurrentCache",
    "linearize",
    "convert",
    "context_parallel",
    "with_layer_path",
    "search_layer_path",
    "HMTConfig",
    "attach_hmt",
    "load_hmt",
    "GLAConfig",
    "GLAModel",
    "GLAForCausalLM",
    "HNetConfig",
    "HNetModel",
    "HNetForCausalLM",
    "ByteTokenizer",
    "HNetCompressionCallback",
    "GradientNoiseCallback",
    "SortedDepthCallback",
    "SummedDepthLossCallback",
    "truncated_depth",
    "summed_depth_loss",
    "depth_perplexities",
    "prune_projections",
    "remove_pruning",
    "hnet_parameter_groups",
    "LigerConfig",
    "LigerModel",
    "LigerForCausalLM",
    "LizardConfig",
    "LizardModel",
    "LizardForCausalLM",
    "ParaRNNConfig",
    "ParaRNNModel",
    "ParaRNNForCausalLM",
    "PLSTMConfig",
    "PLSTMModel",
    "PLSTMForCausalLM",
    "S4DConfig",
    "S4DModel",
    "S4DForCausalLM",
    "s4d_parameter_groups",
    "AarenConfig",
    "AarenModel",
    "AarenForCausalLM",
    "GAMConfig",
    "GAMModel",
    "GAMForCausalLM",
    "RecurrentDepthConfig",
    "RecurrentDepthModel",
    "RecurrentDepthForCausalLM",
    "RecurrentDepthCache",
    "HuginnRavenConfig",
]
