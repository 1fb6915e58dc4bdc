"""The recurrent-depth model (Huginn-0125) against an independent fp64 re-implementation written from the equations
(a plain loop over tokens, heads and pairs; it calls nothing of the model), plus its caches, padding, depth sampler,
key names, presets, loading and generation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels import HuginnRavenConfig, RecurrentDepthConfig, RecurrentDepthForCausalLM, RecurrentDepthModel
from hf_seqmodels.compat import CACHE_KWARG

TINY = dict(
    vocab_size=53,
    n_embd=24,
    n_heads=3,
    intermediate_size=40,
    n_layers_in_prelude=1,
    n_layers_in_recurrent_block=2,
    n_layers_in_coda=2,
    mean_recurrence=3,
    mean_backprop_depth=2,
    rope_base=37.0,  # a small base: every pair of the rotation turns noticeably over a few positions
    norm_eps=1e-5,
)


def tiny_model(dtype=torch.float64, moved=True, **overrides):
    model = RecurrentDepthForCausalLM(RecurrentDepthConfig(**{**TINY, **overrides})).to(dtype).eval()
    if moved:  # every weight off its init (qk_bias inits to zero, norms to one), O(1) so every term matters
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.add_(torch.randn_like(param) * (0.5 if "norm" in name or "qk_bias" in name else 0.2))
    return model


# -- the independent reference ------------------------------------------------------------------------------------


def ref_rms(x, weight, eps):
    return x / torch.sqrt((x * x).mean() + eps) * weight


def ref_rope(x, pos, base):
    """x [H, D]: pairs (x[2i], x[2i+1]) turned by pos * base^(-2i/D)."""
    out = x.clone()
    D = x.shape[-1]
    for i in range(D // 2):
        angle = pos * base ** (-2 * i / D)
        c, s = math.cos(angle), math.sin(angle)
        out[:, 2 * i] = x[:, 2 * i] * c - x[:, 2 * i + 1] * s
        out[:, 2 * i + 1] = x[:, 2 * i + 1] * c + x[:, 2 * i] * s
    return out


def ref_block(P, prefix, x, t, pos, app, kv, lookup, cfg):
    """One sandwich block on token t (its own row x [E]); kv[(token, app)] holds (k, v) [H, D]."""
    E, H = cfg["n_embd"], cfg["n_heads"]
    D, eps = E // H, cfg["norm_eps"]
    h = ref_rms(x, P[f"{prefix}.norm_1.weight"], eps)
    qkv = P[f"{prefix}.attn.Wqkv.weight"] @ h
    q, k, v = qkv[:E].view(H, D), qkv[E : 2 * E].view(H, D), qkv[2 * E :].view(H, D)
    q = q + P[f"{prefix}.attn.qk_bias"][0, 0]
    k = k + P[f"{prefix}.attn.qk_bias"][1, 0]
    q, k = ref_rope(q, pos[t], cfg["rope_base"]), ref_rope(k, pos[t], cfg["rope_base"])
    kv[(t, app)] = (k, v)
    heads = []
    for head in range(H):
        scores, values = [], []
        for u in range(t + 1):
            ku, vu = kv[lookup(t, u, app)]
            scores.append((q[head] * ku[head]).sum() / math.sqrt(D))
            values.append(vu[head])
        weights = torch.softmax(torch.stack(scores), dim=0)
        heads.append(sum(w * val for w, val in zip(weights, values)))
    attn = P[f"{prefix}.attn.proj.weight"] @ torch.cat(heads)
    x = ref_rms(x + attn, P[f"{prefix}.norm_2.weight"], eps)
    m = P[f"{prefix}.mlp.fc.weight"] @ ref_rms(x, P[f"{prefix}.norm_3.weight"], eps)
    inner = cfg["intermediate_size"]
    a, b = m[:inner], m[inner:]
    m = P[f"{prefix}.mlp.proj.weight"] @ (a * torch.sigmoid(a) * b)
    return ref_rms(x + m, P[f"{prefix}.norm_4.weight"], eps)


def ref_logits(P, cfg, ids, states, steps, lookup=None, pos=None):
    """Logits [S, V] of one row of token ids [S] from the initial states [S, E]: ``steps = (n, k)``, n core steps
    under no_grad (stop-gradient) then k with gradients. ``lookup(t, u, app)``: the kv entry token t's query reads
    for token u at block application app (default: u's own entry at app)."""
    lookup = lookup or (lambda t, u, app: (u, app))
    E, C, tied = cfg["n_embd"], cfg["n_layers_in_recurrent_block"], cfg["tie_embeddings"]
    eps = cfg["norm_eps"]
    pos = list(range(len(ids))) if pos is None else pos
    head = P["transformer.wte.weight"] if tied else P["lm_head.weight"]
    kv, rows = {}, []
    for t in range(len(ids)):
        x = P["transformer.wte.weight"][ids[t]] * math.sqrt(E)
        for i in range(cfg["n_layers_in_prelude"]):
            x = ref_block(P, f"transformer.prelude.{i}", x, t, pos, ("p", i), kv, lookup, cfg)
        e, s = x, states[t]
        for step in range(steps[0] + steps[1]):
            with torch.set_grad_enabled(step >= steps[0] and torch.is_grad_enabled()):
                h = P["transformer.adapter.weight"] @ torch.cat([s, e])
                if "transformer.adapter.bias" in P:
                    h = h + P["transformer.adapter.bias"]
                for layer in range(C):
                    h = ref_block(
                        P, f"transformer.core_block.{layer}", h, t, pos, ("c", step * C + layer), kv, lookup, cfg
                    )
                s = h
        y = ref_rms(s, P["transformer.ln_f.weight"], eps)
        for j in range(cfg["n_layers_in_coda"]):
            y = ref_block(P, f"transformer.coda.{j}", y, t, pos, ("o", j), kv, lookup, cfg)
        rows.append(head @ ref_rms(y, P["transformer.ln_f.weight"], eps))
    return torch.stack(rows)


def ref_params(model):
    return {n: p.detach().clone().double().requires_grad_(True) for n, p in model.named_parameters()}


def cfg_of(model):
    c = model.config
    keys = (
        "n_embd",
        "n_heads",
        "n_layers_in_prelude",
        "n_layers_in_recurrent_block",
        "n_layers_in_coda",
        "intermediate_size",
        "rope_base",
        "norm_eps",
        "tie_embeddings",
    )
    return {k: getattr(c, k) for k in keys}


# -- values and gradients -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [(0, 3), (2, 2)])
@pytest.mark.parametrize("tied", [True, False])
def test_forward_and_gradients_match_reference(steps, tied):
    model = tiny_model(tie_embeddings=tied, bias=not tied)
    B, S = 2, 5
    ids = torch.randint(0, TINY["vocab_size"], (B, S))
    states = torch.randn(B, S, TINY["n_embd"], dtype=torch.float64) * 3
    weights = torch.randn(B, S, TINY["vocab_size"], dtype=torch.float64)
    out = model(ids, input_states=states, num_steps=steps)
    (out.logits.double() * weights).sum().backward()
    P = ref_params(model)
    ref = torch.stack([ref_logits(P, cfg_of(model), ids[b].tolist(), states[b], steps) for b in range(B)])
    torch.testing.assert_close(out.logits.double(), ref, rtol=1e-9, atol=1e-9)
    (ref * weights).sum().backward()
    for name, param in model.named_parameters():
        expected = P[name].grad
        if expected is None:  # reached by no gradient (core weights when every step is under no_grad)
            expected = torch.zeros_like(param)
        assert param.grad is not None or not expected.any(), name
        torch.testing.assert_close(
            param.grad if param.grad is not None else torch.zeros_like(param),
            expected,
            rtol=1e-8,
            atol=1e-9,
            msg=lambda m, n=name: f"{n}: {m}",
        )
    core_grad = model.transformer.core_block[0].attn.qk_bias.grad
    assert core_grad is not None and core_grad.abs().sum() > 0  # qk_bias gets gradients (it inits to zero)


def test_latent_states_and_int_num_steps_are_the_references():
    """An int ``num_steps`` runs every step without gradients (the reference); ``latent_states`` is ln_f of the
    last state; the alternative interfaces compose to the forward."""
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    states = torch.randn(2, 6, TINY["n_embd"], dtype=torch.float64)
    out = model(ids, input_states=states, num_steps=4)
    embeds = model.embed_inputs(ids)
    s = states
    for step in range(4):
        s = model.iterate_one_step(embeds, s, step=step)
    torch.testing.assert_close(out.latent_states, model.transformer.ln_f(s))
    torch.testing.assert_close(out.logits, model.predict_from_latents(s))
    assert not out.latent_states.requires_grad
    out.logits.sum().backward()
    assert model.transformer.core_block[0].attn.Wqkv.weight.grad is None  # no step had gradients
    assert model.transformer.coda[0].attn.Wqkv.weight.grad is not None


def test_state_init_is_truncated_normal_from_the_generator():
    model = tiny_model(n_embd=48, n_heads=4, dtype=torch.float32)
    embeds = torch.zeros(4, 300, 48)
    std = math.sqrt(2 / (5 * 48))
    a = model.initialize_state(embeds, generator=torch.Generator().manual_seed(3))
    b = model.initialize_state(embeds, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    x = a / math.sqrt(48)
    assert x.abs().max() <= 3 * std * (1 + 1e-6)
    # a standard normal cut at +-3 has std 0.98658
    assert abs(x.std().item() / std - 0.98658) < 0.02
    half = model.initialize_state(embeds, scale=0.5, generator=torch.Generator().manual_seed(3))
    assert (half / math.sqrt(48)).abs().max() <= 1.5 * std * (1 + 1e-6)
    assert not model.initialize_state(embeds, scale=0.0).any()
    # the forward draws it from `generator`: same seed, same logits; input_states from that draw, same logits
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    out1 = model(ids, generator=torch.Generator().manual_seed(5))
    out2 = model(ids, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out1.logits, out2.logits)
    s0 = model.initialize_state(model.embed_inputs(ids), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(ids, input_states=s0).logits, out1.logits)


# -- training-time depth --------------------------------------------------------------------------------------------


def test_depth_sampler_distribution():
    model = tiny_model(mean_recurrence=6, mean_backprop_depth=2).train()
    draws = [model.transformer.sample_depth() for _ in range(3000)]
    assert all(k == min(2, n + k) and n >= 0 and 1 <= k <= 2 for n, k in draws)
    total = torch.tensor([n + k for n, k in draws], dtype=torch.float64)
    # p = 1 + Poisson(LogNormal(log 6 - 1/8, 1/2)): E[p] = 1 + 6; Var[p] = 6 + 36 (e^{1/4} - 1)
    mean, var = 7.0, 6 + 36 * (math.exp(0.25) - 1)
    assert abs(total.mean().item() - mean) < 5 * math.sqrt(var / len(draws))
    assert model.eval().transformer.sample_depth() == (6, 0)


def test_training_depth_gradients_reach_only_the_last_steps():
    model = tiny_model(mean_recurrence=4, mean_backprop_depth=2).train()
    ids = torch.randint(0, TINY["vocab_size"], (1, 4))
    states = torch.randn(1, 4, TINY["n_embd"], dtype=torch.float64)
    torch.manual_seed(11)
    n, k = model.transformer.sample_depth()
    torch.manual_seed(11)
    out = model(ids, input_states=states)  # draws the same depth
    out.logits.sum().backward()
    P = ref_params(model)
    ref = ref_logits(P, cfg_of(model), ids[0].tolist(), states[0], (n, k))
    torch.testing.assert_close(out.logits[0].double(), ref, rtol=1e-9, atol=1e-9)
    ref.sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, P[name].grad, rtol=1e-8, atol=1e-9)


# -- caches ---------------------------------------------------------------------------------------------------------


def _decode(model, ids, states, steps, prefill, cache):
    """Logits of ids [B, S]: the first `prefill` tokens in one forward, then one token per forward."""
    chunks = [(0, prefill)] + [(t, t + 1) for t in range(prefill, ids.shape[1])]
    logits = []
    for lo, hi in chunks:
        out = model(ids[:, lo:hi], input_states=states[:, lo:hi], num_steps=steps, cache=cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("prefill", [1, 4])
@pytest.mark.parametrize("core_slots", [None, 6, 9])
def test_cache_equals_full_forward(prefill, core_slots):
    """Token by token and prefill + steps == the full forward; a bounded cache with as many core slots as core
    applications (3 steps x 2 layers) or more is the full cache."""
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 7))
    states = torch.randn(2, 7, TINY["n_embd"], dtype=torch.float64)
    full = model(ids, input_states=states, num_steps=3).logits
    cache = model.new_cache(core_slots=core_slots)
    torch.testing.assert_close(_decode(model, ids, states, 3, prefill, cache), full, rtol=1e-10, atol=1e-10)
    assert cache.get_seq_length() == 7


