"""S4D against two fp64 references written from the paper's equations (a complex recurrence loop, and the
Vandermonde convolution kernel applied by FFT as state-spaces/s4 does), values and gradients; cached decoding,
padding and packed sequences against the full forward; the LegS initialisation against an eigen-decomposition of the
HiPPO-LegS matrix; the parameter groups; an H-Net with ``s`` layers."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_seqmodels import HNetConfig, HNetForCausalLM, RecurrentCache, S4DConfig, S4DForCausalLM
from hf_seqmodels.layers.s4d import S4D
from hf_seqmodels.training import s4d_parameter_groups

# -- references (they read the layer's parameters, never call its code) --------------------------------------------


def _params(layer):
    """The layer's parameters in fp64 (C complex), still attached to the graph."""
    p = {n: t.double() for n, t in layer.named_parameters()}
    p["C"] = torch.complex(p["C"][..., 0], p["C"][..., 1])
    return p


def _readout(p, y, u):
    """``y + D u -> GELU -> Linear(H, 2H) -> GLU``, written out."""
    z = F.gelu(y + p["D"] * u) @ p["output_linear.weight"].T + p["output_linear.bias"]
    H = u.shape[-1]
    return z[..., :H] * torch.sigmoid(z[..., H:])


def s4d_loop(layer, u, state=None):
    """u ``[T, H]`` fp64 -> (out ``[T, H]``, final complex state ``[H, N/2]``): the complex ZOH recurrence."""
    p = _params(layer)
    A = -torch.exp(p["log_A_real"]) + 1j * p["A_imag"]
    dtA = torch.exp(p["log_dt"])[:, None] * A
    Ab, Bb = torch.exp(dtA), (torch.exp(dtA) - 1) / A
    x = torch.zeros_like(A) if state is None else state
    ys = []
    for t in range(u.shape[0]):
        x = Ab * x + Bb * u[t][:, None]
        ys.append(2 * (p["C"] * x).sum(-1).real)
    return _readout(p, torch.stack(ys), u), x


def s4d_convolution(layer, u):
    """u ``[T, H]`` fp64 -> out ``[T, H]``: the reference's kernel ``K_l = 2 Re sum_n C_n (e^{dt A_n} - 1) / A_n
    e^{dt A_n l}`` and a causal convolution by FFT (state-spaces/s4 ``models/s4/s4d.py``)."""
    p = _params(layer)
    L = u.shape[0]
    A = -torch.exp(p["log_A_real"]) + 1j * p["A_imag"]
    dtA = torch.exp(p["log_dt"])[:, None] * A
    K = 2 * torch.einsum("hn,hnl->hl", p["C"] * (torch.exp(dtA) - 1) / A, torch.exp(dtA[..., None] * torch.arange(L)))
    y = torch.fft.irfft(torch.fft.rfft(K.real, n=2 * L) * torch.fft.rfft(u.T, n=2 * L), n=2 * L)[..., :L].T
    return _readout(p, y, u)


