"""hf-seqmodels: efficient non-Transformer sequence models as a Transformers plugin.

``import hf_seqmodels`` registers every architecture with AutoConfig / AutoModel / AutoModelForCausalLM.
"""

__version__ = "0.1.0"

from .cache import RecurrentCache
from .models import ARCHITECTURES, register_auto_classes, register_peft_targets
from .models.gla import GLAConfig, GLAForCausalLM, GLAModel
from .models.hnet import ByteTokenizer, HNetConfig, HNetForCausalLM, HNetModel
from .models.liger import LigerConfig, LigerForCausalLM, LigerModel
from .models.lizard import LizardConfig, LizardForCausalLM, LizardModel
from .models.pararnn import ParaRNNConfig, ParaRNNForCausalLM, ParaRNNModel
from .training import HNetCompressionCallback, hnet_parameter_groups

register_auto_classes()
register_peft_targets()

from .conversion import convert  # noqa: E402  (fills the registry's checkpoint formats: converted on load)
from .hmt import HMTConfig, attach_hmt, load_hmt  # noqa: E402
from .linearize import linearize  # noqa: E402  (needs the registered classes)
from .memory import register_memory_auto_classes  # noqa: E402

register_memory_auto_classes()  # a folder saved with a memory bank loads through the Auto classes with its bank

__all__ = [
    "ARCHITECTURES",
    "RecurrentCache",
    "linearize",
    "convert",
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
]