@pytest.mark.parametrize("core_slots", [1, 4])
def test_compressed_cache_reads_the_latest_application_of_its_slot(core_slots):
    """core_slots=k < core applications: for earlier tokens (of earlier forwards), core application a reads the keys
    of the latest application a' = a (mod k); within one forward every application reads its own."""
    model = tiny_model()
    steps, C, prefill = 3, TINY["n_layers_in_recurrent_block"], 3
    ids = torch.randint(0, TINY["vocab_size"], (1, 6))
    states = torch.randn(1, 6, TINY["n_embd"], dtype=torch.float64)
    cache = model.new_cache(core_slots=core_slots)
    got = _decode(model, ids, states, steps, prefill, cache)
    total = steps * C

    def lookup(t, u, app):
        same_forward = u == t or (t < prefill and u < prefill)
        if app[0] != "c" or same_forward:
            return (u, app)
        latest = max(a for a in range(total) if a % core_slots == app[1] % core_slots)
        return (u, ("c", latest))

    ref = ref_logits(ref_params(model), cfg_of(model), ids[0].tolist(), states[0], (steps, 0), lookup)
    torch.testing.assert_close(got[0].double(), ref.detach(), rtol=1e-9, atol=1e-9)
    slots = {name[1:] for name in cache.states[0] if name.startswith("kc")}
    assert len(slots) == core_slots  # bounded memory


