"""The GAM token mixer and block against an fp64 loop written from the reference's ``GAMBlock`` (values and
gradients), cached decoding, padding and packed sequences against the full forward, its receptive field, and its
argument checks."""

import math

import pytest
import torch

from hf_seqmodels import GAMConfig, GAMForCausalLM, GAMModel
from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.compat import CACHE_KWARG
from hf_seqmodels.layers.gam import GatedAssociativeMemory


def randomize(module):
    """Every weight moved to fresh O(1) values (LayerNorm weights around 1)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1] if p.dim() > 1 else 1))
    return module


def make_mixer(hidden=12, slots=7, kernel=3):
    return randomize(GatedAssociativeMemory(hidden, slots, kernel)).double()


def weights(module):
    return {n: p.detach().double().requires_grad_(True) for n, p in module.named_parameters()}


def mixer_loop(W, h, prefix="", start=0):
    """The reference's fusion on one row ``h`` ``[T, d]`` (already normalized), one position at a time: causal
    depthwise convolution (padded with zeros before ``start``, the row's first token), ``softmax(h M^T) M``, sigmoid
    gates."""
    conv_w, conv_b = W[prefix + "causal_conv.conv.weight"][:, 0], W[prefix + "causal_conv.conv.bias"]
    M, gw, gb = W[prefix + "memory_bank"], W[prefix + "gate.weight"], W[prefix + "gate.bias"]
    T, d = h.shape
    K = conv_w.shape[-1]
    outs = []
    for t in range(T):
        local = conv_b.clone()
        for j in range(K):  # tap j reads h[t - (K - 1) + j]
            i = t - (K - 1) + j
            if i >= start:
                local = local + conv_w[:, j] * h[i]
        scores = M @ h[t]  # [slots]
        p = torch.exp(scores - scores.max())
        retrieved = (p / p.sum()) @ M
        g = gw @ h[t] + gb
        outs.append(torch.sigmoid(g[:d]) * local + torch.sigmoid(g[d:]) * retrieved)
    return torch.stack(outs)


def block_loop(W, x, eps):
    """The reference's GAMBlock on one row ``x`` ``[T, d]``: ``x + fuse(LN1(x))``, then ``+ FFN(LN2(.))``."""

    def layer_norm(v, w, b):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(var + eps) * w + b

    x = x + mixer_loop(W, layer_norm(x, W["input_layernorm.weight"], W["input_layernorm.bias"]), prefix="mixer.")
    h = layer_norm(x, W["post_attention_layernorm.weight"], W["post_attention_layernorm.bias"])
    hidden = h @ W["mlp.fc_in.weight"].T + W["mlp.fc_in.bias"]
    gelu = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU, as nn.GELU()
    return x + gelu @ W["mlp.fc_out.weight"].T + W["mlp.fc_out.bias"]


def close(a, b, tol):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"max error {err:.3g}"


@pytest.mark.parametrize("T,kernel", [(1, 3), (2, 3), (23, 3), (9, 5)])
def test_mixer_values_and_gradients_match_loop(T, kernel):
    mixer = make_mixer(kernel=kernel)
    h = torch.randn(2, T, 12, dtype=torch.float64, requires_grad=True) * 2
    out = mixer(h)
    r = torch.randn_like(out)
    got = torch.autograd.grad((out * r).sum(), [h, *mixer.parameters()])
    hr, W = h.detach().clone().requires_grad_(True), weights(mixer)
    ref = torch.stack([mixer_loop(W, hr[b]) for b in range(2)])
    close(out, ref, 1e-12)
    want = torch.autograd.grad((ref * r).sum(), [hr, *W.values()])
    for name, g, w in zip(["h", *W], got, want):
        assert w.abs().max() > 0, name
        close(g, w, 1e-10)


def test_block_matches_the_reference_block():
    config = GAMConfig(vocab_size=20, hidden_size=12, num_hidden_layers=1, num_memory_slots=9, intermediate_size=20)
    block = randomize(GAMModel(config).layers[0]).double()
    x = torch.randn(2, 13, 12, dtype=torch.float64, requires_grad=True)
    out = block(x)
    r = torch.randn_like(out)
    got = torch.autograd.grad((out * r).sum(), [x, *block.parameters()])
    xr, W = x.detach().clone().requires_grad_(True), weights(block)
    ref = torch.stack([block_loop(W, xr[b], config.rms_norm_eps) for b in range(2)])
    close(out, ref, 1e-12)
    want = torch.autograd.grad((ref * r).sum(), [xr, *W.values()])
    for name, g, w in zip(["x", *W], got, want):
        assert w.abs().max() > 0, name
        close(g, w, 1e-10)


def test_extreme_inputs_saturate_without_nan():
    """Memory scores ~1e4 (exp overflows in fp64 too without the max shift): fp64 matches the loop exactly; fp32 is
    finite and matches it wherever fp32 rounding of the scores (~1e-2 nats here) cannot change the answer."""
    mixer = make_mixer()
    W = weights(mixer)
    h = torch.randn(1, 8, 12, dtype=torch.float64) * 1e4
    close(mixer(h)[0], mixer_loop(W, h[0]), 1e-12)

    def well_conditioned(row):  # top two memory scores > 20 nats apart; every |gate logit| > 10 (sigmoid' < 5e-5)
        top2 = (row @ W["memory_bank"].T).topk(2, dim=-1).values
        gates = row @ W["gate.weight"].T + W["gate.bias"]
        return bool((top2[:, 0] - top2[:, 1] > 20).all() and (gates.abs() > 10).all())

    h = torch.randn(1, 8, 12).mul(1e4).double()
    while not well_conditioned(h[0]):
        h = torch.randn(1, 8, 12).mul(1e4).double()
    out = mixer.float()(h.float())
    assert torch.isfinite(out).all()
    close(out[0], mixer_loop(W, h[0]), 1e-5)


def run_pieces(mixer, x, pieces, mask=None):
    cache, outs, seen = RecurrentCache(1), [], 0
    for n in pieces:
        am = None if mask is None else mask[:, : seen + n]
        outs.append(mixer(x[:, seen : seen + n], attention_mask=am, cache=cache))
        seen += n
    assert seen == x.shape[1]
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("pieces", [[1] * 11, [4, 1, 1, 5], [2, 9]])
def test_cached_pieces_equal_full_forward(pieces):
    mixer = make_mixer()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    with torch.no_grad():
        full, _ = run_pieces(mixer, x, [11])
        got, cache = run_pieces(mixer, x, pieces)
    close(got, full, 1e-12)
    assert cache.get(0, "conv").shape == (2, 12, 2)


def test_left_padding_rows_equal_reference_and_rows_alone():
    mixer = make_mixer()
    T, extra, pads = 10, 2, (0, 3, 9)
    x = torch.randn(3, T + extra, 12, dtype=torch.float64)
    mask = torch.ones(3, T + extra, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    W = weights(mixer)
    with torch.no_grad():
        got, _ = run_pieces(mixer, x, [T] + [1] * extra, mask)
        for b, p in enumerate(pads):
            close(got[b, p:], mixer_loop(W, x[b], start=p)[p:], 1e-12)
            alone, _ = run_pieces(mixer, x[b : b + 1, p:], [T - p] + [1] * extra)
            close(got[b : b + 1, p:], alone, 1e-12)


def test_packed_sequences_equal_separate_rows():
    mixer = make_mixer()
    lengths = [5, 1, 7]
    x = torch.randn(1, sum(lengths), 12, dtype=torch.float64)
    cu = torch.tensor([0, 5, 6, 13])
    with torch.no_grad():
        packed = mixer(x, cu_seqlens=cu)
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
            close(packed[:, s:e], mixer(x[:, s:e]), 1e-12)


def test_receptive_field_is_layers_times_kernel_minus_one():
    """What GAM cannot model: a token more than num_hidden_layers * (conv_kernel_size - 1) back has no effect."""
    config = GAMConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_memory_slots=8, initializer_range=0.5)
    model = GAMForCausalLM(config).double().eval()
    ids = torch.randint(3, 30, (1, 12))
    with torch.no_grad():
        base = model(ids).logits[0, -1]
        for back, changes in ((5, False), (4, True)):
            other = ids.clone()
            other[0, -1 - back] = (other[0, -1 - back] - 3 + 1) % 27 + 3
            moved = (model(other).logits[0, -1] - base).abs().max().item()
            assert (moved > 1e-6) == changes, (back, moved)


def test_model_generates_with_cache_equal_to_full_forward():
    config = GAMConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_memory_slots=8, initializer_range=0.2)
    model = GAMForCausalLM(config).double().eval()
    ids = torch.randint(3, 40, (2, 9))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :4], use_cache=True)
        steps, cache = [out.logits], getattr(out, CACHE_KWARG)
        for t in range(4, 9):
            out = model(ids[:, t : t + 1], use_cache=True, **{CACHE_KWARG: cache})
            steps.append(out.logits)
    close(torch.cat(steps, 1), full, 1e-10)


