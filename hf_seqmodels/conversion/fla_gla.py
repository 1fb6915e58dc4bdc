"""fla's GLA checkpoints (``model_type "gla"``: fla-hub/gla-340M-15B, gla-1.3B-100B, gla-2.7B-100B, gla-7B, ...) ->
:class:`~hf_seqmodels.GLAForCausalLM`.

Read from fla's own code (fla/models/gla, fla/layers/gla.py, fla/modules) and its history:

- the same computation as ours: per head ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` scaled by
  ``head_k_dim ** -0.5``, ``g_t = logsigmoid(gk_proj(x)) / 16`` (fla's fixed ``gate_logit_normalizer``; the gate's rank
  is read from ``gk_proj.0``), then ``RMSNorm(o) * weight * swish(g_proj(x))`` per head, ``o_proj``; pre-norm blocks
  with a SwiGLU MLP; one epsilon (``norm_eps``, ``rms_norm_eps`` in configs before May 2024) for every norm. Every
  ``attn_mode`` (chunk, fused_chunk, fused_recurrent) is a kernel choice for the same function.
- names: ``model.embeddings`` -> ``model.embed_tokens``; ``attn_norm``/``mlp_norm`` -> ``input_layernorm``/
  ``post_attention_layernorm``; ``attn.*`` -> ``mixer.*``; the gated norm ``g_norm_swish_gate`` (fused) or ``g_norm``
  -> ``mixer.g_norm``; short convolutions ``attn.{q,k,v}_conv1d`` -> ``mixer.{q,k,v}_conv.conv``.
- the MLP: ``gate_proj``/``up_proj``/``down_proj``, or before fla's February 2025 change one ``gate_proj`` ``[2I, H]``
  whose first half is the gate and second half the up projection; ``intermediate_size`` null means fla's rule,
  ``2/3 * hidden_size * hidden_ratio`` (ratio null: 4) rounded up to a multiple of 256.
- ``num_kv_heads < num_heads``: fla shares each key/value/gate head among ``num_heads / num_kv_heads`` query heads
  (repeated in place); the conversion repeats those weights the same way, which computes the same function with
  one key/value head per query head.
- ``elementwise_affine=false``: the gated norm has no weight in fla; ours gets ones.
- ``tie_word_embeddings``: kept (a tied ``lm_head.weight`` in the file is dropped; the embedding is used).
- ignored because fla's model code ignores them too, or they concern training only: ``use_gk``, ``use_gv``,
  ``fuse_norm``, ``fuse_swiglu``, ``fuse_cross_entropy``, ``fuse_linear_cross_entropy``, ``use_l2warp``,
  ``max_position_embeddings``, ``attn_mode``.

Refused by name (fla has them, our GLA does not): ``feature_map``, ``clamp_min``, ``use_output_gate=false``, a
``hidden_act`` other than swish, hybrid softmax-attention layers (``attn``), ``attnres_block_size``, the shared
short convolution of mid-2024 configs (``share_conv_kernel``), convolution biases, and the first layout of February
2024 (``num_attention_heads``, ``gla``/``gla_norm`` keys).
"""

from __future__ import annotations

import re

import torch

from .common import CheckpointFormat, Converted, check_state_dict, model_type_of, read_config, read_safetensors, refuse

WHAT = "fla GLA checkpoint"
ATTN_MODES = ("chunk", "fused_chunk", "fused_recurrent")
#: fla's fixed gate normalizer (GatedLinearAttention's ``gate_logit_normalizer``, not a config field)
GATE_LOGIT_NORMALIZER = 16.0

_RENAMES = [
    (r"model\.embeddings\.weight", "model.embed_tokens.weight"),
    (r"model\.norm\.weight", "model.norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.layers\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"model\.layers\.(\d+)\.mlp_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"model\.layers\.(\d+)\.attn\.([qkvgo])_proj\.weight", r"model.layers.\1.mixer.\2_proj.weight"),
    (r"model\.layers\.(\d+)\.attn\.gk_proj\.0\.weight", r"model.layers.\1.mixer.gk_proj.0.weight"),
    (r"model\.layers\.(\d+)\.attn\.gk_proj\.1\.(weight|bias)", r"model.layers.\1.mixer.gk_proj.1.\2"),
    (r"model\.layers\.(\d+)\.attn\.g_norm(?:_swish_gate)?\.weight", r"model.layers.\1.mixer.g_norm.weight"),
    (r"model\.layers\.(\d+)\.attn\.([qkv])_conv1d\.weight", r"model.layers.\1.mixer.\2_conv.conv.weight"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"model.layers.\1.mlp.\2_proj.weight"),
]
_RENAMES = [(re.compile(pattern), new) for pattern, new in _RENAMES]
#: our names of the weights fla shares among query heads when num_kv_heads < num_heads (k, v, the forget gate)
_SHARED_HEADS = re.compile(
    r"model\.layers\.\d+\.mixer\.(k_proj\.weight|v_proj\.weight|gk_proj\.1\.(weight|bias)|"
    r"k_conv\.conv\.weight|v_conv\.conv\.weight)$"
)