def test_sampler_style_rewrites_in_flight_positions():
    """The interfaces with explicit columns: rewriting in-flight columns, then cropping, is the plain decode."""
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    states = torch.randn(2, 6, TINY["n_embd"], dtype=torch.float64)
    full = model(ids, input_states=states, num_steps=2).logits
    cache = model.new_cache()
    model(ids[:, :3], input_states=states[:, :3], num_steps=2, cache=cache)
    cols = torch.arange(3, 6)
    junk = torch.randint(0, TINY["vocab_size"], (2, 3))
    for tokens in (junk, ids[:, 3:]):  # a first guess is overwritten in place
        embeds = model.embed_inputs(tokens, past_key_values=cache, cache_position=cols)
        s = states[:, 3:]
        for step in range(2):
            s = model.iterate_one_step(embeds, s, past_key_values=cache, step=step, cache_position=cols)
        logits = model.predict_from_latents(s, past_key_values=cache, cache_position=cols)
    torch.testing.assert_close(logits, full[:, 3:], rtol=1e-10, atol=1e-10)
    cache.crop(4)
    assert cache.get_seq_length() == 4
    out = model(ids[:, 4:5], input_states=states[:, 4:5], num_steps=2, cache=cache)
    torch.testing.assert_close(out.logits, full[:, 4:5], rtol=1e-10, atol=1e-10)


