"""Registration of every architecture with the Auto classes, in one place."""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .gla import GLAConfig, GLAForCausalLM, GLAModel
from .liger import LigerConfig, LigerForCausalLM, LigerModel
from .lizard import LizardConfig, LizardForCausalLM, LizardModel
from .pararnn import ParaRNNConfig, ParaRNNForCausalLM, ParaRNNModel

#: (config, base model, causal LM) for every architecture of the package
ARCHITECTURES = [
    (GLAConfig, GLAModel, GLAForCausalLM),
    (LigerConfig, LigerModel, LigerForCausalLM),
    (LizardConfig, LizardModel, LizardForCausalLM),
    (ParaRNNConfig, ParaRNNModel, ParaRNNForCausalLM),
]


def register_auto_classes() -> None:
    for config_class, model_class, lm_class in ARCHITECTURES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, lm_class, exist_ok=True)