def detect(folder) -> bool:
    return model_type_of(folder) == "gla"


def fla_intermediate_size(hidden_size: int, hidden_ratio, intermediate_size):
    """fla's GatedMLP width: ``intermediate_size``, or ``2/3 * hidden_size * hidden_ratio`` (ratio None: 4) rounded
    up to a multiple of 256."""
    if intermediate_size is not None:
        return intermediate_size
    ratio = 4 if hidden_ratio is None else hidden_ratio
    width = int(hidden_size * ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


def check_options(cfg: dict) -> None:
    """Refuse, by name, every option of an fla GLA config that our GLA does not compute."""
    if "num_heads" not in cfg and "num_attention_heads" in cfg:
        raise refuse(
            WHAT,
            "num_attention_heads",
            cfg["num_attention_heads"],
            "this is fla's first GLA layout (February 2024: `gla`/`gla_norm` modules, no num_heads), "
            "which hf-seqmodels does not convert",
        )
    checks = [
        (
            "attn",
            cfg.get("attn"),
            cfg.get("attn") is not None,
            "hybrid models with softmax-attention layers have no hf-seqmodels GLA equivalent",
        ),
        (
            "attnres_block_size",
            cfg.get("attnres_block_size"),
            cfg.get("attnres_block_size") is not None,
            "attention residuals (AttnRes) are not implemented in hf-seqmodels",
        ),
        (
            "feature_map",
            cfg.get("feature_map"),
            cfg.get("feature_map") is not None,
            "our GLA applies no feature map to q and k",
        ),
        (
            "clamp_min",
            cfg.get("clamp_min"),
            cfg.get("clamp_min") is not None,
            "our GLA does not clamp the log forget gates",
        ),
        (
            "use_output_gate",
            cfg.get("use_output_gate"),
            cfg.get("use_output_gate", True) is False,
            "our GLA always has the swish output gate (g_proj)",
        ),
        (
            "hidden_act",
            cfg.get("hidden_act"),
            cfg.get("hidden_act", "swish") not in ("swish", "silu"),
            "fla uses it for both the MLP and the output gate; only swish (SiLU) is implemented",
        ),
        (
            "attn_mode",
            cfg.get("attn_mode"),
            cfg.get("attn_mode", "chunk") not in ATTN_MODES,
            f"fla's GLA knows {list(ATTN_MODES)}",
        ),
        (
            "share_conv_kernel",
            cfg.get("share_conv_kernel"),
            bool(cfg.get("use_short_conv")) and bool(cfg.get("share_conv_kernel", False)),
            "one short convolution on the hidden states before q/k/v (fla before July 2024) is not implemented; ours "
            "convolves q, k and v separately",
        ),
    ]
    for option, value, bad, why in checks:
        if bad:
            raise refuse(WHAT, option, value, why)


def gla_config(cfg: dict, gate_low_rank_dim: int, dtype=None):
    """Our GLAConfig for an fla GLA config dict (after :func:`check_options`)."""
    from hf_seqmodels.models.gla import GLAConfig

    hidden = cfg.get("hidden_size", 2048)
    eps = cfg["norm_eps"] if "norm_eps" in cfg else cfg.get("rms_norm_eps", 1e-6)
    kwargs = dict(
        vocab_size=cfg.get("vocab_size", 32000),
        hidden_size=hidden,
        num_hidden_layers=cfg.get("num_hidden_layers", 24),
        intermediate_size=fla_intermediate_size(hidden, cfg.get("hidden_ratio", 4), cfg.get("intermediate_size")),
        hidden_act="silu",
        rms_norm_eps=eps,
        initializer_range=cfg.get("initializer_range", 0.02),
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        num_heads=cfg.get("num_heads", 4),
        expand_k=cfg.get("expand_k", 0.5),
        expand_v=cfg.get("expand_v", 1.0),
        gate_low_rank_dim=gate_low_rank_dim,
        gate_logit_normalizer=GATE_LOGIT_NORMALIZER,
        use_short_conv=bool(cfg.get("use_short_conv", False)),
        conv_size=cfg.get("conv_size", 4),
    )
    if dtype is not None:
        kwargs["dtype"] = dtype
    return GLAConfig(**kwargs)


def _rename(name: str) -> str | None:
    for pattern, new in _RENAMES:
        if pattern.fullmatch(name):
            return pattern.sub(new, name)
    return None


def convert_state_dict(fla_state: dict, config, cfg: dict) -> tuple[dict, list[str]]:
    """fla GLA weights -> ours for ``config`` (our GLAConfig built from the fla config dict ``cfg``). Returns
    (state dict, notes)."""
    notes = []
    bias = [n for n in fla_state if re.fullmatch(r"model\.layers\.\d+\.attn\.[qkv]_conv1d\.bias", n)]
    if bias:
        raise refuse(WHAT, "conv_bias", True, f"our short convolutions have no bias ({bias[0]})")
    unknown = sorted(n for n in fla_state if _rename(n) is None)
    if unknown:
        raise ValueError(
            f"{WHAT}: weights of no known fla GLA layout: {unknown[:6]}{' ...' if len(unknown) > 6 else ''}"
        )
    state = {}
    for name, tensor in fla_state.items():
        state[_rename(name)] = tensor
    # the MLP: fused gate_proj [2I, H] (fla before February 2025) -> gate (first half), up (second half)
    fused = 0
    for i in range(config.num_hidden_layers):
        gate, up = f"model.layers.{i}.mlp.gate_proj.weight", f"model.layers.{i}.mlp.up_proj.weight"
        if gate in state and up not in state and state[gate].shape[0] == 2 * config.intermediate_size:
            state[gate], state[up] = state[gate].chunk(2, dim=0)
            fused += 1
    if fused:
        notes.append(f"MLP: the fused gate_proj [2I, H] of {fused} layer(s) split into gate_proj and up_proj")
    # grouped key/value heads: each shared head repeated for the query heads it serves
    heads = config.num_heads
    kv = cfg.get("num_kv_heads") or heads
    if kv != heads:
        if kv < 1 or heads % kv:
            raise ValueError(f"{WHAT}: num_heads ({heads}) must be a multiple of num_kv_heads ({kv})")
        groups = heads // kv
        for name in [n for n in state if _SHARED_HEADS.match(n)]:
            t = state[name]
            state[name] = t.reshape(kv, t.shape[0] // kv, *t.shape[1:]).repeat_interleave(groups, dim=0).flatten(0, 1)
        notes.append(
            f"num_kv_heads={kv}: each key/value/forget-gate head repeated for its {groups} query heads "
            "(same function; the model has one key/value head per query head)"
        )
    # the gated norm without weights (elementwise_affine false): ones
    value_dim = int(config.hidden_size * config.expand_v)
    affine = cfg.get("elementwise_affine", True)
    unweighted = (
        []
        if affine
        else [i for i in range(config.num_hidden_layers) if f"model.layers.{i}.mixer.g_norm.weight" not in state]
    )
    for i in unweighted:
        ref = state.get(f"model.layers.{i}.mixer.o_proj.weight")
        dtype = ref.dtype if ref is not None else torch.float32
        state[f"model.layers.{i}.mixer.g_norm.weight"] = torch.ones(value_dim // heads, dtype=dtype)
    if unweighted:
        notes.append(
            f"gated norms without weights (elementwise_affine=false) in {len(unweighted)} layer(s): unit weights"
        )
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state, notes


def load(folder, progress: bool = False) -> Converted:
    """An fla GLA folder (config.json + safetensors) -> :class:`Converted` (our GLAConfig and state dict)."""
    from hf_seqmodels.models.gla import GLAForCausalLM

    cfg = read_config(folder)
    if cfg is None or cfg.get("model_type") != "gla":
        raise ValueError(f"{folder!r} is not an fla GLA checkpoint (config.json with model_type 'gla')")
    check_options(cfg)
    fla_state = read_safetensors(folder, progress=progress)
    low_rank = fla_state.get("model.layers.0.attn.gk_proj.0.weight")
    if low_rank is None:
        raise ValueError(f"{WHAT} {folder!r}: no model.layers.0.attn.gk_proj.0.weight (not fla's GLA layout)")
    dtype = next(iter(fla_state.values())).dtype
    config = gla_config(cfg, gate_low_rank_dim=low_rank.shape[0], dtype=dtype)
    state, notes = convert_state_dict(fla_state, config, cfg)
    check_state_dict(GLAForCausalLM, config, state, f"{WHAT} {folder!r}")
    return Converted(
        config=config, state_dict=state, source=str(folder), description="fla GLA (model_type 'gla')", notes=notes
    )


FORMAT = CheckpointFormat(
    name="fla-gla",
    description="fla GLA (model_type 'gla': fla-hub/gla-340M-15B, gla-1.3B-100B, gla-2.7B-100B, gla-7B, ...)",
    detect=detect,
    load=load,
    model_types=("gla",),
)
