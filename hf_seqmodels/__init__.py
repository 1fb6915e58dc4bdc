"""hf-seqmodels: efficient non-Transformer sequence models as a Hugging Face Transformers plugin.

``import hf_seqmodels`` registers every architecture with AutoConfig / AutoModel / AutoModelForCausalLM.
"""
__version__ = "0.1.0"

from .cache import RecurrentCache
from .models import ARCHITECTURES, register_auto_classes
from .models.gla import GLAConfig, GLAForCausalLM, GLAModel

register_auto_classes()

__all__ = ["RecurrentCache", "GLAConfig", "GLAModel", "GLAForCausalLM", "ARCHITECTURES"]
