"""Turn a pretrained Llama-shaped decoder (Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, Qwen3, Phi-3) into a linearized
model (Liger or Lizard) with the same weights under the same names, optionally keeping some layers as the teacher's
softmax attention (a hybrid layout)."""

from __future__ import annotations

import json
import logging
import os

import torch

from hf_seqmodels.kernels.attention import check_window
from hf_seqmodels.layers.checks import check_int
from hf_seqmodels.layers.families import FAMILIES
from hf_seqmodels.models.liger import LigerConfig, LigerForCausalLM
from hf_seqmodels.models.linearized import LLAMA_FIELDS, check_softmax_layers, every_kth_layer
from hf_seqmodels.models.lizard import LizardConfig, LizardForCausalLM

logger = logging.getLogger(__name__)

#: method -> (config class, model class, options the method accepts, description for the model card)
METHODS = {
    "liger": (
        LigerConfig,
        LigerForCausalLM,
        ("window_size", "gla_weight", "gate_logit_normalizer", "gla_scale", "softmax_layers", "softmax_every"),
        "Liger (arXiv 2503.01496): gated linear attention with the gate and feature maps taken from the pretrained "
        "projections, mixed 50/50 with sliding-window softmax attention; no new parameters",
    ),
    "lizard": (
        LizardConfig,
        LizardForCausalLM,
        (
            "window_size",
            "feature_dim",
            "num_sinks",
            "sink_init",
            "gate_logit_normalizer",
            "gla_scale",
            "softmax_layers",
            "softmax_every",
        ),
        "Lizard (arXiv 2507.09025): gated linear attention with learned Hedgehog feature maps and gate, plus "
        "sliding-window attention with learned sink logits and a learned mixing weight",
    ),
}
#: teacher families (``model_type``) a linearized model can be converted from
LLAMA_MODEL_TYPES = tuple(sorted(FAMILIES))
#: GGUF ``general.architecture`` -> transformers ``model_type`` (GGUF files of Mistral models say "llama")
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}
#: teacher config fields a linearized model does not compute with (dropout only in training): warned about if set
DROPOUT_FIELDS = ("attention_dropout", "resid_pdrop", "embd_pdrop")


def check_method(method, options: dict) -> None:
    if method not in METHODS:
        raise ValueError(f"linearize: unknown method {method!r}; expected one of {sorted(METHODS)}")
    allowed = METHODS[method][2]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"linearize: unknown option(s) {unknown} for method {method!r}; accepted: {list(allowed)}")
    if "window_size" in options:  # the kernel's own check, before any weights are read
        check_window("linearize", options["window_size"], "window_size")
    if "softmax_layers" in options and "softmax_every" in options:
        raise ValueError(
            "linearize: pass softmax_layers (a list of layer indices) or softmax_every (k: every k-th layer), not both"
        )
    if "softmax_every" in options:
        check_int("linearize", "softmax_every", options["softmax_every"])
    if "softmax_layers" in options:  # types and repeats now; the range once the teacher's depth is known
        check_softmax_layers("linearize", options["softmax_layers"], 2**62)


def gguf_architecture(path: str) -> str:
    """The ``general.architecture`` of a GGUF file, from its header alone (:func:`hf_seqmodels.gguf.gguf_metadata`;
    gguf's own reader parses every field, the 49k-entry vocabulary included, which takes about a minute)."""
    from hf_seqmodels.gguf import gguf_metadata

    arch = gguf_metadata(path).get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: no general.architecture in the GGUF metadata")
    return arch


