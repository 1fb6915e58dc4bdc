"""The Aaren token mixer against plain fp64 softmax attention of its learned query over each prefix (values and
gradients, extreme scores), cached decoding and padding against the full forward, and its argument checks."""

import math

import pytest
import torch

from hf_seqmodels import AarenConfig, AarenForCausalLM
from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.compat import CACHE_KWARG
from hf_seqmodels.layers.aaren import Aaren


def make(hidden=12, heads=3, head_dim=5, query_scale=1.0, dtype=torch.float64):
    """An Aaren layer with every weight moved to fresh O(1) values (the query times ``query_scale``)."""
    layer = Aaren(hidden, heads, head_dim=head_dim).to(dtype)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            scale = query_scale if name == "query" else 1 / math.sqrt(p.shape[-1])
            p.copy_(torch.randn_like(p) * scale)
    return layer


def weights(layer):
    """The layer's parameters as fresh fp64 leaves (the reference's own graph)."""
    return {n: p.detach().double().requires_grad_(True) for n, p in layer.named_parameters()}


def attention_loop(layer, x, mask=None, W=None):
    """Softmax attention of each head's query over the prefix, in fp64, one output position at a time, from the
    weights alone: x ``[T, d]`` (mask ``[T]``, 1 = token) -> ``[T, d]``. A position with no token before it: 0."""
    W = weights(layer) if W is None else W
    x = x.double()
    T, H, D = x.shape[0], layer.num_heads, layer.head_dim
    k = (x @ W["k_proj.weight"].T).reshape(T, H, D)
    v = (x @ W["v_proj.weight"].T).reshape(T, H, D)
    outs = []
    for t in range(T):
        keep = [i for i in range(t + 1) if mask is None or mask[i]]
        o = torch.zeros(H, D, dtype=torch.float64)
        if keep:
            scores = torch.einsum("ihd,hd->ih", k[keep], W["query"]) / math.sqrt(D)  # [n, H]
            p = torch.softmax(scores, dim=0)
            o = torch.einsum("ih,ihd->hd", p, v[keep])
        outs.append(o.reshape(H * D) @ W["o_proj.weight"].T)
    return torch.stack(outs)


def close(a, b, tol):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"max error {err:.3g}"


