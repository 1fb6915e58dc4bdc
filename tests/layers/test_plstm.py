"""pLSTM-1D (Poeppel et al., 2025): the chunked kernel and the token mixer against plain fp64 loops over time written
from the equations (values and gradients, weights moved off their init, odd lengths, T = 1), decoding with the
cache, left padding, the P-/D-mode bounds on the transitions, and the errors on bad input."""

import math

import pytest
import torch
from reference_layers import _causal_conv_silu

from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.kernels.plstm import chunk_plstm
from hf_seqmodels.layers.plstm import PLSTM, plstm_transition
from hf_seqmodels.models.plstm import PLSTMConfig


def plstm_loop(q, k, v, s, t, m, d, scale, C=None):
    """One row, fp64, token by token: q, k [T, H, K]; v [T, H, JV, V]; s [T, H, JT, JV]; t [T, H, JT, JT];
    m [T, H, JO, JT]; d [T, H, JO, JV]. ``o_t = scale (M_t q_t C_{t-1} + (q_t.k_t) D_t v_t)``,
    ``C_t = T_t C_{t-1} + S_t k_t v_t^T``. Returns (o [T, H, JO, V], C [H, JT, K, V])."""
    T, H, K = q.shape
    JT, V = t.shape[-1], v.shape[-1]
    C = torch.zeros(H, JT, K, V, dtype=torch.float64) if C is None else C
    out = []
    for n in range(T):
        o = torch.zeros(H, m.shape[2], V, dtype=torch.float64)
        for h in range(H):
            read = torch.stack([q[n, h] @ C[h, i] for i in range(JT)])  # [JT, V]
            o[h] = scale * (m[n, h] @ read + (q[n, h] @ k[n, h]) * (d[n, h] @ v[n, h]))
        out.append(o)
        kv = k[n][:, None, :, None] * v[n][:, :, None, :]  # [H, JV, K, V]
        C = torch.einsum("hij,hjcv->hicv", t[n], C) + torch.einsum("hia,hacv->hicv", s[n], kv)
    return torch.stack(out), C


def random_inputs(B, T, H, K, V, JT, JV, JO):
    g = lambda *shape: torch.randn(*shape, dtype=torch.float64)  # noqa: E731
    a = g(B, T, H, JT, JT)
    t = a / (0.5 + a.abs().sum(-2, keepdim=True))  # any bounded dense transitions
    return (
        g(B, T, H, K),
        g(B, T, H, K),
        g(B, T, H, JV, V),
        torch.rand(B, T, H, JT, JV, dtype=torch.float64),
        t,
        g(B, T, H, JO, JT),
        g(B, T, H, JO, JV),
    )