def load_llama(path, gguf_file: str | None = None, dtype=torch.float32):
    """Load a Llama-shaped causal LM (a family of :data:`LLAMA_MODEL_TYPES`) from a safetensors folder (or Hub id) or
    a GGUF file in ``path``, after checking from the config / GGUF metadata alone that it is one. A GGUF model comes
    back dequantized to ``dtype`` as a plain model (savable, trainable: no quantizer marks, unlike
    ``from_pretrained(path, gguf_file=...)``, which de-quantizes the weights but leaves them)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GgufConfig

    if gguf_file is not None:
        full = gguf_file if os.path.isabs(gguf_file) else os.path.join(path, gguf_file)
        if not os.path.isfile(full):
            raise ValueError(f"linearize: gguf_file {full!r} does not exist")
        arch = gguf_architecture(full)
        if arch not in GGUF_ARCHITECTURES:
            raise ValueError(
                f"linearize: the GGUF file {full!r} holds a {arch!r} model; only Llama-shaped decoders "
                f"(GGUF architectures {sorted(GGUF_ARCHITECTURES)}) can be linearized"
            )
        from hf_seqmodels.gguf import check_gguf_file

        check_gguf_file(full)  # a truncated file: said so here, not as a reshape error deep in the loader
    else:
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in LLAMA_MODEL_TYPES:
            raise ValueError(
                f"linearize: {path!r} is a {config.model_type!r} model; only Llama-shaped decoders "
                f"(model_type in {LLAMA_MODEL_TYPES}) can be linearized"
            )
    # GGUF: ask for a dense model (transformers then drops its quantizer marks; 5.17 .. 5.24 otherwise keep the
    # weights in GGUF blocks where a GGUF matmul kernel exists, or de-quantize them but keep the marks)
    dense = {"quantization_config": GgufConfig(dequantize=True)} if gguf_file is not None else {}
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype, **dense)
    if gguf_file is not None and (
        getattr(model, "hf_quantizer", None) is not None
        or getattr(model.config, "quantization_config", None) is not None
    ):
        raise RuntimeError(f"load_llama: transformers kept {full!r} marked as quantized though dequantize=True")
    if gguf_file is not None:  # record which file of the folder it came from (the base model of a conversion)
        model.config.name_or_path = f"{os.fspath(path)}/{os.path.basename(gguf_file)}"
    return model


def teacher_shape(model: str, gguf_path: str | None) -> dict:
    """The teacher's ``model_type``, number of layers and context length (``None`` where unknown) from its config.json
    or GGUF metadata, without reading weights; all ``None`` for a Hub id (transformers checks those when loading)."""
    if gguf_path is not None:
        from hf_seqmodels.gguf import gguf_metadata

        meta = gguf_metadata(gguf_path)
        arch = meta.get("general.architecture", "llama")
        layers, context = meta.get(f"{arch}.block_count"), meta.get(f"{arch}.context_length")
        return {
            "model_type": GGUF_ARCHITECTURES.get(arch, arch),
            "num_layers": int(layers) if layers else None,
            "context_length": int(context) if context else None,
        }
    config_file = os.path.join(model, "config.json")
    if not os.path.isfile(config_file):
        return {"model_type": None, "num_layers": None, "context_length": None}
    try:
        with open(config_file) as f:
            config = json.load(f)
    except ValueError as err:
        raise ValueError(f"--model {model!r}: config.json is not valid JSON ({err})") from None
    context = config.get("max_position_embeddings")
    return {
        "model_type": config.get("model_type"),
        "num_layers": config.get("num_hidden_layers"),
        "context_length": int(context) if context else None,
    }


def check_llama(model):
    """The teacher's :class:`~hf_seqmodels.layers.families.DecoderFamily`, or a ValueError naming what ``model`` is
    and what is supported (before any weight is copied)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILIES.get(model_type)
    expected = family.component("ForCausalLM") if family is not None else None
    if family is None or not isinstance(model, expected):
        raise ValueError(
            f"linearize: `model` must be a Llama-shaped decoder (a *ForCausalLM of model_type in {LLAMA_MODEL_TYPES}: "
            f"Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, Qwen3, Phi-3), got {type(model).__name__} "
            f"(model_type {model_type!r})"
        )
    return family


