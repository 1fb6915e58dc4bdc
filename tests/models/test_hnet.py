"""H-Net: dynamic chunking against fp64 references from the paper's equations, cached decoding, padding, presets."""

import math

import pytest
import torch
from reference_hnet import attention_loop, boundary_probs_loop, hnet_stage_loop, rotary_loop
from transformers import AutoModelForCausalLM

import hf_seqmodels
from hf_seqmodels import HNetConfig, HNetForCausalLM
from hf_seqmodels.layers.attention import CausalSelfAttention
from hf_seqmodels.layers.hnet import ratio_loss, smooth_chunks
from hf_seqmodels.models.hnet import PRESETS, modeling_hnet
from hf_seqmodels.training import hnet_parameter_groups

_SMALL = dict(ssm_cfg={"d_state": 8, "head_dim": 8, "expand": 2}, initializer_range=0.2)


def tiny(stages=1, **kw):
    if stages == 1:
        base = dict(
            arch_layout=["m1", ["T1"], "m1"],
            d_model=[16, 24],
            d_intermediate=[0, 32],
            attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [4, 6], "window_size": [3, -1]},
        )
    else:
        base = dict(
            arch_layout=["m1", ["T1", ["T1"], "g1"], "m1"],
            d_model=[16, 24, 32],
            d_intermediate=[0, 32, 48],
            attn_cfg={"num_heads": [2, 2, 2], "rotary_emb_dim": [4, 4, 8], "window_size": [3, 4, -1]},
            gla_cfg={"num_heads": 2},
        )
    return HNetConfig(**{**_SMALL, **base, **kw})