# -- padding ------------------------------------------------------------------------------------------------------


def test_left_padding_equals_unpadded():
    model = tiny_model()
    lengths = [6, 3]
    S = max(lengths)
    rows = [torch.randint(3, TINY["vocab_size"], (n,)) for n in lengths]
    row_states = [torch.randn(n, TINY["n_embd"], dtype=torch.float64) for n in lengths]
    ids = torch.zeros(2, S, dtype=torch.long)
    states = torch.randn(2, S, TINY["n_embd"], dtype=torch.float64)  # noise on padding: must not leak
    mask = torch.zeros(2, S, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, S - n :], states[b, S - n :], mask[b, S - n :] = rows[b], row_states[b], 1
    padded = model(ids, attention_mask=mask, input_states=states, num_steps=2).logits
    cache = model.new_cache()
    prefix = model(ids[:, :4], attention_mask=mask[:, :4], input_states=states[:, :4], num_steps=2, cache=cache)
    step_logits = [prefix.logits]
    for t in range(4, S):
        out = model(
            ids[:, t : t + 1],
            attention_mask=mask[:, : t + 1],
            input_states=states[:, t : t + 1],
            num_steps=2,
            cache=cache,
        )
        step_logits.append(out.logits)
    cached = torch.cat(step_logits, dim=1)
    for b, n in enumerate(lengths):
        alone = model(rows[b][None], input_states=row_states[b][None], num_steps=2).logits[0]
        torch.testing.assert_close(padded[b, S - n :], alone, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(cached[b, S - n :], alone, rtol=1e-10, atol=1e-10)


# -- generation ---------------------------------------------------------------------------------------------------


def test_generate_greedy_matches_a_manual_loop_and_passes_num_steps():
    model = tiny_model(dtype=torch.float32, init_scale=0.0)  # zero initial state: deterministic
    ids = torch.randint(3, TINY["vocab_size"], (2, 4))
    mask = torch.ones_like(ids)
    for steps in (1, 5):
        seq = ids
        for _ in range(4):
            logits = model(seq, num_steps=steps).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
        got = model.generate(
            ids, attention_mask=mask, max_new_tokens=4, do_sample=False, num_steps=steps, pad_token_id=0
        )
        assert torch.equal(got, seq), steps
        uncached = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=4,
            do_sample=False,
            num_steps=steps,
            use_cache=False,
            pad_token_id=0,
        )
        assert torch.equal(uncached, seq)
    bounded = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        num_steps=1,
        pad_token_id=0,
        **{CACHE_KWARG: model.new_cache(core_slots=2)},
    )
    assert bounded.shape == (2, 8)