@pytest.mark.parametrize("T", [1, 2, 37])
@pytest.mark.parametrize("query_scale", [1.0, 300.0])  # 300: scores in the hundreds (exp overflows fp64 at ~710)
def test_values_and_gradients_match_softmax_attention(T, query_scale):
    layer = make(query_scale=query_scale)
    x = torch.randn(2, T, 12, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    r = torch.randn_like(out)
    got = torch.autograd.grad((out * r).sum(), [x, *layer.parameters()])
    xr, W = x.detach().clone().requires_grad_(True), weights(layer)
    ref = torch.stack([attention_loop(layer, xr[b], W=W) for b in range(2)])
    close(out, ref, 1e-10)
    want = torch.autograd.grad((ref * r).sum(), [xr, *W.values()])
    for name, g, w in zip(["x", *W], got, want):
        if T > 1 or name not in ("query", "k_proj.weight"):  # one position: its weight is 1 whatever the score
            assert w.abs().max() > 0, name
        close(g, w, 1e-9)


def test_extreme_scores_stay_finite_in_float32():
    """Scores of size ~1e4 rising, falling and jumping (exp overflows float32 past ~88): the stabilised scan still
    gives the softmax, to float32 accuracy."""
    layer = make(query_scale=1.0, dtype=torch.float32)
    T, H, D = 29, layer.num_heads, layer.head_dim
    with torch.no_grad():
        layer.query.copy_(torch.randn(H, D) * 2e3)
    x = torch.randn(1, T, 12) * torch.linspace(0.1, 3.0, T)[None, :, None]  # scores growing along the sequence
    x[0, 5] *= 20  # a jump
    x[0, ::7] *= -1
    x.requires_grad_(True)
    out = layer(x)
    xd = x[0].detach().double().requires_grad_(True)
    ref = attention_loop(layer, xd)
    scores = torch.einsum("thd,hd->th", layer.k_proj(x[0]).reshape(T, H, D).double(), layer.query.double())
    assert scores.abs().max() > 1e3
    assert torch.isfinite(out).all()
    close(out[0], ref, 1e-4)
    r = torch.randn(T, 12)
    (gx,) = torch.autograd.grad((out[0] * r).sum(), [x])
    (rx,) = torch.autograd.grad((ref * r.double()).sum(), [xd])
    assert torch.isfinite(gx).all()
    # float32 scores of size 1e4 carry ~1e-3 absolute rounding, which moves the softmax weights by ~1e-3 relative
    # (any float32 implementation does); a broken stabilisation gives inf/nan or O(1) errors
    close(gx[0], rx, 1e-2)


def run_pieces(layer, x, pieces, mask=None):
    cache, outs, seen = RecurrentCache(1), [], 0
    for n in pieces:
        am = None if mask is None else mask[:, : seen + n]
        outs.append(layer(x[:, seen : seen + n], attention_mask=am, cache=cache))
        seen += n
    assert seen == x.shape[1]
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("pieces", [[1] * 13, [6, 1, 1, 5], [9, 4]])
def test_cached_pieces_equal_full_forward(pieces):
    layer = make(query_scale=30.0)
    x = torch.randn(2, 13, 12, dtype=torch.float64)
    with torch.no_grad():
        full, full_cache = run_pieces(layer, x, [13])
        got, cache = run_pieces(layer, x, pieces)
    close(got, full, 1e-12)
    for name in ("max", "state"):
        close(cache.get(0, name), full_cache.get(0, name), 1e-12)
    assert cache.get(0, "state").shape == (2, layer.num_heads, layer.head_dim + 1)
    assert cache.get(0, "max").shape == (2, layer.num_heads)


def test_float32_cache_state_under_bfloat16():
    layer = make(dtype=torch.bfloat16)
    x = torch.randn(2, 7, 12, dtype=torch.bfloat16)
    with torch.no_grad():
        out, cache = run_pieces(layer, x, [5, 1, 1])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert cache.get(0, "state").dtype == torch.float32 and cache.get(0, "max").dtype == torch.float32


def test_left_padding_rows_equal_reference_and_rows_alone():
    layer = make(query_scale=10.0)
    T, extra, pads = 11, 3, (0, 4, 10)
    x = torch.randn(3, T + extra, 12, dtype=torch.float64)
    mask = torch.ones(3, T + extra, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    with torch.no_grad():
        got, cache = run_pieces(layer, x, [T] + [1] * extra, mask)
        assert torch.isfinite(got).all()
        for b, p in enumerate(pads):
            close(got[b], attention_loop(layer, x[b], mask[b]), 1e-10)  # zeros at the padded positions
            alone, c1 = run_pieces(layer, x[b : b + 1, p:], [T - p] + [1] * extra)
            close(got[b : b + 1, p:], alone, 1e-12)
            close(cache.get(0, "state")[b : b + 1], c1.get(0, "state"), 1e-12)


def test_right_padding_keeps_the_last_tokens_state():
    layer = make()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        _, cache = run_pieces(layer, x, [9], mask)
        _, alone = run_pieces(layer, x[1:, :6], [6])
    close(cache.get(0, "state")[1:], alone.get(0, "state"), 1e-12)
    close(cache.get(0, "max")[1:], alone.get(0, "max"), 1e-12)


def test_model_generates_with_cache_equal_to_full_forward():
    config = AarenConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_heads=2, initializer_range=0.2)
    model = AarenForCausalLM(config).double().eval()
    ids = torch.randint(3, 40, (2, 10))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :6], use_cache=True)
        steps = [out.logits]
        cache = getattr(out, CACHE_KWARG)
        for t in range(6, 10):
            out = model(ids[:, t : t + 1], use_cache=True, **{CACHE_KWARG: cache})
            steps.append(out.logits)
    close(torch.cat(steps, 1), full, 1e-10)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(hidden_size=10, num_heads=3), "num_heads"),
        (dict(hidden_size=12, num_heads=0), "num_heads"),
        (dict(hidden_size=12, num_heads=2, head_dim=0), "head_dim"),
    ],
)
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        Aaren(**kw)
    with pytest.raises(ValueError, match=name):
        AarenConfig(**kw)


def test_packed_sequences_are_refused():
    with pytest.raises(ValueError, match="cu_seqlens"):
        make()(torch.randn(1, 4, 12, dtype=torch.float64), cu_seqlens=torch.tensor([0, 2, 4]))


def test_hnet_with_aaren_layers_runs_and_decodes():
    from hf_seqmodels import HNetConfig, HNetForCausalLM

    config = HNetConfig(
        arch_layout=["a1", ["A1"], "a1"],
        d_model=[16, 24],
        d_intermediate=[0, 48],
        attn_cfg={"num_heads": [2, 3]},
        vocab_size=256,
    )
    model = HNetForCausalLM(config).double().eval()
    assert sum(isinstance(m, Aaren) for m in model.modules()) == 3
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


def test_eval_rows_build_aaren():
    from hf_seqmodels.evaluation.mqar import make_mqar_config
    from hf_seqmodels.evaluation.state_tracking import MODELS

    config = make_mqar_config("aaren", d_model=32, layers=1, vocab_size=50, heads=2)
    assert isinstance(config, AarenConfig) and config.num_heads == 2 and config.tie_word_embeddings
    assert "aaren" in MODELS
