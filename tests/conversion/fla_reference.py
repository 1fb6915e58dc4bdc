"""fla's own GLA model on a CPU, for the conversion tests: its Triton-only pieces swapped for plain torch.

What is swapped (:func:`fla_on_cpu`, undone on exit), and by what:

- the GLA kernels ``fla.layers.gla.chunk_gla``, ``fused_chunk_gla`` and ``fused_recurrent_gla`` -> fla's own plain
  reference recurrence ``fla.ops.gla.naive.naive_recurrent_gla`` (same ``[B, T, H, K]`` layout, same default scale
  ``head_k_dim ** -0.5``);
- ``fla.modules.RMSNorm.forward`` (the block norms, with their fused residual add, and the gated norm's RMSNorm
  when ``fuse_norm=False``) -> fla's own ``fla.modules.norm.layernorm.rms_norm_ref`` (upcast to fp32);
- ``fla.modules.FusedRMSNormGated.forward`` (``g_norm_swish_gate``) -> fla's own
  ``fla.modules.norm.layernorm_gated.rms_norm_ref(x, weight, bias, z=gate, norm_before_gate=True)``;
  a norm without weight (``elementwise_affine=False``) gets ones there, as fla's kernels skip the multiply;
- the output gate of the unfused path (``GatedLinearAttention.gate_fn``, fla's Triton swish) -> ``F.silu``;
- SwiGLU in ``GatedMLP`` (``fla.modules.mlp.swiglu`` / ``swiglu_linear``, Triton) -> ``silu(gate) * up`` (then
  ``down_proj``);
- ``ShortConvolution.forward`` (fla's Triton causal convolution) -> torch's own ``nn.Conv1d.forward`` of the same
  module (fla builds it with ``padding=kernel_size - 1``), its first T outputs, then SiLU.

Everything else (projections, gates, head reshapes, repeats of shared key/value heads, the residual stream, the
embeddings and head) is fla's code as it is.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F


def _ones_if_none(weight, x):
    return weight if weight is not None else torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)


@contextlib.contextmanager
def fla_on_cpu():
    import fla.layers.gla as fla_gla
    import fla.modules.mlp as fla_mlp
    from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
    from fla.modules.norm.layernorm import rms_norm_ref
    from fla.modules.norm.layernorm_gated import rms_norm_ref as gated_rms_norm_ref
    from fla.ops.gla.naive import naive_recurrent_gla

    def rms_norm(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm_ref(
            x, _ones_if_none(self.weight, x), self.bias, residual=residual, eps=self.eps, prenorm=prenorm, upcast=True
        )

    def gated_norm(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        assert residual is None and not prenorm
        return gated_rms_norm_ref(x, _ones_if_none(self.weight, x), self.bias, z=g, eps=self.eps, norm_before_gate=True)

    def gla(q, k, v, g=None, gk=None, initial_state=None, output_final_state=False, cu_seqlens=None, **kwargs):
        assert cu_seqlens is None and kwargs.get("scale") is None
        return naive_recurrent_gla(q, k, v, g if g is not None else gk, initial_state, output_final_state)

    def short_conv(self, x, residual=None, mask=None, cache=None, output_final_state=False, cu_seqlens=None, **kwargs):
        assert residual is None and mask is None and cache is None and cu_seqlens is None
        y = torch.nn.Conv1d.forward(self, x.transpose(1, 2))[..., : x.shape[1]]
        return F.silu(y.transpose(1, 2)), None

    saved = [
        (RMSNorm, "forward"),
        (FusedRMSNormGated, "forward"),
        (ShortConvolution, "forward"),
        (fla_mlp, "swiglu"),
        (fla_mlp, "swiglu_linear"),
        (fla_gla, "chunk_gla"),
        (fla_gla, "fused_chunk_gla"),
        (fla_gla, "fused_recurrent_gla"),
    ]
    before = [getattr(obj, name) for obj, name in saved]
    try:
        RMSNorm.forward, FusedRMSNormGated.forward, ShortConvolution.forward = rms_norm, gated_norm, short_conv
        fla_mlp.swiglu = lambda x, y: F.silu(x) * y
        fla_mlp.swiglu_linear = lambda x, y, weight, bias: F.linear(F.silu(x) * y, weight, bias)
        fla_gla.chunk_gla = fla_gla.fused_chunk_gla = fla_gla.fused_recurrent_gla = gla
        yield
    finally:
        for (obj, name), value in zip(saved, before):
            setattr(obj, name, value)


def fla_gla_model(**config):
    """fla's GLAForCausalLM from a small config, with O(1) random weights (fla's init, std 0.02, would make most terms
    too small to matter), in eval mode. Call inside :func:`fla_on_cpu`."""
    from fla.layers.gla import GatedLinearAttention
    from fla.models import GLAConfig, GLAForCausalLM

    model = GLAForCausalLM(GLAConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm_swish_gate" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(torch.randn_like(p))
            elif "embeddings" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 1.0 / math.sqrt(p.shape[-1] * (p.shape[1] if p.dim() == 3 else 1)))
    for module in model.modules():
        if isinstance(module, GatedLinearAttention) and not module.fuse_norm_and_gate:
            module.gate_fn = F.silu
    return model


@torch.no_grad()
def greedy(model, ids, steps: int, **kwargs):
    """Greedy decoding by full recomputation (no cache): the reference of ``generate(do_sample=False)``."""
    for _ in range(steps):
        logits = model(input_ids=ids, use_cache=False, **kwargs).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], 1)
    return ids


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def word_tokenizer(vocab_size: int, folder=None):
    """A small word-level fast tokenizer (``w3``, ``w4``, ... and three specials), saved into ``folder`` if given."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if folder is not None:
        fast.save_pretrained(folder)
    return fast
