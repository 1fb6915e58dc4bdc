"""The Liger checkpoints of OpenSparseLLMs/Linearization (``model_type "liger_gla"``: linear-moe-hub/Liger-GLA-8B, a
linearized Llama-3-8B) -> :class:`~hf_seqmodels.LigerForCausalLM`.

A Liger-GLA folder is a Llama folder: Llama's config fields (plus ``pool_size``, ``expand_k``, ``expand_v``,
``hidden_ratio``, which its code does not read) and Llama's weights under Llama's names (Liger adds no parameters;
RoPE's ``inv_freq`` is not saved). Read from ``liger/models/liger_gla/modeling_liger_gla.py``, each layer computes

- ``g = AdaptiveAvgPool1d(num_key_value_heads * head_dim)(k)``: a pooling of k's ``num_key_value_heads * head_dim``
  features to as many, which is k itself; ``log_gate = logsigmoid(g) / 16``;
- gated linear attention on ``softmax(q)``, ``softmax(k)`` over each head's features (no RoPE), key/value heads
  repeated for grouped queries, score scale 1;
- softmax attention with RoPE through flash-attn with ``sliding_window=64``, which transformers 4.47 (the version
  the released checkpoint names) passes as ``window_size=(64, 64)``: each query sees itself and the 64 keys before
  it, 65 keys in all, scaled by ``head_dim ** -0.5``;
- ``o_proj(0.5 * window + 0.5 * linear)``.

So ours: ``LigerConfig(gla_weight=0.5, window_size=65, gla_scale=1.0, gate_logit_normalizer=16)`` on the Llama
family. The reference casts the mixed output to bf16 before ``o_proj`` (it only runs in bf16); ours keeps the
model's dtype.

Refused by name: Liger-GSA (``liger_gsa``: Gated Slot Attention, not implemented here), Liger-HGRN2
(``liger_hgrn2``), the Mistral/Qwen variants (``liger_mistral_gla``, ``liger_qwen2_gla``, ``liger_qwen3_gla``,
``liger_qwen3_moe_gla``: no released checkpoints, and their attention code differs per family, e.g. the Qwen3
variant drops Qwen3's q/k norms and adds q/k/v biases), ``attention_bias=true`` (Liger's projections have no
biases), and unmerged LoRA weights.
"""

from __future__ import annotations

from .common import CheckpointFormat, Converted, check_state_dict, model_type_of, read_config, read_safetensors, refuse

WHAT = "Liger checkpoint"
#: the flash-attn window of the reference (window_size=(64, 64)): the query and the 64 keys before it
WINDOW = 65
#: config fields of Liger's configs its attention code never reads
UNUSED_FIELDS = ("pool_size", "expand_k", "expand_v", "hidden_ratio")
REFUSED = {
    "liger_gsa": "Liger-GSA uses Gated Slot Attention (arXiv 2409.07146), which hf-seqmodels does not implement",
    "liger_hgrn2": "Liger-HGRN2 uses HGRN2's recurrence, which hf-seqmodels does not implement",
    "liger_mistral_gla": "only the Llama-based Liger-GLA (model_type 'liger_gla') is converted: the Mistral "
    "variant has no released checkpoint and was not checked against ours",
    "liger_qwen2_gla": "only the Llama-based Liger-GLA (model_type 'liger_gla') is converted: the Qwen2 variant has "
    "no released checkpoint and was not checked against ours",
    "liger_qwen3_gla": "only the Llama-based Liger-GLA (model_type 'liger_gla') is converted: the Qwen3 variant's "
    "attention drops Qwen3's q/k norms and adds q/k/v biases, which our Qwen3 family does not",
    "liger_qwen3_moe_gla": "Liger on Qwen3-MoE is not implemented in hf-seqmodels",
}


def detect(folder) -> bool:
    model_type = model_type_of(folder)
    return model_type == "liger_gla" or model_type in REFUSED


def liger_config(cfg: dict, source: str, dtype=None):
    """Our LigerConfig for a Liger-GLA config dict."""
    from transformers import LlamaConfig

    from hf_seqmodels.linearize.convert import teacher_fields
    from hf_seqmodels.models.liger import LigerConfig

    if cfg.get("attention_bias"):
        raise refuse(WHAT, "attention_bias", cfg["attention_bias"], "Liger-GLA's q/k/v/o projections have no biases")
    llama = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map", *UNUSED_FIELDS)}
    fields, rest = teacher_fields(LlamaConfig(**llama))
    for name in UNUSED_FIELDS:
        rest.pop(name, None)
    kwargs = dict(
        fields,
        window_size=WINDOW,
        gla_weight=0.5,
        gate_logit_normalizer=16.0,
        gla_scale=1.0,
        base_model_type="llama",
        base_config=rest,
        base_model_name_or_path=source,
    )
    if dtype is not None:
        kwargs["dtype"] = dtype
    return LigerConfig(**kwargs)


def load(folder, progress: bool = False) -> Converted:
    """A Liger-GLA folder (config.json + safetensors) -> :class:`Converted` (our LigerConfig and state dict)."""
    from hf_seqmodels.models.liger import LigerForCausalLM

    cfg = read_config(folder)
    model_type = cfg.get("model_type") if cfg else None
    if model_type in REFUSED:
        raise refuse(WHAT, "model_type", model_type, REFUSED[model_type])
    if model_type != "liger_gla":
        raise ValueError(f"{folder!r} is not a Liger-GLA checkpoint (config.json with model_type 'liger_gla')")
    state = read_safetensors(folder, progress=progress)
    lora = sorted(n for n in state if "lora_" in n or ".base_layer." in n)
    if lora:
        raise ValueError(
            f"{WHAT} {folder!r} holds unmerged LoRA weights ({lora[0]}, ...): merge them into the base "
            "weights first (PEFT: model.merge_and_unload()) and save again"
        )
    state = {n: t for n, t in state.items() if not n.endswith("rotary_emb.inv_freq")}  # recomputed, not weights
    dtype = next(iter(state.values())).dtype if state else None
    config = liger_config(cfg, str(folder), dtype=dtype)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    check_state_dict(LigerForCausalLM, config, state, f"{WHAT} {folder!r}")
    notes = [
        f"Liger-GLA semantics: gla_weight 0.5, window {WINDOW} keys (flash-attn window_size=(64, 64)), "
        "GLA score scale 1, log gates logsigmoid(k) / 16, softmax feature maps"
    ]
    return Converted(
        config=config,
        state_dict=state,
        source=str(folder),
        description="Liger-GLA (OpenSparseLLMs/Linearization, model_type 'liger_gla')",
        notes=notes,
    )


FORMAT = CheckpointFormat(
    name="liger",
    description="Liger-GLA (OpenSparseLLMs/Linearization, model_type 'liger_gla': linear-moe-hub/Liger-GLA-8B)",
    detect=detect,
    load=load,
    model_types=("liger_gla", *REFUSED),
)
