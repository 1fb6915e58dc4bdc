"""The H-Net reference's release format (goombalab/hnet; cartesia-ai ``hnet_1stage_L``, ``hnet_1stage_XL``,
``hnet_2stage_L``, ``hnet_2stage_XL``, ``hnet_2stage_XL_chinese``, ``hnet_2stage_XL_code``) -> :class:`HNetConfig`
and an :class:`HNetForCausalLM` state dict.

A release is a pickled state dict (``<name>.pt``, written by ``torch.save(model.state_dict())``; it may hold
OmegaConf containers, loaded by :mod:`.safe_pickle` without executing anything) plus the repository's
``configs/<name>.json``. Put both in one folder: :func:`detect` recognizes it, :func:`load` converts it.

Config (``configs/*.json``, the fields of the reference's ``HNetConfig`` / ``AttnConfig`` / ``SSMConfig`` dataclasses):
``arch_layout``, ``d_model``, ``vocab_size`` and ``attn_cfg`` (``num_heads``, ``rotary_emb_dim``, ``window_size``,
per stage or one value for all) carry over; ``d_intermediate`` is rounded up to a multiple of 128 as the
reference's SwiGLU does; ``ssm_cfg`` (``d_state``, ``d_conv``, ``expand``, ``chunk_size``; one value or the same
value on every stage) gets Mamba-2's defaults ``head_dim`` 64 and ``n_groups`` 1, and ``tie_embeddings`` becomes
``tie_word_embeddings``. Norm epsilons are 1e-5 and rotary bases 10000 there as here. Any other field, a layer
letter other than ``m``/``t``, or Mamba-2 settings that differ between stages are refused by name.

Keys (reference -> ours): ``embeddings`` / ``backbone`` get the ``model.`` prefix; a block's ``norm1`` / ``norm2`` are
``input_layernorm`` / ``post_attention_layernorm``; an isotropic stack's final ``rmsnorm`` is ``norm``; attention
``mixer.Wqkv`` ``[3D, D]`` splits into ``q_proj``, ``k_proj``, ``v_proj`` (rows in that order, heads contiguous) and
its ``mixer.out_proj`` is ``o_proj``; ``mlp.fc1`` ``[2I, D]`` splits into ``up_proj`` (first half: the reference
computes ``fc2(silu(gate) * y)`` with ``y, gate = fc1(x).chunk(2)``) and ``gate_proj``, ``mlp.fc2`` is ``down_proj``.
Mamba-2 parameters (``in_proj`` rows z, x, B, C, dt; ``conv1d``; ``dt_bias``; ``A_log``; ``D``; ``norm``;
``out_proj``), ``routing_module.{q,k}_proj_layer``, ``residual_proj`` (fp32) and ``pad_dimension`` keep their names,
nested stages stay under ``main_network``. Every key must be consumed and every parameter of ours filled, with
matching shapes; otherwise a ``ValueError`` names the key.

Semantics: the forward pass is the reference's (routing cosine between ``W_q h_{t-1}`` and ``W_k h_t``, boundary
where ``p > 0.5``, smoothing EMA with ``P`` clamped to ``[1e-4, 1 - 1e-4]``, straight-through ``1`` times the
upsampled value plus ``residual_proj``, width padding with ``pad_dimension``, Mamba-2 with gate-before-norm, partial
GPT-NeoX rotary, windows of ``window_size`` earlier keys). Precision differs where the reference is fixed to its
kernels: it runs the smoothing EMA in bf16 (``DeChunkLayer``'s hard-coded dtype) and the routing cosine in the
model's dtype; here both run in fp32 (fp64 for fp64 models).
"""

from __future__ import annotations

import json
import os
import re

import torch

from hf_seqmodels.models.hnet.configuration_hnet import HNetConfig, parse_layer_string, stage_layouts
from hf_seqmodels.models.hnet.modeling_hnet import HNetForCausalLM
from hf_seqmodels.models.hnet.tokenization_byte import ByteTokenizer

from . import safe_pickle
from .common import CheckpointFormat, Converted

__all__ = ["config_from_reference", "convert_state_dict", "detect", "find_files", "load"]

