"""The Llama-shaped decoder families a linearized model is converted from, and what differs between them.

Every family here has Llama's decoder layer: pre-norm RMSNorm, attention with RoPE over grouped-query heads, a
SwiGLU MLP. What differs is taken from transformers' own modeling module of the family, never re-derived: its rotary
embedding (every ``rope_type`` transformers supports for it, e.g. Llama 3's "llama3", Phi-3's "longrope" and partial
rotary), its ``apply_rotary_pos_emb``, its RMSNorm and its MLP (Phi-3's fused ``gate_up_proj``). So a linearized
model computes exactly what the teacher computes everywhere except in the attention it replaces.

| family | q/k/v bias | o bias | q/k norm | projections |
|---|---|---|---|---|
| llama (Llama 2/3.x, SmolLM2) | ``attention_bias`` | ``attention_bias`` | - | q_proj, k_proj, v_proj |
| mistral | - | - | - | q_proj, k_proj, v_proj |
| qwen2 (Qwen2, Qwen2.5) | yes | - | - | q_proj, k_proj, v_proj |
| qwen3 | ``attention_bias`` | ``attention_bias`` | RMSNorm per head, before RoPE | q_proj, k_proj, v_proj |
| phi3 | - | - | - | qkv_proj (fused, kept fused) |

The teacher's own sliding window (Mistral, Qwen2 with ``use_sliding_window``, Phi-3) is kept by the layers that stay
softmax attention in a hybrid layout (:func:`teacher_window`); the linearized layers use the method's window.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from transformers import CONFIG_MAPPING


@dataclass(frozen=True)
class DecoderFamily:
    model_type: str
    prefix: str  # transformers' class-name prefix: LlamaForCausalLM, Qwen3RMSNorm, ...
    qkv_bias: bool | None = None  # None: the config's ``attention_bias``
    o_bias: bool | None = None
    qk_norm: bool = False
    fused_qkv: bool = False
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj")  # the papers' q, k, v

    @property
    def modeling(self):
        return importlib.import_module(f"transformers.models.{self.model_type}.modeling_{self.model_type}")

    def component(self, name: str):
        """transformers' class (or function) of this family: ``"RotaryEmbedding"``, ``"MLP"``, ``"RMSNorm"``,
        ``"ForCausalLM"``; ``"apply_rotary_pos_emb"`` is the module's function."""
        return getattr(self.modeling, name if name.islower() else self.prefix + name)

    def config_class(self):
        return CONFIG_MAPPING[self.model_type]

    def biases(self, config) -> tuple[bool, bool]:
        """(bias on q, k, v; bias on o) for a config of this family (or a linearized config holding its fields)."""
        default = bool(getattr(config, "attention_bias", False))
        return (default if self.qkv_bias is None else self.qkv_bias), (default if self.o_bias is None else self.o_bias)


FAMILIES = {
    f.model_type: f
    for f in (
        DecoderFamily("llama", "Llama"),
        DecoderFamily("mistral", "Mistral", qkv_bias=False, o_bias=False),
        DecoderFamily("qwen2", "Qwen2", qkv_bias=True, o_bias=False),
        DecoderFamily("qwen3", "Qwen3", qk_norm=True),
        DecoderFamily("phi3", "Phi3", qkv_bias=False, o_bias=False, fused_qkv=True, lora_targets=("qkv_proj",)),
    )
}


def get_family(model_type, where: str = "linearize") -> DecoderFamily:
    """The family of ``model_type``, or a ValueError naming it and the supported ones."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"{where}: {model_type!r} is not a supported decoder family; supported: {sorted(FAMILIES)} "
            "(Llama 2/3.x and SmolLM2 are 'llama', Qwen2.5 is 'qwen2', Phi-3/3.5 is 'phi3')"
        )
    return FAMILIES[model_type]


def teacher_window(config, layer_idx: int) -> int | None:
    """The teacher's own attention window at ``layer_idx`` (None: global), as its modeling code reads it: per layer
    from ``layer_types`` where the family has them (Qwen2, Qwen3), else ``sliding_window`` for every layer."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window