def randomize(layer):
    """O(1) noise on every parameter (so every term matters), dt kept in a range where the state carries far."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            fan_in = p.shape[-1] if p.dim() > 1 and name.startswith("output") else 1
            p.add_(torch.randn_like(p) / math.sqrt(fan_in))
        layer.log_dt.copy_(torch.empty_like(layer.log_dt).uniform_(math.log(0.02), math.log(0.5)))
    return layer


def _grads(out, cot, tensors):
    return torch.autograd.grad((out * cot).sum(), tensors)


# -- the layer against the references --------------------------------------------------------------------------------


@pytest.mark.parametrize("ssm_init", ["lin", "legs"])
@pytest.mark.parametrize("T", [1, 37])
def test_layer_matches_loop_and_convolution_values_and_gradients(ssm_init, T):
    layer = randomize(S4D(6, d_state=10, ssm_init=ssm_init)).double()
    u = torch.randn(2, T, 6, dtype=torch.float64, requires_grad=True)
    out = layer(u)
    cot = torch.randn_like(out)
    params = list(layer.parameters())
    got = _grads(out, cot, [u, *params])
    for ref_fn in (lambda x: s4d_loop(layer, x)[0], lambda x: s4d_convolution(layer, x)):
        x = u.detach().requires_grad_(True)
        ref = torch.stack([ref_fn(x[b]) for b in range(2)])
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        want = _grads(ref, cot, [x, *params])
        for name, g, w in zip(["input"] + [n for n, _ in layer.named_parameters()], got, want):
            assert float(w.abs().max()) > 0, name
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-9, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_input_and_extreme_steps(dtype):
    """fp32 state space with steps from 1e-6 (where ``e^{dt A} - 1`` cancels unless computed as expm1) to 150 (the
    state forgets at once) and fast rotations, against the fp64 loop."""
    layer = randomize(S4D(5, d_state=8))
    with torch.no_grad():
        layer.log_dt.copy_(torch.log(torch.tensor([1e-6, 1e-3, 0.3, 4.0, 150.0])))
        layer.A_imag[1].mul_(300.0)
        layer.C.mul_(3.0)
    u = torch.randn(3, 41, 5)
    out = layer.to(dtype)(u.to(dtype))
    assert out.dtype == dtype
    ref = torch.stack([s4d_loop(layer, u[b].double())[0] for b in range(3)]).detach()
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))
    # the fp32 input map (e^{dt A} - 1) / A to fp32 accuracy at every step size (a tiny dt hides in the output)
    Ab, Bb = layer.float().discretize(torch.float32)
    p = _params(layer)
    A = -torch.exp(p["log_A_real"]) + 1j * p["A_imag"]
    dtA = torch.exp(p["log_dt"])[:, None] * A
    want = (
        torch.expm1(dtA.real) * torch.cos(dtA.imag)
        - 2 * torch.sin(dtA.imag / 2) ** 2
        + 1j * torch.exp(dtA.real) * torch.sin(dtA.imag)
    ) / A
    torch.testing.assert_close(torch.view_as_complex(Bb.double()), want.detach(), rtol=1e-5, atol=0)
    exp_dtA = torch.view_as_real(torch.exp(dtA)).reshape(-1, 2).detach()
    torch.testing.assert_close(Ab[:, :, 0].double(), exp_dtA, rtol=1e-6, atol=1e-6)  # (Re, Im) of e^{dt A}


@pytest.mark.cuda
def test_cuda_triton_scan_matches_fp64_loop():
    layer = randomize(S4D(16, d_state=32))
    u = torch.randn(2, 300, 16)
    ref = torch.stack([s4d_loop(layer, u[b].double())[0] for b in range(2)]).detach()
    out = layer.cuda()(u.cuda()).cpu().double()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_cached_decoding_equals_full_forward_and_state_is_the_loops():
    layer = randomize(S4D(4, d_state=6, layer_idx=1)).double()
    u = torch.randn(2, 19, 4, dtype=torch.float64)
    full = layer(u)
    for prefill in (0, 7):
        cache = RecurrentCache(2)
        outs = [layer(u[:, :prefill], cache=cache)] if prefill else []
        outs += [layer(u[:, t : t + 1], cache=cache) for t in range(prefill, 19)]
        torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
        state = cache.get(1, "state")
        assert state.shape == (2, 4 * 3, 2)
        want = s4d_loop(layer, u[1])[1].reshape(-1)
        torch.testing.assert_close(torch.complex(state[1, :, 0], state[1, :, 1]), want.detach())


def test_padding_anywhere_equals_the_row_alone_and_continues_its_state():
    layer = randomize(S4D(4, d_state=6)).double()
    u = torch.randn(3, 13, 4, dtype=torch.float64)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[0, :5] = 0  # left
    mask[1, 9:] = 0  # right
    mask[2, 3:6] = 0  # inside
    cache = RecurrentCache(1)
    out = layer(u, attention_mask=mask, cache=cache)
    nxt = torch.randn(3, 1, 4, dtype=torch.float64)
    step = layer(nxt, attention_mask=torch.ones(3, 14, dtype=torch.long), cache=cache)
    for b in range(3):
        real = mask[b].bool()
        alone = layer(u[b : b + 1, real])
        torch.testing.assert_close(out[b : b + 1, real], alone, rtol=1e-10, atol=1e-10)
        both = layer(torch.cat((u[b : b + 1, real], nxt[b : b + 1]), 1))
        torch.testing.assert_close(step[b], both[0, -1:], rtol=1e-10, atol=1e-10)


def test_packed_sequences_equal_each_alone():
    layer = randomize(S4D(4, d_state=6)).double()
    lengths = [5, 1, 8]
    u = torch.randn(1, sum(lengths), 4, dtype=torch.float64)
    cu = torch.tensor([0, 5, 6, 14])
    out = layer(u, cu_seqlens=cu)
    parts = [layer(u[:, s:e]) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())]
    torch.testing.assert_close(out, torch.cat(parts, 1), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="cu_seqlens"):
        layer(u, cu_seqlens=cu, cache=RecurrentCache(1))


# -- initialisation --------------------------------------------------------------------------------------------------


def _legs_eigen(N):
    """HiPPO-LegS from its definition, its normal part A + P P^T, and that part's eigenpairs (general solver)."""
    n = torch.arange(N, dtype=torch.float64)
    A = -torch.sqrt((2 * n[:, None] + 1) * (2 * n[None, :] + 1)) * (n[:, None] > n[None, :]) - torch.diag(n + 1)
    P = torch.sqrt(n + 0.5)
    w, V = torch.linalg.eig(A + P[:, None] * P[None, :])
    return w, V, torch.sqrt(2 * n + 1)