def test_generate_sampling_reproducible_with_seed():
    model = tiny_model(dtype=torch.float32)
    ids = torch.randint(3, TINY["vocab_size"], (2, 4))
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=5,
                do_sample=True,
                top_k=10,
                num_steps=2,
                pad_token_id=0,
            )
        )
    assert torch.equal(outs[0], outs[1]) and outs[0].shape == (2, 9)


# -- names, presets, loading ----------------------------------------------------------------------------------------


def published_names(prelude, core, coda):
    names = ["transformer.wte.weight", "transformer.adapter.weight", "transformer.ln_f.weight", "lm_head.weight"]
    for part, count in (("prelude", prelude), ("core_block", core), ("coda", coda)):
        for i in range(count):
            for leaf in (
                "norm_1.weight",
                "norm_2.weight",
                "norm_3.weight",
                "norm_4.weight",
                "attn.Wqkv.weight",
                "attn.qk_bias",
                "attn.proj.weight",
                "mlp.fc.weight",
                "mlp.proj.weight",
            ):
                names.append(f"transformer.{part}.{i}.{leaf}")
    return names


def test_state_dict_names_and_huginn_preset_size():
    with torch.device("meta"):
        model = RecurrentDepthForCausalLM(RecurrentDepthConfig.huginn_0125())
    assert sorted(model.state_dict()) == sorted(published_names(2, 4, 2))
    E, inner, V = 5280, 17920, 65536
    block = 4 * E + 3 * E * E + 2 * E + E * E + 3 * inner * E
    count = sum(p.numel() for p in model.parameters())  # tied head: counted once
    assert count == 8 * block + V * E + 2 * E * E + E
    assert int(count / 1e8) == 35  # "3.5B"
    assert model.lm_head.weight is model.transformer.wte.weight
    assert HuginnRavenConfig().n_embd == 5280 and HuginnRavenConfig().mean_recurrence == 32