_CONFIG_FIELDS = {"arch_layout", "d_model", "d_intermediate", "vocab_size", "ssm_cfg", "attn_cfg", "tie_embeddings"}
_SSM_FIELDS = {"d_conv", "expand", "d_state", "chunk_size"}
_ATTN_FIELDS = {"num_heads", "rotary_emb_dim", "window_size"}
_SSM_DEFAULTS = {"d_conv": 4, "expand": 2, "d_state": 128, "chunk_size": 256}  # the reference's SSMConfig
_MLP_MULTIPLE = 128  # the reference's SwiGLU rounds d_intermediate up to this
_MAX_JSON_BYTES = 1 << 20
_NATIVE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _reference_json(path: str) -> dict | None:
    """The parsed file if it is a reference H-Net config (``arch_layout`` and ``d_model``, no ``model_type``)."""
    if os.path.getsize(path) > _MAX_JSON_BYTES:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and "arch_layout" in data and "d_model" in data and "model_type" not in data:
        return data
    return None


def find_files(folder) -> tuple[str, str]:
    """``(checkpoint .pt, config .json)`` of a release in ``folder``. With several of either, the pair with the
    same stem (``hnet_2stage_XL.pt`` / ``hnet_2stage_XL.json``); raises ``ValueError`` if that is not unique."""
    folder = os.fspath(folder)
    names = sorted(os.listdir(folder))
    checkpoints = [n for n in names if n.endswith(".pt") and os.path.isfile(os.path.join(folder, n))]
    configs = [
        n
        for n in names
        if n.endswith(".json")
        and os.path.isfile(os.path.join(folder, n))
        and _reference_json(os.path.join(folder, n)) is not None
    ]
    if not checkpoints or not configs:
        raise ValueError(
            f"{folder}: an H-Net reference release needs a .pt state dict and its config JSON "
            f"(arch_layout, d_model, ...); found .pt files {checkpoints}, reference configs {configs}"
        )
    if len(checkpoints) == 1 and len(configs) == 1:
        return os.path.join(folder, checkpoints[0]), os.path.join(folder, configs[0])
    pairs = [(c, j) for c in checkpoints for j in configs if c[:-3] == j[:-5]]
    if len(pairs) != 1:
        raise ValueError(
            f"{folder}: cannot tell which config goes with which checkpoint (.pt files {checkpoints}, "
            f"reference configs {configs}); keep one pair, or give them the same stem"
        )
    return os.path.join(folder, pairs[0][0]), os.path.join(folder, pairs[0][1])


def detect(folder) -> bool:
    """Whether ``folder`` holds a reference H-Net release (a ``.pt`` and a reference config JSON) and no checkpoint
    of our own format (``model.safetensors``, which ``from_pretrained`` then loads as usual)."""
    if not os.path.isdir(folder) or any(os.path.exists(os.path.join(folder, n)) for n in _NATIVE_WEIGHTS):
        return False
    try:
        find_files(folder)
    except (OSError, ValueError):
        return False
    return True


def _per_stage(where: str, value, n_stages: int) -> list:
    """The reference's ``get_stage_cfg``: a list is indexed by stage, anything else applies to every stage."""
    if isinstance(value, list):
        if len(value) != n_stages:
            raise ValueError(f"H-Net reference config: {where} needs one entry per stage ({n_stages}), got {value}")
        return list(value)
    return [value] * n_stages