def teacher_fields(config) -> tuple[dict, dict]:
    """(the linearized config's Llama fields, the teacher's other fields for ``base_config``) of a teacher config.
    Generic fields every config has (output flags, dtype, architectures, ...) are left out of both."""
    from transformers import PretrainedConfig

    generic = set(PretrainedConfig().to_dict()) | {
        "model_type",
        "transformers_version",
        "_name_or_path",
        "quantization_config",
        "auto_map",
        "architectures",
    }
    data = config.to_dict()
    fields = {name: getattr(config, name) for name in LLAMA_FIELDS if hasattr(config, name)}
    rest = {k: v for k, v in data.items() if k not in fields and k not in generic and not k.startswith("_")}
    for name in DROPOUT_FIELDS:
        if rest.get(name):
            logger.warning(
                "linearize: the teacher's %s=%s is not applied (the linearized model has no dropout)", name, rest[name]
            )
    return fields, rest


def linearize(model, method: str = "liger", *, gguf_file: str | None = None, base_model: str | None = None, **options):
    """Convert a Llama-shaped decoder (a ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
    ``Qwen3ForCausalLM`` or ``Phi3ForCausalLM``, or a path loaded with :func:`load_llama`) into a linearized model.

    Args:
        model: a ``LlamaForCausalLM`` or a path (safetensors folder / Hub id, or the folder of ``gguf_file``).
        method: ``"liger"`` or ``"lizard"``.
        gguf_file: with a path, the GGUF file to load.
        base_model: name recorded as the base model (default: the Llama's ``name_or_path``).
        **options: config fields of the method. Liger: ``window_size`` (64), ``gla_weight`` (0.5; 0 = window only),
            ``gate_logit_normalizer`` (16), ``gla_scale`` (None: ``head_dim ** -0.5``). Lizard: ``window_size``
            (128), ``feature_dim`` (head_dim), ``num_sinks`` (4), ``sink_init`` (-4), ``gate_logit_normalizer`` (16),
            ``gla_scale``. Both: ``softmax_layers`` (layer indices that keep the teacher's softmax attention) or
            ``softmax_every=k`` (layers k-1, 2k-1, ...): a hybrid layout.

    Returns a plain (not quantized, savable) ``LigerForCausalLM`` / ``LizardForCausalLM`` in the Llama's dtype and
    device, in eval mode, holding the Llama's weights under the same names. Liger adds no parameters; Lizard's new
    ones (feature maps, gate, sinks, mixing weight) are freshly initialized and learned by :func:`attention_transfer`.
    Every argument is checked before any weight is loaded or copied.
    """
    check_method(method, options)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        base_model = base_model or (f"{path}/{gguf_file}" if gguf_file else path)
        model = load_llama(path, gguf_file=gguf_file)
    elif gguf_file is not None:
        raise ValueError("linearize: gguf_file is only used when `model` is a path")
    family = check_llama(model)
    config_class, model_class, _, description = METHODS[method]
    llama_config = model.config
    fields, rest = teacher_fields(llama_config)
    options = dict(options)
    if "softmax_every" in options:
        options["softmax_layers"] = every_kth_layer(llama_config.num_hidden_layers, options.pop("softmax_every"))
    check_softmax_layers("linearize", options.get("softmax_layers"), llama_config.num_hidden_layers)
    base_model = base_model or llama_config.name_or_path or None
    card = {"base_model": base_model, "method": description}
    if options.get("softmax_layers"):
        card["method"] += f"; layers {options['softmax_layers']} keep the teacher's softmax attention (hybrid)"
    config = config_class(
        **fields,
        **options,
        base_model_type=family.model_type,
        base_config=rest,
        base_model_name_or_path=base_model,
        card_data=card,
    )
    param = next(model.parameters())
    new = model_class(config)
    state = model.state_dict()
    missing, unexpected = new.load_state_dict(state, strict=False)
    extra = {n for n, _ in new.named_parameters()} - set(state)
    if unexpected or set(missing) - extra:
        raise RuntimeError(
            f"linearize: weights do not map onto {model_class.__name__}: missing {missing}, unexpected {unexpected}"
        )
    return new.to(device=param.device, dtype=param.dtype).eval()