def randomize(model, scale=1.0):
    """O(1) random weights everywhere (routers, residual projections and pad vectors included) so every term of
    every equation matters and boundaries fall unevenly."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn_like(p) * scale / math.sqrt(fan_in))
            if name.endswith("A_log"):
                p.copy_(torch.rand_like(p) * 2 - 1)
    return model


def ids(B, T):
    return torch.randint(0, 253, (B, T))


# -- the pieces ------------------------------------------------------------------------------------------------------
def test_smoothing_ema_matches_loop_values_and_gradients():
    B, M, D = 3, 11, 5
    z = torch.randn(B, M, D, dtype=torch.float64, requires_grad=True)
    p = torch.rand(B, M, dtype=torch.float64)
    p[0, :3] = torch.tensor([0.0, 1.0, 0.5])  # clamped extremes
    p.requires_grad_(True)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[1, :4] = False  # padding first (right-aligned rows)
    initial = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    out = smooth_chunks(z, p, mask, initial)

    def loop():
        rows = []
        for b in range(B):
            prev, seq = initial[b], []
            for j in range(M):
                if mask[b, j]:
                    P = p[b, j].clamp(1e-4, 1 - 1e-4)
                    prev = P * z[b, j] + (1 - P) * prev
                seq.append(prev)
            rows.append(torch.stack(seq))
        return torch.stack(rows)

    ref = loop()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    g = torch.autograd.grad((out * w).sum(), (z, p, initial))
    g_ref = torch.autograd.grad((ref * w).sum(), (z, p, initial))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("N", [2.0, 4.0, 6.0])
def test_ratio_loss_is_minimal_at_the_target(N):
    xs = torch.linspace(0.01, 0.99, 981, dtype=torch.float64)
    losses = []
    for x in xs:  # F = G = x: boundaries at the rate the router's probabilities say
        p = torch.full((1, 1000), float(x), dtype=torch.float64)
        b = torch.arange(1000)[None] < int(round(float(x) * 1000))
        losses.append(float(ratio_loss(p, b, None, N)[0]))
    best = float(xs[int(torch.tensor(losses).argmin())])
    assert abs(best - 1 / N) < 2e-3, (best, 1 / N)
    assert abs(min(losses) - 1.0) < 1e-4
    # F and G over real tokens only
    p = torch.tensor([[0.9, 0.2, 0.2, 0.7]])
    b = p > 0.5
    mask = torch.tensor([[False, True, True, True]])
    loss, frac = ratio_loss(p, b, mask, N)
    F, G = 1 / 3, (0.2 + 0.2 + 0.7) / 3
    assert abs(float(frac) - F) < 1e-6
    assert abs(float(loss) - N / (N - 1) * ((N - 1) * F * G + (1 - F) * (1 - G))) < 1e-6
    # per sequence (the paper) vs over the batch (the reference's training code)
    p2, b2 = torch.tensor([[0.9, 0.2], [0.8, 0.9]]), torch.tensor([[True, False], [True, True]])
    L = lambda F, G: N / (N - 1) * ((N - 1) * F * G + (1 - F) * (1 - G))  # noqa: E731
    assert abs(float(ratio_loss(p2, b2, None, N)[0]) - (L(0.5, 0.55) + L(1.0, 0.85)) / 2) < 1e-6
    assert abs(float(ratio_loss(p2, b2, None, N, reduction="batch")[0]) - L(0.75, 0.7)) < 1e-6


@pytest.mark.parametrize("window", [None, 1, 3, 40])
def test_attention_matches_loop_and_decodes(window):
    attn = CausalSelfAttention(24, 3, rotary_dim=4, window=window, layer_idx=0).double()
    randomize(attn)
    T = 13
    x = torch.randn(2, T, 24, dtype=torch.float64)
    out = attn(x)
    # transformers' rotary tables are float32: 1e-6 here, an O(1) error for a wrong position, pairing or window
    for b in range(2):
        torch.testing.assert_close(out[b], attention_loop(attn, x[b], window), rtol=1e-5, atol=1e-6)
    # left padding: a padded row computes what it computes alone
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, :5] = False
    padded = attn(x, attention_mask=mask)
    torch.testing.assert_close(padded[1, 5:], attention_loop(attn, x[1, 5:], window), rtol=1e-5, atol=1e-6)
    assert padded[1, :5].abs().max() == 0
    # cached: prefill 4, then one by one (the windowed cache drops keys no query can see any more)
    cache = hf_seqmodels.RecurrentCache(1)
    steps = [attn(x[:, :4], cache=cache)] + [attn(x[:, t : t + 1], cache=cache) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(steps, 1), out, rtol=1e-10, atol=1e-10)
    if window is not None and window < T:
        assert cache.get(0, "attn_k").shape[2] <= window + 1


def test_router_identity_init_survives_post_init_and_loading(tmp_path):
    config = tiny()
    for model in (HNetForCausalLM(config), AutoModelForCausalLM.from_config(config)):
        r = model.model.backbone.routing_module
        eye = torch.eye(config.d_model[0])
        assert torch.equal(r.q_proj_layer.weight.detach(), eye) and torch.equal(r.k_proj_layer.weight.detach(), eye)
        assert model.model.backbone.residual_proj.weight.detach().abs().max() == 0
        assert model.model.backbone.residual_proj.weight.dtype == torch.float32
    with torch.no_grad():
        r.q_proj_layer.weight.add_(1.0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.backbone.routing_module.q_proj_layer.weight, r.q_proj_layer.weight)


def test_router_gets_gradient_through_the_straight_through_estimator(monkeypatch):
    """At identity init the router learns from the LM loss alone (ratio loss off): through the STE on the
    confidence and through the EMA. Cutting the STE path changes the router's gradient but not the forward pass."""
    config = tiny(ratio_loss_weight=0.0)
    model = HNetForCausalLM(config)
    x = ids(2, 29)

    def router_grad():
        model.zero_grad()
        out = model(x, labels=x)
        out.loss.backward()
        return out.logits.detach(), model.model.backbone.routing_module.q_proj_layer.weight.grad.clone()

    logits, grad = router_grad()
    assert grad.abs().max() > 0

    class NoGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.ones_like(x)

        @staticmethod
        def backward(ctx, g):
            return torch.zeros_like(g)

    monkeypatch.setattr(modeling_hnet, "StraightThrough", NoGradient)
    logits_cut, grad_cut = router_grad()
    assert torch.equal(logits_cut, logits)  # the STE is exactly 1 in the forward pass
    assert (grad - grad_cut).abs().max() > 1e-3 * grad.abs().max()


# -- the whole stage against the row-by-row reference -------------------------------------------------------------
@pytest.mark.parametrize("stages", [1, 2])
def test_stages_match_row_by_row_reference(stages):
    model = randomize(HNetForCausalLM(tiny(stages)).double().eval())
    B, T = 3, 23
    x = ids(B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :6] = 0
    mask[2, :1] = 0
    with torch.no_grad():
        out = model(x, attention_mask=mask, use_cache=False)
        emb = model.model.embeddings
        for b in range(B):
            real = mask[b].bool()
            ref_hidden = hnet_stage_loop(model.model.backbone, emb(x[b, real]).double())
            ref_logits = model.lm_head(ref_hidden)
            # float32 rotary tables in the attention layers: ~1e-7; a wrong chunk, gate or shift: O(1)
            scale = float(ref_logits.abs().max())
            torch.testing.assert_close(out.logits[b, real], ref_logits, rtol=0, atol=1e-5 * scale)
            p = boundary_probs_loop(model.model.backbone, emb(x[b, real]).double())
            torch.testing.assert_close(out.boundary_probs[0][b, real], p, rtol=1e-6, atol=1e-6)
    frac = out.boundary_fractions[0]
    assert 0 < frac < 1, "random routers should select some tokens, not all"