@pytest.mark.parametrize("T,chunk_size", [(1, 4), (11, 4), (13, 32), (9, 1)])
def test_chunk_plstm_matches_the_loop_values_and_gradients(T, chunk_size):
    B, H, K, V, JT, JV, JO = 2, 2, 3, 5, 3, 2, 3
    inputs = [x.requires_grad_() for x in random_inputs(B, T, H, K, V, JT, JV, JO)]
    C0 = torch.randn(B, H, JT, K, V, dtype=torch.float64, requires_grad=True)
    o, final = chunk_plstm(*inputs, initial_state=C0, output_final_state=True, chunk_size=chunk_size)
    refs = [plstm_loop(*(x[b] for x in inputs), scale=K**-0.5, C=C0[b]) for b in range(B)]
    ref_o, ref_C = torch.stack([r[0] for r in refs]), torch.stack([r[1] for r in refs])
    torch.testing.assert_close(o, ref_o, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, ref_C, rtol=1e-10, atol=1e-10)
    wo, wc = torch.randn_like(o), torch.randn_like(final)
    grads = torch.autograd.grad((o * wo).sum() + (final * wc).sum(), [*inputs, C0])
    ref_grads = torch.autograd.grad((ref_o * wo).sum() + (ref_C * wc).sum(), [*inputs, C0])
    for name, a, b in zip("q k v s t m d C0".split(), grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_chunk_plstm_rejects_bad_shapes():
    inputs = list(random_inputs(1, 5, 2, 3, 4, 3, 1, 1))
    inputs[4] = inputs[4][..., :2]  # transition not JT x JT
    with pytest.raises(ValueError, match="`t` must have shape"):
        chunk_plstm(*inputs)
    with pytest.raises(ValueError, match="`chunk_size`"):
        chunk_plstm(*random_inputs(1, 5, 2, 3, 4, 3, 1, 1), chunk_size=0)


# ---------------------------------------------------------------------------------------------------------------
# The token mixer


def randomize(module):
    """O(1) noise on every parameter, so that every term (biases, norms, gates) matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1] if p.dim() > 1 else 1))
    return module


def plstm_layer_loop(layer, x):
    """The pLSTM mixer on one row ``x [T, d]`` in fp64, from its weights: projections, optional short convolutions,
    sigmoid source / mark / direct gates, the P-mode (``A / (1/2 + column sums of |A|)``) or D-mode
    (``diag(tanh(a))``) transition, the recurrence, the per-head RMSNorm gated by ``swish(x W_g)``, the output."""
    x = x.double()
    T = x.shape[0]
    H, K, V, JT, JV, JO = layer.num_heads, layer.head_k_dim, layer.head_v_dim, layer.jt, layer.jv, layer.jo
    w = lambda lin: lin.weight.double()  # noqa: E731
    q, k, v = x @ w(layer.q_proj).T, x @ w(layer.k_proj).T, x @ w(layer.v_proj).T
    if layer.use_short_conv:
        q = _causal_conv_silu(q, layer.q_conv.conv.weight.double())
        k = _causal_conv_silu(k, layer.k_conv.conv.weight.double())
        v = _causal_conv_silu(v, layer.v_conv.conv.weight.double())
    logits = (x @ w(layer.gate_proj).T + layer.gate_proj.bias.double()).view(T, H, -1)
    n_t = JT * JT if layer.transition_mode == "P" else JT
    ls, la, lm, ld = torch.split(logits, [JT * JV, n_t, JO * JT, JO * JV], dim=-1)
    if layer.transition_mode == "P":
        a = la.reshape(T, H, JT, JT)
        tr = torch.empty_like(a)
        for j in range(JT):  # transitions out of old channel j
            tr[..., :, j] = a[..., :, j] / (0.5 + a[..., :, j].abs().sum(-1, keepdim=True))
    else:
        tr = torch.zeros(T, H, JT, JT, dtype=torch.float64)
        for i in range(JT):
            tr[..., i, i] = torch.tanh(la[..., i])
    o, _ = plstm_loop(
        q.view(T, H, K),
        k.view(T, H, K),
        v.view(T, H, JV, V),
        torch.sigmoid(ls).reshape(T, H, JT, JV),
        tr,
        torch.sigmoid(lm).reshape(T, H, JO, JT),
        torch.sigmoid(ld).reshape(T, H, JO, JV),
        scale=K**-0.5,
    )
    o = o.reshape(T, H, JO * V)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.g_norm.variance_epsilon) * layer.g_norm.weight.double()
    o = o * torch.nn.functional.silu((x @ w(layer.g_proj).T).view(T, H, JO * V))
    return o.reshape(T, H * JO * V) @ w(layer.o_proj).T


def make_layer(mode="P", conv=False, chunk_size=4, **kw):
    args = dict(num_heads=2, head_k_dim=3, head_v_dim=4, transition_dim=3, source_dim=2, mark_dim=3)
    args.update(kw)
    return randomize(PLSTM(10, transition_mode=mode, use_short_conv=conv, conv_size=3, chunk_size=chunk_size, **args))


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("T", [1, 13])
def test_plstm_layer_matches_the_loop_values_and_gradients(mode, conv, T):
    layer = make_layer(mode, conv).double()
    x = torch.randn(2, T, 10, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    ref = torch.stack([plstm_layer_loop(layer, x[b]) for b in range(2)])
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    params = [x, *layer.parameters()]
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), params)
    ref_grads = torch.autograd.grad((ref * w).sum(), params)
    names = ["x", *(n for n, _ in layer.named_parameters())]
    for name, a, b in zip(names, grads, ref_grads):
        assert b.abs().max() > 0, f"{name} gets no gradient: the test would not see it"
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=f"gradient of {name}")


def test_plstm_transitions_are_bounded_in_each_mode():
    a = 100 * torch.randn(50, 4, 4, dtype=torch.float64)
    tp = plstm_transition(a, "P")
    assert (tp.abs().sum(-2) < 1).all()  # absolute column sums below one: ||T||_1 < 1
    assert (tp - torch.diag_embed(tp.diagonal(dim1=-2, dim2=-1))).abs().max() > 0.01  # and dense
    td = plstm_transition(a[..., 0], "D")
    assert (td.abs() <= 1).all() and torch.equal(td, torch.diag_embed(td.diagonal(dim1=-2, dim2=-1)))
    # extreme inputs: the state stays bounded, outputs stay finite
    layer = make_layer("P", chunk_size=8)
    out = layer(1e3 * torch.randn(2, 40, 10))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["P", "D"])
def test_plstm_decoding_with_the_cache_matches_the_full_forward(mode):
    layer = make_layer(mode, conv=True, chunk_size=4).double()
    x = torch.randn(2, 11, 10, dtype=torch.float64)
    full = layer(x)
    cache = RecurrentCache(1)
    steps = torch.cat([layer(x[:, i : i + 1], cache=cache) for i in range(11)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    cache = RecurrentCache(1)
    pre = layer(x[:, :7], cache=cache)
    assert cache.get(0, "state").shape == (2, 2, 3, 3, 4)  # fixed size: [B, H, JT, K, V]
    rest = torch.cat([layer(x[:, i : i + 1], cache=cache) for i in range(7, 11)], 1)
    torch.testing.assert_close(torch.cat([pre, rest], 1), full, rtol=1e-10, atol=1e-10)


def test_plstm_left_padding_matches_unpadded():
    layer = make_layer("P", conv=True).double()
    x = torch.randn(2, 9, 10, dtype=torch.float64)
    alone = layer(x[1:, 3:])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    padded = x.clone()
    padded[1, :3] = torch.randn(3, 10, dtype=torch.float64)  # garbage under the mask
    out = layer(padded, attention_mask=mask)
    torch.testing.assert_close(out[1:, 3:], alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[:1], layer(x[:1]), rtol=1e-10, atol=1e-10)


def test_plstm_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="transition_mode"):
        PLSTM(8, transition_mode="X")
    with pytest.raises((ValueError, TypeError), match="transition_dim"):
        PLSTM(8, transition_dim=0)
    with pytest.raises((ValueError, TypeError), match="transition_mode"):
        PLSTMConfig(hidden_size=8, transition_mode="p")
    with pytest.raises(ValueError, match="cu_seqlens"):
        PLSTM(8)(torch.randn(1, 3, 8), cu_seqlens=torch.tensor([0, 3]))


def test_hnet_with_plstm_layers_runs():
    from hf_seqmodels.models.hnet import HNetConfig, HNetForCausalLM

    config = HNetConfig(arch_layout=["p1", ["P1"], "p1"], d_model=[16, 24], d_intermediate=[0, 32], vocab_size=256)
    model = HNetForCausalLM(config)
    out = model(input_ids=torch.randint(0, 256, (2, 12)))
    assert out.logits.shape == (2, 12, 256) and torch.isfinite(out.logits).all()


def test_plstm_in_mqar_and_state_tracking():
    from hf_seqmodels.evaluation.mqar import make_mqar_config
    from hf_seqmodels.evaluation.state_tracking import MODELS, get_task, make_model

    config = make_mqar_config("plstm", 32, 1, 64)
    assert isinstance(config, PLSTMConfig) and config.use_short_conv and config.head_k_dim == 16
    assert "plstm" in MODELS
    task = get_task("parity")
    model = make_model("plstm", task, d_model=16, transition_mode="D")
    inputs, _ = task.data(2, 7)
    assert model(inputs).shape == (2, 7, 2)
    assert model.model.config.transition_mode == "D"
