"""Mamba-2 mixer: against transformers' own PyTorch path (copied weights), against an fp64 loop recomputed from the
weights (values and every gradient), cached decoding and prefill in pieces, left/right padding, init, bad arguments."""

import importlib.util
import math

import pytest
import torch
from reference import mamba2_loop
from transformers import Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.layers.mamba2 import Mamba2Mixer

pytestmark = pytest.mark.usefixtures("one_thread")


def make(
    hidden=32,
    d_state=8,
    expand=2,
    head_dim=16,
    n_groups=1,
    d_conv=4,
    proj_bias=False,
    conv_bias=True,
    dt="normal",
    dtype=torch.float32,
    **kw,
):
    """A mixer with every parameter redrawn at O(1) scale: gates neither saturated nor trivial, every term visible.
    dt="extreme": half the heads get dt ~ 1e-5 (state kept), half dt ~ 8 with A up to 16 (state wiped each step)."""
    m = Mamba2Mixer(
        hidden,
        d_state=d_state,
        expand=expand,
        head_dim=head_dim,
        n_groups=n_groups,
        d_conv=d_conv,
        proj_bias=proj_bias,
        conv_bias=conv_bias,
        **kw,
    )
    H = m.num_heads
    with torch.no_grad():
        m.in_proj.weight.copy_(torch.randn_like(m.in_proj.weight) / math.sqrt(hidden))
        m.conv1d.weight.copy_(torch.randn_like(m.conv1d.weight) / math.sqrt(d_conv))
        m.out_proj.weight.copy_(torch.randn_like(m.out_proj.weight) / math.sqrt(m.d_inner))
        for b in (m.in_proj.bias, m.conv1d.bias, m.out_proj.bias):
            if b is not None:
                b.copy_(torch.randn_like(b) * 0.5)
        m.D.copy_(torch.randn(H))
        m.norm.weight.copy_(1 + 0.5 * torch.randn(m.d_inner))
        if dt == "extreme":
            m.dt_bias.copy_(torch.where(torch.arange(H) % 2 == 0, torch.tensor(-11.0), torch.tensor(8.0)))
            m.A_log.copy_(torch.rand(H) * math.log(16.0))
        else:  # dt ~ softplus(N(-1, 1)), A in [0.02, 1]: decay over a 64-token chunk from ~1 to ~e^-20
            m.dt_bias.copy_(torch.randn(H) - 1)
            m.A_log.copy_(torch.empty(H).uniform_(math.log(0.02), 0.0))
    return m.to(dtype)


def hf_twin(m, chunk_size):
    cfg = Mamba2Config(
        hidden_size=m.hidden_size,
        state_size=m.d_state,
        expand=m.expand,
        head_dim=m.head_dim,
        num_heads=m.num_heads,
        n_groups=m.n_groups,
        conv_kernel=m.d_conv,
        use_bias=m.in_proj.bias is not None,
        use_conv_bias=m.conv1d.bias is not None,
        layer_norm_epsilon=m.norm.variance_epsilon,
        chunk_size=chunk_size,
        time_step_limit=m.time_step_limit,
        num_hidden_layers=1,
    )
    ref = HFMamba2Mixer(cfg, layer_idx=0).to(next(m.parameters()).dtype)
    ours, theirs = m.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    ref.load_state_dict(ours, strict=True)
    return ref


def hf_forward(ref, u):
    """transformers' plain-PyTorch path without a cache (``torch_forward`` on older versions; ``forward`` falls back
    to the same code when mamba_ssm / causal_conv1d are not installed)."""
    fwd = getattr(ref, "torch_forward", None)
    if fwd is None:
        if any(importlib.util.find_spec(p) is not None for p in ("mamba_ssm", "causal_conv1d")):
            pytest.skip(
                "transformers' Mamba2Mixer.forward would use mamba_ssm/causal_conv1d kernels, not its torch path"
            )
        fwd = ref.forward
    with torch.no_grad():
        return fwd(u)


def close(a, b, tol):
    err = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    assert err <= tol * max(1.0, scale), f"max error {err:.3g} (scale {scale:.3g})"


def loop_ref(m, u):
    return mamba2_loop(
        u, dict(m.state_dict()), m.n_groups, m.head_dim, m.d_state, m.d_conv, m.norm.variance_epsilon, m.time_step_limit
    )