def test_wider_inner_stage_uses_its_pad_vector():
    model = randomize(HNetForCausalLM(tiny()).double().eval())
    x = ids(1, 9)
    with torch.no_grad():
        before = model(x).logits
        model.model.backbone.main_network.pad_dimension.add_(0.5)
        assert not torch.allclose(model(x).logits, before)


# -- decoding ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stages,router", [(1, "learned"), (2, "learned"), (1, "word")])
def test_cached_decoding_equals_full_forward_with_uneven_boundaries(stages, router):
    model = randomize(HNetForCausalLM(tiny(stages, boundary_router=router)).eval())
    B, T, prefill = 3, 26, 7
    text = [b"the cat, sat. on  a\tmat!\nok?", b"Zebras\xc3\xa9 run far away now!!", b"a b c d e f g h i j k l m n"]
    x = torch.tensor([list(t[:T]) for t in text]) if router == "word" else ids(B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        full = model(x, attention_mask=mask, use_cache=False)
        cache = model.model.new_cache()
        out = model(x[:, :prefill], attention_mask=mask[:, :prefill], cache=cache, use_cache=True)
        logits, hits = [out.logits], []
        for t in range(prefill, T):
            step = model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            logits.append(step.logits)
            hits.append(step.boundary_masks[0][:, 0])
    scale = float(full.logits.abs().max())
    real = mask.bool()
    diff = float((torch.cat(logits, 1) - full.logits)[real].abs().max())
    assert diff < 1e-5 * scale, (diff, scale)
    hits = torch.stack(hits, 1)
    torch.testing.assert_close(hits, full.boundary_masks[0][:, prefill:])
    uneven = (hits.any(0) & ~hits.all(0)).sum()
    assert uneven > 0, "no decoding step where some rows hit a boundary and others do not: the test proves nothing"
    # a continuation of several bytes after cached ones (run byte by byte inside) gives the same
    with torch.no_grad():
        cache = model.model.new_cache()
        model(x[:, :prefill], attention_mask=mask[:, :prefill], cache=cache, use_cache=True)
        rest = model(x[:, prefill:], attention_mask=mask, cache=cache, use_cache=True).logits
    assert float((rest - full.logits[:, prefill:]).abs().max()) < 1e-5 * scale


def test_generate_greedy_equals_uncached_and_batches():
    model = randomize(HNetForCausalLM(tiny(2)).eval(), scale=2.0)
    x = ids(2, 8)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    with torch.no_grad():
        cached = model.generate(x, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=253)
        plain = model.generate(
            x, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=253
        )
        alone = model.generate(x[1:, 3:], max_new_tokens=12, do_sample=False, pad_token_id=253)
    assert torch.equal(cached, plain)
    # alone, the row stops at EOS; in the batch it is then padded
    assert torch.equal(cached[1, 8 : 8 + alone.shape[1] - 5], alone[0, 5:])


def test_return_dict_false_gives_a_tuple():
    model = HNetForCausalLM(tiny()).eval()
    x = ids(1, 5)
    loss, logits = model(x, labels=x, use_cache=False, return_dict=False)[:2]
    assert loss.dim() == 0 and logits.shape == (1, 5, 256)


# -- configuration ----------------------------------------------------------------------------------------------------
def _count_from_shapes(config):
    """Parameters of an H-Net counted from the config alone (layer by layer, from the layers' equations)."""
    s = config.ssm_cfg

    def layer(letter, d, d_int, stage):
        n = d  # the block's input norm
        kind = letter.lower()
        if kind == "m":
            d_in = s["expand"] * d
            H, GN = d_in // s["head_dim"], s["n_groups"] * s["d_state"]
            conv = d_in + 2 * GN
            n += d * (2 * d_in + 2 * GN + H) + conv * s["d_conv"] + conv + 3 * H + d_in + d_in * d
        elif kind == "t":
            n += 4 * d * d
        if letter.isupper():
            n += d + 3 * d * d_int
        return n

    def stack(spec, stage):
        letters = hf_seqmodels.models.hnet.configuration_hnet.parse_layer_string(spec)
        d, d_int = config.d_model[stage], config.d_intermediate[stage]
        return sum(layer(c, d, d_int, stage) for c in letters) + d

    total = 2 * config.vocab_size * config.d_model[0]
    layout, stage = config.arch_layout, 0
    while True:
        if stage > 0:
            total += config.d_model[stage] - config.d_model[stage - 1]
        if len(layout) == 1:
            return total + stack(layout[0], stage)
        d = config.d_model[stage]
        total += stack(layout[0], stage) + stack(layout[2], stage) + 2 * d * d + d * d + d
        layout, stage = layout[1], stage + 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_with_their_shapes_on_meta(name):
    config = HNetConfig.from_preset(name)
    with torch.device("meta"):
        model = HNetForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert n == _count_from_shapes(config), (name, n)
    print(f"{name}: {n / 1e6:.1f}M parameters")
    backbone = model.model.backbone
    assert backbone.main_network.d_model == config.d_model[1]
    window = backbone.encoder.layers[0].mixer if config.arch_layout[0].startswith("T") else None
    assert window is None or window.window == 1024


def test_default_config_is_a_small_byte_model():
    config = HNetConfig()
    model = HNetForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 10e6 and config.vocab_size == 256 and config.num_stages == 1
    assert n == _count_from_shapes(config)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(arch_layout=["m1", ["X1"], "m1"], d_model=[16, 24]), "not a layer string"),
        (dict(arch_layout=["m1", ["T1"], "m1"], d_model=[16]), "one entry per stage"),
        (dict(arch_layout=["m1", ["T1"], "m1"], d_model=[24, 16]), "must not shrink"),
        (dict(arch_layout=["M1", ["t1"], "m1"], d_model=[16, 24]), "d_intermediate"),
        (dict(arch_layout=["m1", ["T1"]], d_model=[16, 24]), "encoder, inner, decoder"),
        (dict(compression_ratio=[1.0]), "compression_ratio"),
        (dict(boundary_router="words"), "boundary_router"),
    ],
)
def test_bad_configs_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HNetConfig(**({"d_intermediate": [0, 32]} if "d_model" in kwargs else {}), **{k: v for k, v in kwargs.items()})