def test_init_lin_and_legs_and_dt_range():
    lin = S4D(7, d_state=12, dt_min=1e-3, dt_max=1e-1)
    A = -torch.exp(lin.log_A_real) + 1j * lin.A_imag
    torch.testing.assert_close(A, (-0.5 + 1j * math.pi * torch.arange(6.0)).expand(7, 6))
    dt = torch.exp(lin.log_dt.detach())
    assert bool(((dt >= 1e-3 - 1e-9) & (dt <= 1e-1 + 1e-9)).all()) and float(dt.max() / dt.min()) > 2

    N = 16
    torch.manual_seed(3)
    legs = S4D(3, d_state=N, ssm_init="legs")
    torch.manual_seed(3)
    plain = S4D(3, d_state=N)  # same draws: the LegS C is the plain C times LegS's B
    w, V, B = _legs_eigen(N)
    assert float((w.real + 0.5).abs().max()) < 1e-9  # the normal part is -I/2 + skew-symmetric
    neg = w.imag < 0
    torch.testing.assert_close(legs.log_A_real, torch.full((3, N // 2), math.log(0.5)))
    want = torch.sort(w.imag[neg]).values
    torch.testing.assert_close(legs.A_imag.double(), want.expand(3, N // 2), rtol=1e-5, atol=1e-5)
    # |V^* B| does not depend on the eigenvectors' phases; where it is <= 2 the clip of Im cannot act
    proj = (V.conj().T @ B.to(V.dtype)).abs()[neg][torch.argsort(w.imag[neg])]
    ratio = (torch.view_as_complex(legs.C.double()) / torch.view_as_complex(plain.C.double())).abs()
    small = proj <= 2
    assert bool(small.any())
    torch.testing.assert_close(ratio[:, small], proj[small].expand(3, -1), rtol=1e-4, atol=1e-5)
    assert bool((ratio[:, ~small] <= proj[~small] + 1e-4).all())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_state=7), "d_state must be even"),
        (dict(d_state=0), "d_state"),
        (dict(ssm_init="hippo"), "ssm_init"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min must be <= dt_max"),
        (dict(dt_min=-1.0), "dt_min"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        S4D(8, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        S4DConfig(hidden_size=8, **kwargs)


# -- model, training helper, H-Net -----------------------------------------------------------------------------------


def _tiny_model(**kw):
    config = S4DConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, d_state=6, **kw)
    return S4DForCausalLM(config)


def test_model_init_survives_post_init_and_save_load(tmp_path):
    model = _tiny_model(ssm_init="legs")
    mixer = model.model.layers[0].mixer
    assert torch.allclose(mixer.log_A_real, torch.full_like(mixer.log_A_real, math.log(0.5)))
    assert float(mixer.A_imag.max()) < 0 < float(mixer.A_imag.abs().min())  # LegS's negative-imaginary half
    model.save_pretrained(tmp_path)
    loaded = S4DForCausalLM.from_pretrained(tmp_path)
    for (n, p), q in zip(model.named_parameters(), loaded.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_parameter_groups_put_dt_and_A_at_low_lr_without_decay(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    for m in (model, S4DForCausalLM.from_pretrained(tmp_path)):  # by name: also after a load
        groups = s4d_parameter_groups(m, lr=1e-2, weight_decay=0.1)
        names = {id(p): n for n, p in m.named_parameters()}
        ssm = [g for g in groups if g["lr"] == 1e-3]
        assert len(ssm) == 1 and ssm[0]["weight_decay"] == 0.0
        got = sorted(names[id(p)].rsplit(".", 1)[-1] for p in ssm[0]["params"])
        assert got == sorted(["log_dt", "log_A_real", "A_imag"] * 2)
        rest = [g for g in groups if g is not ssm[0]]
        assert len(rest) == 1 and rest[0]["lr"] == 1e-2 and rest[0]["weight_decay"] == 0.1
        assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    assert s4d_parameter_groups(model, lr=5e-4)[1]["lr"] == 5e-4  # never above lr
    assert model.model.layers[0].mixer.A_imag._optim == {"weight_decay": 0.0}  # the reference's attribute
    # one AdamW step: the state-space parameters move by ~1e-3, the others by ~1e-2
    opt = torch.optim.AdamW(s4d_parameter_groups(model, lr=1e-2, weight_decay=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 32, (2, 9))
    model(ids, labels=ids).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        step = float((p - before[n]).abs().max())
        want = 1e-3 if n.rsplit(".", 1)[-1] in S4D.ssm_params else 1e-2
        assert want * 0.5 < step <= want * 1.01, (n, step)
    with pytest.raises(ValueError, match="no trainable S4D"):
        s4d_parameter_groups(torch.nn.Linear(2, 2), lr=1e-3)


def test_hnet_with_s4d_letters_runs_and_decodes():
    config = HNetConfig(
        arch_layout=["s1", ["S1"], "s1"],
        d_model=[16, 24],
        d_intermediate=[0, 32],
        attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [4, 6], "window_size": [3, -1]},
        initializer_range=0.2,
    )
    model = HNetForCausalLM(config).eval()
    assert sum(isinstance(m, S4D) for m in model.modules()) == 3
    x = torch.randint(0, 253, (2, 13))
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        cache = model.model.new_cache()
        steps = [model(x[:, :4], cache=cache, use_cache=True).logits]
        steps += [model(x[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(4, 13)]
    assert float((torch.cat(steps, 1) - full).abs().max()) < 1e-5 * float(full.abs().max())


def test_eval_rows_build_an_s4d_model():
    from hf_seqmodels.evaluation.mqar import make_mqar_config
    from hf_seqmodels.evaluation.state_tracking import MODELS, TASKS, make_model

    assert isinstance(make_mqar_config("s4d", d_model=16, layers=1, vocab_size=40), S4DConfig)
    assert "s4d" in MODELS
    model = make_model("s4d", TASKS["parity"], d_model=16, d_state=4)
    assert sum(isinstance(m, S4D) for m in model.modules()) == 1
    assert model(torch.randint(0, 2, (2, 5))).shape[:2] == (2, 5)