def test_reference_init_and_defaults():
    config = GAMConfig(hidden_size=64, num_hidden_layers=1, vocab_size=10)
    assert config.intermediate_size == 256 and config.hidden_act == "gelu" and config.mlp_bias
    mixer = GAMModel(config).layers[0].mixer
    assert mixer.memory_bank.shape == (512, 64) and mixer.causal_conv.kernel_size == 3
    bound = math.sqrt(6 / (512 + 64))  # Xavier-uniform
    assert mixer.memory_bank.abs().max() <= bound and mixer.memory_bank.std() > bound / 3


@pytest.mark.parametrize(
    "kw,name",
    [(dict(num_memory_slots=0), "num_memory_slots"), (dict(conv_kernel_size=0), "conv_kernel_size")],
)
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        GatedAssociativeMemory(8, **kw)
    with pytest.raises(ValueError, match=name):
        GAMConfig(hidden_size=8, **kw)


def test_hnet_with_gam_layers_runs_and_decodes():
    from hf_seqmodels import HNetConfig, HNetForCausalLM

    config = HNetConfig(arch_layout=["b1", ["B1"], "b1"], d_model=[16, 24], d_intermediate=[0, 48], vocab_size=256)
    model = HNetForCausalLM(config).double().eval()
    assert sum(isinstance(m, GatedAssociativeMemory) for m in model.modules()) == 3
    ids = torch.randint(3, 250, (2, 9))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :5], use_cache=True)
        steps, cache = [out.logits], getattr(out, CACHE_KWARG)
        for t in range(5, 9):
            out = model(ids[:, t : t + 1], use_cache=True, **{CACHE_KWARG: cache})
            steps.append(out.logits)
    assert torch.isfinite(full).all()
    close(torch.cat(steps, 1), full, 1e-8)


def test_eval_rows_build_gam():
    from hf_seqmodels.evaluation.mqar import make_mqar_config
    from hf_seqmodels.evaluation.state_tracking import MODELS

    config = make_mqar_config("gam", d_model=32, layers=1, vocab_size=50)
    assert isinstance(config, GAMConfig) and config.num_memory_slots == 512 and config.tie_word_embeddings
    assert "gam" in MODELS