def test_bad_input_ids_are_refused():
    model = HNetForCausalLM(tiny()).eval()
    with pytest.raises(ValueError, match="holds token id 300 but vocab_size is 256"):
        model(torch.tensor([[1, 300]]))


def test_parameter_groups_per_stage_multipliers_and_no_decay():
    config = tiny(2, lr_multipliers=[3.0, 1.7, 0.9])
    model = HNetForCausalLM(config)
    groups = hnet_parameter_groups(model, lr=1e-3, weight_decay=0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_param) == len(named)
    expect_stage = {
        "model.embeddings.weight": 0,
        "lm_head.weight": 0,
        "model.backbone.encoder.layers.0.mixer.in_proj.weight": 0,
        "model.backbone.routing_module.q_proj_layer.weight": 0,
        "model.backbone.main_network.encoder.layers.0.mixer.q_proj.weight": 1,
        "model.backbone.main_network.pad_dimension": 1,
        "model.backbone.main_network.main_network.main_network.layers.0.mlp.up_proj.weight": 2,
    }
    for name, stage in expect_stage.items():
        g = by_param[id(named[name])]
        assert g["stage"] == stage and abs(g["lr"] - 1e-3 * [3.0, 1.7, 0.9][stage]) < 1e-12, name
    for name, p in named.items():
        decays = by_param[id(p)]["weight_decay"] > 0
        assert decays == (p.dim() >= 2 and "norm" not in name), name
    torch.optim.AdamW(groups)  # a valid optimizer spec