def huginn_folder(path, model):
    """A folder as Huginn's is published: its config.json fields (remote-code auto_map included), safetensors with
    the published names and the reference's persistent `freqs_cis` buffer."""
    c = model.config
    config = {
        "architectures": ["RavenForCausalLM"],
        "auto_map": {
            "AutoConfig": "raven_config_minimal.RavenConfig",
            "AutoModelForCausalLM": "raven_modeling_minimal.RavenForCausalLM",
        },
        "model_type": "huginn_raven",
        "block_size": 64,
        "vocab_size": c.vocab_size,
        "padding_multiple": 4096,
        "tie_embeddings": True,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_heads,
        "n_embd": c.n_embd,
        "intermediate_size": c.intermediate_size,
        "bias": False,
        "architecture_class_name": "RecurrentGPT",
        "block_class_name": "SandwichBlock",
        "norm_class_name": "RMSNorm_llama",
        "norm_eps": c.norm_eps,
        "mlp_class_name": "GatedMLP",
        "nonlin_name": "SiLU",
        "init_strategy": "takase",
        "init_orthogonal": False,
        "state_init": "like-init",
        "injection_type": "linear",
        "n_layers_in_recurrent_block": c.n_layers_in_recurrent_block,
        "mean_recurrence": c.mean_recurrence,
        "sampling_scheme": "poisson-lognormal-filling",
        "mean_backprop_depth": c.mean_backprop_depth,
        "n_layers_in_prelude": c.n_layers_in_prelude,
        "n_layers_in_coda": c.n_layers_in_coda,
        "qk_bias": True,
        "activation_checkpoint_impl": "per-iteration",
        "rope_base": c.rope_base,
        "n_layers": c.n_layers,
        "head_dim": c.head_dim,
        "torch_dtype": "float32",
        "effective_expected_depth": c.effective_expected_depth,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tensors["freqs_cis"] = torch.randn(1, 64, 1, c.head_dim // 2, 2)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_huginn_folder_loads_with_auto_classes(tmp_path):
    model = tiny_model(dtype=torch.float32)
    huginn_folder(tmp_path / "huginn", model)
    config = AutoConfig.from_pretrained(tmp_path / "huginn")
    assert type(config) is HuginnRavenConfig and config.n_embd == TINY["n_embd"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "huginn")
    assert type(loaded) is RecurrentDepthForCausalLM
    direct = RecurrentDepthForCausalLM.from_pretrained(tmp_path / "huginn")
    assert type(direct.config) is HuginnRavenConfig
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    states = torch.randn(2, 5, TINY["n_embd"])
    expected = model(ids, input_states=states, num_steps=3).logits
    for m in (loaded, direct):
        torch.testing.assert_close(m.eval()(ids, input_states=states, num_steps=3).logits, expected)
    base = RecurrentDepthModel.from_pretrained(tmp_path / "huginn")
    assert sorted(base.state_dict()) == sorted(
        n[len("transformer.") :] for n in published_names(1, 2, 2) if n.startswith("transformer.")
    )
    # saved again (our folder) and reloaded
    loaded.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    torch.testing.assert_close(again.eval()(ids, input_states=states, num_steps=3).logits, expected)


def test_save_load_roundtrip(tmp_path):
    model = tiny_model(dtype=torch.float32, tie_embeddings=False)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded.config) is RecurrentDepthConfig and not loaded.config.tie_embeddings
    ids = torch.randint(0, TINY["vocab_size"], (1, 6))
    states = torch.randn(1, 6, TINY["n_embd"])
    torch.testing.assert_close(
        loaded(ids, input_states=states, num_steps=2).logits, model(ids, input_states=states, num_steps=2).logits
    )


# -- errors --------------------------------------------------------------------------------------------------------


def test_bad_arguments_are_named():
    model = tiny_model(dtype=torch.float32)
    ids = torch.randint(0, TINY["vocab_size"], (1, 3))
    for bad in (-1, (1, 2, 3), 1.5, (1, -2)):
        with pytest.raises(ValueError, match="num_steps"):
            model(ids, num_steps=bad)
    with pytest.raises(ValueError, match="input_states"):
        model(ids, input_states=torch.zeros(1, 4, TINY["n_embd"]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(TypeError, match="RecurrentDepthCache"):
        model(ids, cache=hf_seqmodels.RecurrentCache(1), use_cache=True)
    with pytest.raises(ValueError, match="core_slots"):
        model.new_cache(core_slots=0)
    with pytest.raises(ValueError, match="n_layers"):
        RecurrentDepthConfig(n_layers=7)
    with pytest.raises(ValueError, match="mlp_class_name"):
        HuginnRavenConfig(mlp_class_name="MLP")
    with pytest.raises(ValueError, match="n_embd"):
        RecurrentDepthConfig(n_embd=30, n_heads=4)


def test_default_init_is_the_references():
    """Truncated normal at +-3 std: std sqrt(2 / (5 E)) for embeddings, qkv, the first half of fc, adapter; that
    over sqrt(2 * effective depth) for output projections and fc's second half; norms 1, qk_bias 0."""
    config = RecurrentDepthConfig(n_embd=128, n_heads=4, intermediate_size=256, mean_recurrence=4, tie_embeddings=False)
    model = RecurrentDepthForCausalLM(config)
    std = math.sqrt(2 / (5 * 128))
    out = std / math.sqrt(2 * (1 + 1 + 2 * 4))
    block = model.transformer.core_block[1]
    expected = {
        model.transformer.wte.weight: std,
        model.lm_head.weight: std,
        model.transformer.adapter.weight: std,
        block.attn.Wqkv.weight: std,
        block.attn.proj.weight: out,
        block.mlp.fc.weight[:256]: std,
        block.mlp.fc.weight[256:]: out,
        block.mlp.proj.weight: out,
    }
    for tensor, s in expected.items():
        assert tensor.abs().max() <= 3 * s * (1 + 1e-6)
        assert abs(tensor.std().item() / (0.98658 * s) - 1) < 0.05, (tensor.shape, tensor.std().item(), s)
    assert not block.attn.qk_bias.any() and torch.equal(block.norm_3.weight, torch.ones(128))


def test_rows_write_at_their_own_columns():
    """cache_position [B, S]: each row writes (or rewrites) its own columns and attends to its own prefix."""
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 3))
    new = torch.randint(0, TINY["vocab_size"], (2, 1))
    states = torch.randn(2, 3, TINY["n_embd"], dtype=torch.float64)
    new_states = torch.randn(2, 1, TINY["n_embd"], dtype=torch.float64)
    cache = model.new_cache()
    model(ids, input_states=states, num_steps=2, cache=cache)
    columns = torch.tensor([[3], [1]])  # row 0 appends, row 1 overwrites its second token
    out = model(new, input_states=new_states, num_steps=2, cache=cache, cache_position=columns)
    row0 = model(
        torch.cat([ids[:1], new[:1]], 1), input_states=torch.cat([states[:1], new_states[:1]], 1), num_steps=2
    ).logits[0, -1]
    row1 = model(
        torch.cat([ids[1:, :1], new[1:]], 1), input_states=torch.cat([states[1:, :1], new_states[1:]], 1), num_steps=2
    ).logits[0, -1]
    torch.testing.assert_close(out.logits[:, 0], torch.stack([row0, row1]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["fixed", "geom", "sqrt", "line", "chi"])
def test_test_time_noise_is_the_references_schedule(kind):
    """Noise before a core step: x (1 - a) + a z (z ~ N(0, 1) from the generator), renormalized by the core's last
    norm_4; a = n, n / (t + 1), n / sqrt(t + 1), max(n, (r - t) / r), or 2 u n (u ~ U(0, 1)) with
    n = noise * sqrt(2 / (5 E)) * sqrt(E)."""
    noisy = tiny_model(test_time_noise=0.7, test_time_noise_type=kind)
    clean = tiny_model(moved=False)
    clean.load_state_dict(noisy.state_dict())
    E, r, step = TINY["n_embd"], TINY["mean_recurrence"], 2
    ids = torch.randint(0, TINY["vocab_size"], (2, 4))
    embeds = clean.embed_inputs(ids)
    state = torch.randn(2, 4, E, dtype=torch.float64)
    got = noisy.iterate_one_step(embeds, state, step=step, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    n = 0.7 * math.sqrt(2 / (5 * E)) * math.sqrt(E)
    if kind == "chi":
        a = 2 * torch.rand(1, generator=g, dtype=torch.float64) * n
    else:
        a = {"fixed": n, "geom": n / (step + 1), "sqrt": n / math.sqrt(step + 1), "line": max(n, (r - step) / r)}[kind]
    z = torch.randn(state.shape, generator=g, dtype=torch.float64)
    mixed = state * (1 - a) + z * a
    norm = noisy.transformer.core_block[-1].norm_4
    mixed = mixed / torch.sqrt(mixed.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
    torch.testing.assert_close(got, clean.iterate_one_step(embeds, mixed, step=step), rtol=1e-10, atol=1e-10)


def test_generate_continuous_compute_chains_the_latents():
    """continuous_compute: after the prompt (state from noise), each token's recurrence starts from the previous
    token's latent_states (ln_f of its last state), as the reference's generate_minimal."""
    model = tiny_model(dtype=torch.float32)
    ids = torch.randint(3, TINY["vocab_size"], (2, 4))
    got = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=4,
        do_sample=False,
        num_steps=2,
        pad_token_id=0,
        continuous_compute=True,
        generator=torch.Generator().manual_seed(4),
    )
    generator, cache, seq, states = torch.Generator().manual_seed(4), model.new_cache(), ids, None
    for _ in range(4):
        out = model(
            seq if states is None else seq[:, -1:], input_states=states, num_steps=2, cache=cache, generator=generator
        )
        states = out.latent_states[:, -1:]
        seq = torch.cat([seq, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, seq)