# ---- 1. transformers' Mamba2Mixer with the same weights ----------------------------------------------------------
@pytest.mark.parametrize(
    "B,T,hidden,d_state,head_dim,n_groups,proj_bias,dt,limit",
    [
        (2, 1, 32, 8, 16, 1, False, "normal", None),
        (2, 37, 32, 8, 16, 2, True, "normal", None),
        (1, 130, 32, 16, 8, 2, False, "normal", None),  # 8 heads, beyond a 64-token kernel chunk
        (2, 70, 24, 8, 16, 1, True, "extreme", None),  # 3 heads
        (2, 45, 32, 8, 16, 4, False, "normal", (0.05, 0.5)),  # time_step_limit clamps
    ],
)
def test_matches_transformers(B, T, hidden, d_state, head_dim, n_groups, proj_bias, dt, limit):
    kw = {} if limit is None else {"time_step_limit": limit}
    m = make(hidden, d_state, 2, head_dim, n_groups, proj_bias=proj_bias, dt=dt, **kw)
    ref = hf_twin(m, chunk_size=16)
    u = torch.randn(B, T, hidden)
    with torch.no_grad():
        ours = m(u)
    close(ours, hf_forward(ref, u), 2e-5)


def test_state_dict_copies_back_from_transformers():
    m = make(n_groups=2, proj_bias=True)
    ref = hf_twin(make(n_groups=2, proj_bias=True), chunk_size=16)
    m.load_state_dict(ref.state_dict(), strict=True)
    u = torch.randn(1, 21, 32)
    with torch.no_grad():
        close(m(u), hf_forward(ref, u), 2e-5)


# ---- 2. fp64 loop from the equations -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "T,n_groups,proj_bias,dt", [(1, 1, False, "normal"), (37, 2, True, "normal"), (67, 1, False, "extreme")]
)
def test_matches_fp64_loop(T, n_groups, proj_bias, dt):
    m = make(d_state=8, head_dim=16, n_groups=n_groups, proj_bias=proj_bias, dt=dt, dtype=torch.float64)
    u = torch.randn(2, T, 32, dtype=torch.float64)
    cache = RecurrentCache(1)
    with torch.no_grad():
        out = m(u, cache=cache)
        ref, S = loop_ref(m, u)
    close(out, ref, 1e-10)
    close(cache.get(0, "ssm_state"), S, 1e-10)


@pytest.mark.parametrize("dt", ["normal", "extreme"])
def test_gradients_match_fp64_loop(dt):
    m = make(hidden=16, d_state=4, head_dim=8, n_groups=2, d_conv=3, proj_bias=True, dt=dt, dtype=torch.float64)
    u = torch.randn(2, 19, 16, dtype=torch.float64, requires_grad=True)
    wout = torch.randn(2, 19, 16, dtype=torch.float64)
    names, params = zip(*m.named_parameters())
    got = torch.autograd.grad((m(u) * wout).sum(), (u, *params))
    out, _ = mamba2_loop(
        u, dict(zip(names, params)), m.n_groups, m.head_dim, m.d_state, m.d_conv, m.norm.variance_epsilon
    )
    want = torch.autograd.grad((out * wout).sum(), (u, *params))
    for name, a, b in zip(("input", *names), got, want):
        assert b.abs().max() > 0, name
        err = (a - b).abs().max().item()
        assert err <= 1e-9 * max(1.0, b.abs().max().item()), f"{name}: {err:.3g}"


# ---- 3. cache and padding ----------------------------------------------------------------------------------------
def run_pieces(m, u, pieces, mask=None):
    cache, outs, seen = RecurrentCache(1), [], 0
    for n in pieces:
        am = None if mask is None else mask[:, : seen + n]
        outs.append(m(u[:, seen : seen + n], attention_mask=am, cache=cache))
        seen += n
    assert seen == u.shape[1]
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("pieces", [[1] * 20, [7, 1, 1, 1, 5, 1, 4], [13, 7]])
def test_cached_pieces_equal_full_forward(pieces):
    m = make(n_groups=2, proj_bias=True)
    u = torch.randn(2, 20, 32)
    with torch.no_grad():
        full, full_cache = run_pieces(m, u, [20])
        got, cache = run_pieces(m, u, pieces)
    close(got, full, 1e-5)
    close(cache.get(0, "ssm_state"), full_cache.get(0, "ssm_state"), 1e-5)
    assert cache.get(0, "ssm_state").dtype == torch.float32
    assert cache.get(0, "ssm_state").shape == (2, m.num_heads, m.d_state, m.head_dim)
    assert cache.get(0, "conv").shape == (2, m.conv_dim, m.d_conv - 1)


