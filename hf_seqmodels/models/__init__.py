"""Registration of every architecture with the Auto classes (and PEFT's default LoRA targets), in one place."""

import importlib.util

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hf_seqmodels.registry import ARCHITECTURES, register_architecture

from .aaren import AarenConfig, AarenForCausalLM, AarenModel
from .gam import GAMConfig, GAMForCausalLM, GAMModel
from .gla import GLAConfig, GLAForCausalLM, GLAModel
from .hnet import HNetConfig, HNetForCausalLM, HNetModel
from .hnet.tokenization_byte import register_byte_tokenizer
from .liger import LigerConfig, LigerForCausalLM, LigerModel
from .lizard import LizardConfig, LizardForCausalLM, LizardModel
from .pararnn import ParaRNNConfig, ParaRNNForCausalLM, ParaRNNModel
from .plstm import PLSTMConfig, PLSTMForCausalLM, PLSTMModel
from .recurrent_depth import (
    HuginnRavenConfig,
    RecurrentDepthConfig,
    RecurrentDepthForCausalLM,
    RecurrentDepthModel,
)
from .s4d import S4DConfig, S4DForCausalLM, S4DModel

for _entry in (
    (GLAConfig, GLAModel, GLAForCausalLM),
    (LigerConfig, LigerModel, LigerForCausalLM),
    (LizardConfig, LizardModel, LizardForCausalLM),
    (ParaRNNConfig, ParaRNNModel, ParaRNNForCausalLM),
    (HNetConfig, HNetModel, HNetForCausalLM),
    (PLSTMConfig, PLSTMModel, PLSTMForCausalLM),
    (S4DConfig, S4DModel, S4DForCausalLM),
    (AarenConfig, AarenModel, AarenForCausalLM),
    (GAMConfig, GAMModel, GAMForCausalLM),
    (RecurrentDepthConfig, RecurrentDepthModel, RecurrentDepthForCausalLM),
    (HuginnRavenConfig, RecurrentDepthModel, RecurrentDepthForCausalLM),  # a published Huginn folder
):
    register_architecture(*_entry)


def register_auto_classes() -> None:
    for config_class, model_class, lm_class in ARCHITECTURES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto, cls in ((AutoModel, model_class), (AutoModelForCausalLM, lm_class)):
            if cls.config_class is config_class:
                auto.register(config_class, cls, exist_ok=True)
            else:  # a config subclass on its parent's models (huginn_raven): register() insists on the class name
                auto._model_mapping.register(config_class, cls, exist_ok=True)
    register_byte_tokenizer(HNetConfig)


def register_peft_targets() -> None:
    """Make ``LoraConfig()`` without ``target_modules`` adapt each architecture's documented targets
    (``config_class.lora_target_modules``), as PEFT does for the architectures it knows. Skipped without peft."""
    if importlib.util.find_spec("peft") is None:
        return
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as targets

    for config_class, _, _ in ARCHITECTURES:
        targets.setdefault(config_class.model_type, list(config_class.lora_target_modules))