def test_trainer_logs_compression_and_uses_stage_groups(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_seqmodels import HNetCompressionCallback

    model = HNetForCausalLM(tiny())
    data = [{"input_ids": x, "labels": x} for x in ids(8, 33)]
    optimizer = torch.optim.AdamW(hnet_parameter_groups(model, lr=1e-3))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, optimizers=(optimizer, None), callbacks=[HNetCompressionCallback()]
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert 0 < h["boundary_fraction_0"] <= 1 and h["ratio_loss"] > 0, h


def test_pararnn_and_gla_letters_build_any_stage_and_decode():
    """``r`` ParaGRU, ``l`` ParaLSTM and ``g`` GLA as encoder, main network and decoder: cached == full forward."""
    config = tiny(arch_layout=["r1", ["l1G1"], "g1"], gla_cfg={"num_heads": 2})
    model = randomize(HNetForCausalLM(config).eval())
    kinds = {type(b.mixer).__name__ for b in model.model.backbone.encoder.layers}
    kinds |= {type(b.mixer).__name__ for b in model.model.backbone.main_network.main_network.layers}
    assert kinds == {"ParaRNNMixer", "GatedLinearAttention"}
    assert [b.mixer.cell.structure for b in model.model.backbone.main_network.main_network.layers[:1]] == ["block2"]
    x = ids(2, 15)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        cache = model.model.new_cache()
        steps = [model(x[:, :5], cache=cache, use_cache=True).logits]
        steps += [model(x[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(5, 15)]
    assert float((torch.cat(steps, 1) - full).abs().max()) < 1e-5 * float(full.abs().max())


def _attention_reference(attn, x, mask, window):
    """fp64 causal softmax attention written from the definition, row by row: a row's real tokens (``mask``) in order
    get positions 0, 1, ...; the query at position t sees the real keys at positions t - window < j <= t (all j <= t
    when window is None); padded positions output 0."""
    Wq, Wk, Wv, Wo = (getattr(attn, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    B, T, d = x.shape
    H = attn.num_heads
    D = d // H
    theta = float(attn.rotary_emb.config.rope_parameters["rope_theta"]) if attn.rotary_emb is not None else 10000.0
    rows = []
    for b in range(B):
        idx = mask[b].nonzero().flatten()
        xr = x[b, idx]
        n = xr.shape[0]
        pos = torch.arange(n)
        q = rotary_loop((xr @ Wq.T).view(n, H, D), pos, attn.rotary_dim, theta)
        k = rotary_loop((xr @ Wk.T).view(n, H, D), pos, attn.rotary_dim, theta)
        v = (xr @ Wv.T).view(n, H, D)
        sees = pos[None, :] <= pos[:, None]
        if window is not None:
            sees &= pos[:, None] - pos[None, :] < window
        logits = torch.einsum("thd,jhd->htj", q, k) / math.sqrt(D)
        p = torch.softmax(logits.masked_fill(~sees, float("-inf")), -1)
        o = torch.einsum("htj,jhd->thd", p, v).reshape(n, d)
        row = x.new_zeros(T, d).index_put((idx,), o)
        rows.append(row @ Wo.T)
    return torch.stack(rows)


@pytest.mark.parametrize("window", [None, 1, 4, 7, 64])
@pytest.mark.parametrize("T", [1, 6, 23])
def test_attention_full_sequence_matches_fp64_reference_with_padding_and_gradients(window, T):
    """Training / prefill path (the sliding-window op when windowed, SDPA otherwise) against the definition, with no
    mask, left and right padding, padding inside a row and an all-padding row; windows below and above T (T = 23 spans
    several of the layer's segments of SEGMENT_BLOCKS windows); values and the gradients of the input and of every
    projection, fp64 tight; and equal to the explicit-mask path (decoding's)."""
    torch.manual_seed(T * 100 + (window or 0))
    attn = randomize(CausalSelfAttention(24, 3, rotary_dim=4, window=window, layer_idx=0).double())
    B = 5
    x = torch.randn(B, T, 24, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, : T // 2] = False  # left padding
    mask[2, T - T // 3 :] = False  # right padding
    mask[3] = torch.rand(T) < 0.6  # holes
    mask[4] = False if T < 6 else mask[4]  # a row with no token (T = 1: the only one)
    dout = torch.randn(B, T, 24, dtype=torch.float64)
    params = [x] + [getattr(attn, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    for m in (None, mask):
        out = attn(x, attention_mask=m)
        ref = _attention_reference(attn, x, torch.ones_like(mask) if m is None else m, window)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        got = torch.autograd.grad((out * dout).sum(), params)
        want = torch.autograd.grad((ref * dout).sum(), params)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    # the sliding-window / is_causal path equals the explicit [B, T, T] mask path
    q, k, v = (torch.randn(B, 3, T, 8, dtype=torch.float64) for _ in range(3))
    for valid, padded in ((torch.ones_like(mask), False), (mask, True)):
        p = torch.where(valid, valid.long().cumsum(1) - 1, -1)
        fast = attn._full_sequence(q, k, v, p, valid, padded).masked_fill(~valid[:, :, None, None], 0)
        slow = attn._masked(q, k, v, p, p, valid).masked_fill(~valid[:, :, None, None], 0)
        torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