def test_left_padding_rows_equal_rows_alone():
    m = make(n_groups=2, proj_bias=True)
    T, extra, pads = 20, 3, (0, 4, 11)
    u = torch.randn(3, T + extra, 32)
    mask = torch.ones(3, T + extra, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    with torch.no_grad():
        got, cache = run_pieces(m, u, [T] + [1] * extra, mask)
        for b, p in enumerate(pads):
            alone, c1 = run_pieces(m, u[b : b + 1, p:], [T - p] + [1] * extra)
            close(got[b : b + 1, p:], alone, 1e-5)
            close(cache.get(0, "ssm_state")[b : b + 1], c1.get(0, "ssm_state"), 1e-5)


def test_right_padding_final_state_is_last_real_tokens_state():
    m = make(n_groups=1, proj_bias=True)
    T, lens = 20, (20, 13, 2)
    u = torch.randn(3, T, 32)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, :n] = 1
    nxt = torch.randn(3, 1, 32)
    with torch.no_grad():
        cache = RecurrentCache(1)
        got = m(u, attention_mask=mask, cache=cache)
        step = m(nxt, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1), cache=cache)
        for b, n in enumerate(lens):
            c1 = RecurrentCache(1)
            alone = m(u[b : b + 1, :n], cache=c1)
            close(got[b : b + 1, :n], alone, 1e-5)
            step_alone = m(nxt[b : b + 1], cache=c1)
            close(step[b : b + 1], step_alone, 1e-5)
            close(cache.get(0, "ssm_state")[b : b + 1], c1.get(0, "ssm_state"), 1e-5)
            close(cache.get(0, "conv")[b : b + 1], c1.get(0, "conv"), 1e-6)

    # and the state right after the padded prefill, before any further token
    with torch.no_grad():
        cache = RecurrentCache(1)
        m(u, attention_mask=mask, cache=cache)
        for b, n in enumerate(lens):
            c1 = RecurrentCache(1)
            m(u[b : b + 1, :n], cache=c1)
            close(cache.get(0, "ssm_state")[b : b + 1], c1.get(0, "ssm_state"), 1e-5)
            close(cache.get(0, "conv")[b : b + 1], c1.get(0, "conv"), 1e-6)


def test_bfloat16_runs_close_to_float32():
    m = make(n_groups=2)
    u = torch.randn(2, 30, 32)
    with torch.no_grad():
        ref = m(u)
        out = m.to(torch.bfloat16)(u.bfloat16())
    assert out.dtype == torch.bfloat16
    close(out, ref, 5e-2)


# ---- init --------------------------------------------------------------------------------------------------------
def test_init_matches_transformers_and_skips_loaded_tensors():
    m = Mamba2Mixer(64, d_state=16, head_dim=16, n_groups=2, dt_min=0.01, dt_max=0.2)
    H = m.num_heads
    assert torch.allclose(-torch.exp(m.A_log), -torch.arange(1, H + 1, dtype=torch.float32))
    assert torch.equal(m.D, torch.ones(H)) and torch.equal(m.norm.weight, torch.ones(m.d_inner))
    assert torch.equal(m.conv1d.bias, torch.zeros(m.conv_dim))
    bound = 1 / math.sqrt(m.d_conv)  # kaiming_uniform(a=sqrt(5)) on fan_in = d_conv
    assert m.conv1d.weight.abs().max() <= bound and m.conv1d.weight.std() > bound / 4
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert bool((dt >= 0.01 * (1 - 1e-5)).all() and (dt <= 0.2 * (1 + 1e-5)).all()) and dt.std() > 0
    for name in Mamba2Mixer.no_weight_decay_params:
        assert getattr(m, name)._no_weight_decay is True
    assert not hasattr(m.in_proj.weight, "_no_weight_decay")
    with torch.no_grad():
        m.A_log.fill_(3.0)
    m.A_log._is_hf_initialized = True  # as after loading from a checkpoint
    m.init_extra_weights()
    assert torch.equal(m.A_log, torch.full((H,), 3.0))
    meta = Mamba2Mixer(64, d_state=16, head_dim=16, n_groups=2, dt_min=0.01, dt_max=0.2).to("meta")
    meta.init_extra_weights()  # must not fail on the meta device


# ---- 4. bad arguments --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(hidden_size=32, head_dim=24), "head_dim"),
        (dict(hidden_size=32, head_dim=16, n_groups=3), "n_groups"),
        (dict(hidden_size=32, d_state=0), "d_state"),
        (dict(hidden_size=32, head_dim=16, d_conv=0), "d_conv"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(hidden_size=32, head_dim=16, expand=-1), "expand"),
        (dict(hidden_size=32, head_dim=16, chunk_size=0), "chunk_size"),
        (dict(hidden_size=32, head_dim=16, dt_min=0.2, dt_max=0.1), "dt_min"),
        (dict(hidden_size=32, head_dim=16, dt_init_floor=0.0), "dt_init_floor"),
        (dict(hidden_size=32, head_dim=16, time_step_limit=(1.0, 0.5)), "time_step_limit"),
        (dict(hidden_size=32, head_dim=16, norm_eps=0.0), "norm_eps"),
    ],
)
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        Mamba2Mixer(**kw)