def config_from_reference(ref: dict, **overrides) -> HNetConfig:
    """Our :class:`HNetConfig` for a reference config dict (the JSON's contents); ``overrides`` are passed on."""
    unknown = set(ref) - _CONFIG_FIELDS
    if unknown:
        raise ValueError(
            f"H-Net reference config: unknown field(s) {sorted(unknown)} (the reference's HNetConfig "
            f"has {sorted(_CONFIG_FIELDS)})"
        )
    layout = ref["arch_layout"]
    stages = stage_layouts(layout)
    S = len(stages)
    for s, specs in enumerate(stages):
        for spec in specs:
            letters = {c.lower() for c in parse_layer_string(spec, where="arch_layout")}
            if letters - {"m", "t"}:
                raise ValueError(
                    f"H-Net reference config: arch_layout stage {s} layer string {spec!r} uses "
                    f"{sorted(letters - {'m', 't'})}; the reference has Mamba-2 (m) and attention (t) "
                    f"only"
                )
    ssm_in = dict(ref.get("ssm_cfg") or {})
    unknown = set(ssm_in) - _SSM_FIELDS
    if unknown:
        raise ValueError(
            f"H-Net reference config: unknown ssm_cfg field(s) {sorted(unknown)} (the reference's "
            f"SSMConfig has {sorted(_SSM_FIELDS)})"
        )
    ssm = {"head_dim": 64, "n_groups": 1}  # mamba_ssm's Mamba2 defaults, which the reference does not override
    for key in sorted(_SSM_FIELDS):
        values = _per_stage(f"ssm_cfg[{key!r}]", ssm_in.get(key, _SSM_DEFAULTS[key]), S)
        if any(v != values[0] for v in values):
            raise ValueError(
                f"H-Net reference config: ssm_cfg[{key!r}] differs between stages ({values}); "
                f"HNetConfig has one Mamba-2 setting for all stages"
            )
        ssm[key] = values[0]
    attn_in = dict(ref.get("attn_cfg") or {})
    unknown = set(attn_in) - _ATTN_FIELDS
    if unknown:
        raise ValueError(
            f"H-Net reference config: unknown attn_cfg field(s) {sorted(unknown)} (the reference's "
            f"AttnConfig has {sorted(_ATTN_FIELDS)})"
        )
    missing = _ATTN_FIELDS - set(attn_in)
    if missing and any("t" in spec.lower() for specs in stages for spec in specs):
        raise ValueError(f"H-Net reference config: attn_cfg lacks {sorted(missing)} (needed by the attention layers)")
    defaults = {"num_heads": 1, "rotary_emb_dim": 0, "window_size": -1}  # stages without attention layers only
    attn = {k: _per_stage(f"attn_cfg[{k!r}]", attn_in.get(k, defaults[k]), S) for k in sorted(_ATTN_FIELDS)}
    d_intermediate = _per_stage("d_intermediate", ref.get("d_intermediate", [0] * S), S)
    d_intermediate = [(int(d) + _MLP_MULTIPLE - 1) // _MLP_MULTIPLE * _MLP_MULTIPLE for d in d_intermediate]
    tie = ref.get("tie_embeddings", False)
    if not isinstance(tie, bool):
        raise TypeError(f"H-Net reference config: tie_embeddings must be a bool, got {tie!r}")
    return HNetConfig(
        arch_layout=layout,
        d_model=ref["d_model"],
        d_intermediate=d_intermediate,
        vocab_size=ref.get("vocab_size", 256),
        ssm_cfg=ssm,
        attn_cfg=attn,
        tie_word_embeddings=tie,
        **overrides,
    )


_ISOTROPIC_NORM = re.compile(r"(^|\.)(encoder|decoder|main_network)\.rmsnorm\.weight$")
_OUR_ISOTROPIC_NORM = re.compile(r"(^|\.)(encoder|decoder|main_network)\.norm\.weight$")


def _our_names(key: str, ref_sd: dict) -> list[tuple[str, slice | None, int]]:
    """Our key(s) for reference ``key``: ``(name, row slice or None, parts)`` (``parts`` > 1: a fused weight)."""
    if key == "lm_head.weight":
        return [(key, None, 1)]
    if not key.startswith(("embeddings.", "backbone.")):
        return [("model." + key, None, 1)]  # unknown to us: reported as unexpected under the reference's name
    name = _ISOTROPIC_NORM.sub(r"\1\2.norm.weight", key)
    name = name.replace(".norm1.", ".input_layernorm.").replace(".norm2.", ".post_attention_layernorm.")
    prefix, _, leaf = name.rpartition(".mixer.")
    if leaf.startswith("Wqkv."):
        param = leaf[len("Wqkv.") :]
        return [(f"model.{prefix}.mixer.{p}_proj.{param}", i, 3) for i, p in enumerate("qkv")]
    if leaf.startswith("out_proj.") and key.replace("out_proj.", "Wqkv.") in ref_sd:  # attention's output
        return [(f"model.{prefix}.mixer.o_proj.{leaf[len('out_proj.') :]}", None, 1)]
    if name.endswith(".mlp.fc1.weight"):
        base = name[: -len("fc1.weight")]
        return [(f"model.{base}up_proj.weight", 0, 2), (f"model.{base}gate_proj.weight", 1, 2)]
    if name.endswith(".mlp.fc2.weight"):
        return [("model." + name[: -len("fc2.weight")] + "down_proj.weight", None, 1)]
    return [("model." + name, None, 1)]


def _reference_name(ours: str) -> str:
    """The reference key that would fill our parameter ``ours`` (for error messages)."""
    name = ours[len("model.") :] if ours.startswith("model.") else ours
    name = _OUR_ISOTROPIC_NORM.sub(r"\1\2.rmsnorm.weight", name)
    name = name.replace(".input_layernorm.", ".norm1.").replace(".post_attention_layernorm.", ".norm2.")
    name = re.sub(r"\.mixer\.[qkv]_proj\.", ".mixer.Wqkv.", name).replace(".mixer.o_proj.", ".mixer.out_proj.")
    name = re.sub(r"\.mlp\.(up|gate)_proj\.", ".mlp.fc1.", name).replace(".mlp.down_proj.", ".mlp.fc2.")
    return name


def convert_state_dict(ref_sd: dict, config: HNetConfig, dtype: torch.dtype | None = None) -> dict:
    """Our :class:`HNetForCausalLM` state dict from the reference's ``ref_sd``; every key checked (see the module
    docstring). ``dtype``: cast floating tensors (``residual_proj`` stays at least fp32); None keeps the file's."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in HNetForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings and "lm_head.weight" in ref_sd:
        emb, head = ref_sd.get("embeddings.weight"), ref_sd["lm_head.weight"]
        if emb is not None and not (emb.shape == head.shape and torch.equal(emb, head)):
            raise ValueError(
                "H-Net checkpoint: tie_embeddings is true but lm_head.weight differs from embeddings.weight"
            )
        ref_sd = {k: v for k, v in ref_sd.items() if k != "lm_head.weight"}
        expected.pop("lm_head.weight", None)
    out, source, unexpected = {}, {}, []
    for key, tensor in ref_sd.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"H-Net checkpoint: entry {key!r} is a {type(tensor).__name__}, not a tensor; a reference "
                f"checkpoint is a flat state dict of tensors"
            )
        for name, part, parts in _our_names(key, ref_sd):
            if name not in expected:
                unexpected.append(f"{key!r} (-> {name!r})")
                continue
            if name in source:
                raise ValueError(f"H-Net checkpoint: {source[name]!r} and {key!r} both map to {name!r}")
            value = tensor
            if part is not None:
                if tensor.shape[0] % parts:
                    raise ValueError(f"H-Net checkpoint: {key!r} has {tensor.shape[0]} rows, not a multiple of {parts}")
                value = tensor.chunk(parts, 0)[part]
            if tuple(value.shape) != expected[name]:
                raise ValueError(
                    f"H-Net checkpoint: {key!r} has shape {tuple(tensor.shape)}; {name!r} needs "
                    f"{expected[name]}" + (f" ({parts} of them stacked)" if parts > 1 else "")
                )
            if dtype is not None and value.is_floating_point():
                keep = torch.promote_types(dtype, torch.float32) if ".residual_proj." in name else dtype
                value = value.to(keep)
            out[name], source[name] = value.contiguous(), key
    if unexpected:
        raise ValueError(
            f"H-Net checkpoint: unexpected key(s) {', '.join(unexpected)}: HNetForCausalLM for this "
            f"config has no such parameter"
        )
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(
            f"H-Net checkpoint: missing key(s) {[_reference_name(m) for m in missing]} (for our {missing})"
        )
    return out


def load(folder, dtype: torch.dtype | None = None) -> tuple[HNetConfig, dict]:
    """``(HNetConfig, state dict)`` for :class:`HNetForCausalLM` from a release folder (see :func:`find_files`).
    ``dtype``: cast floating weights (``residual_proj`` stays at least fp32); None keeps the checkpoint's dtypes."""
    checkpoint, config_path = find_files(folder)
    config = config_from_reference(_reference_json(config_path))
    ref_sd = safe_pickle.load(checkpoint)
    if not isinstance(ref_sd, dict):
        raise ValueError(f"{checkpoint}: expected a state dict (a dict of tensors), got {type(ref_sd).__name__}")
    return config, convert_state_dict(ref_sd, config, dtype=dtype)


def _load_converted(folder, progress: bool = False) -> Converted:
    """The format table's loader (``from_pretrained`` and ``convert``): :func:`load` as a :class:`Converted`."""
    config, state_dict = load(folder)
    checkpoint, config_path = find_files(folder)
    return Converted(
        config=config,
        state_dict=state_dict,
        source=str(folder),
        description=FORMAT.description,
        notes=[
            f"weights from {os.path.basename(checkpoint)} (read without unpickling code), config from "
            f"{os.path.basename(config_path)}"
        ],
        tokenizer=ByteTokenizer(),
    )


FORMAT = CheckpointFormat(
    name="hnet-reference",
    description="H-Net reference release (cartesia-ai hnet_1stage_L/XL, hnet_2stage_L/XL, _chinese, _code: a .pt "
    "state dict and goombalab/hnet's configs/*.json)",
    detect=detect,
    load=_load_converted,
)
