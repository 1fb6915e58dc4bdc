"""The H-Net reference's release format (goombalab/hnet: a pickled ``.pt`` state dict + ``configs/*.json``).

A checkpoint in the reference's layout is written here (the reference's key names, fp32 as the published files are:
their sizes are 4 bytes per parameter; OmegaConf containers pickled under OmegaConf's own module and class names by
stand-in classes, OmegaConf itself never imported), loaded through ``HNetForCausalLM.from_pretrained(folder)`` and
compared with a forward pass written here from the reference's code (hnet.py, dc.py, isotropic.py, block.py,
mha.py, rotary.py, mlp.py, mamba_ssm's Mamba2 as a sequential scan), in plain fp64 on the state dict, one row at a
time. Also: the safe loader refuses code in pickles (and runs none), and missing / unexpected keys are named.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import re
import sys
import types
import typing

import pytest
import torch
import torch.nn.functional as F

from hf_seqmodels.conversion import hnet as hnet_format
from hf_seqmodels.conversion import safe_pickle
from hf_seqmodels.models.hnet.modeling_hnet import HNetForCausalLM
from hf_seqmodels.models.hnet.tokenization_byte import ByteTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest on a busy machine

# scaled-down presets of the released shapes (published: 1stage_L ["m4", ["T22"], "m4"] d [1024, 1536];
# 2stage_L ["m4", ["T1m4", ["T26"], "m4T1"], "m4"] d [1024, 1024, 1536]); d_intermediate not a multiple of 128
# (the reference rounds it up), windows short enough to bind, partial rotary
ONE_STAGE = {
    "arch_layout": ["m2", ["T2"], "m2"],
    "d_model": [64, 96],
    "d_intermediate": [0, 100],
    "vocab_size": 256,
    "ssm_cfg": {"chunk_size": 256, "d_conv": 4, "d_state": 16, "expand": 2},
    "attn_cfg": {"num_heads": [2, 4], "rotary_emb_dim": [8, 12], "window_size": [7, -1]},
    "tie_embeddings": False,
}
TWO_STAGE = {
    "arch_layout": ["m1", ["T1m1", ["T2"], "m1T1"], "m1"],
    "d_model": [64, 64, 96],
    "d_intermediate": [0, 150, 200],
    "vocab_size": 256,
    "ssm_cfg": {"chunk_size": 256, "d_conv": 4, "d_state": 16, "expand": 2},
    "attn_cfg": {"num_heads": [2, 4, 4], "rotary_emb_dim": [8, 8, 12], "window_size": [3, 3, -1]},
    "tie_embeddings": False,
}
PRESETS = {"1stage": ONE_STAGE, "2stage": TWO_STAGE}
HEADDIM = 64  # mamba_ssm Mamba2's default, which the reference does not override


def _letters(spec):
    return [a for a, n in re.findall(r"([mMtT])(\d+)", spec) for _ in range(int(n))]  # isotropic.py's parse


# ---------------------------------------------------------------------------------------------------------------
# OmegaConf stand-ins: same module and class names and the same pickled __dict__ as omegaconf 2.x's
# (ContainerMetadata/Metadata dataclasses, AnyNode values, defaultdict(dict) resolver caches, typing.Any types).


class _Obj:
    def __init__(self, **state):
        self.__dict__.update(state)


class ListConfig(_Obj):
    pass


class DictConfig(_Obj):
    pass


class ContainerMetadata(_Obj):
    pass


class Metadata(_Obj):
    pass


class AnyNode(_Obj):
    pass


_FAKE_MODULES = {
    "omegaconf.listconfig": ListConfig,
    "omegaconf.dictconfig": DictConfig,
    "omegaconf.base": (ContainerMetadata, Metadata),
    "omegaconf.nodes": AnyNode,
}


def _meta(cls, key, object_type, **extra):
    return cls(
        ref_type=typing.Any,
        object_type=object_type,
        optional=True,
        key=key,
        flags={},
        flags_root=False,
        resolver_cache=collections.defaultdict(dict),
        **extra,
    )


def omega(value, key=None, parent=None):
    """An OmegaConf-shaped container for a list / dict of plain values (nested containers allowed)."""
    if isinstance(value, list):
        node = ListConfig(
            _metadata=_meta(ContainerMetadata, key, list, key_type=int, element_type=typing.Any), _parent=parent
        )
        node._content = [omega(v, i, node) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        node = DictConfig(
            _metadata=_meta(ContainerMetadata, key, dict, key_type=typing.Any, element_type=typing.Any), _parent=parent
        )
        node._content = {k: omega(v, k, node) for k, v in value.items()}
    else:
        node = AnyNode(_metadata=_meta(Metadata, key, None), _parent=parent, _val=value)
    return node


@pytest.fixture
def fake_omegaconf(monkeypatch):
    """Registers the stand-ins under omegaconf's module names while a test writes pickles (undone by the caller's
    ``monkeypatch.undo()`` or at the end of the test)."""
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    for name, classes in _FAKE_MODULES.items():
        module = types.ModuleType(name)
        for cls in classes if isinstance(classes, tuple) else (classes,):
            cls.__module__ = name
            setattr(module, cls.__name__, cls)
        monkeypatch.setitem(sys.modules, name, module)
    return monkeypatch


# ---------------------------------------------------------------------------------------------------------------
# A reference-layout state dict (key names and shapes of hnet/models/mixer_seq.py, hnet.py, isotropic.py,
# block.py, mha.py, mlp.py, mamba_ssm Mamba2), random O(1) weights.


def reference_state_dict(cfg, gen):
    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def linear(n_out, n_in):
        return randn(n_out, n_in, scale=n_in**-0.5)

    d_model, ssm = cfg["d_model"], cfg["ssm_cfg"]
    sd = collections.OrderedDict()
    sd["embeddings.weight"] = randn(cfg["vocab_size"], d_model[0])

    def isotropic(prefix, spec, s):
        d = d_model[s]
        for j, letter in enumerate(_letters(spec)):
            p = f"{prefix}.layers.{j}."
            sd[p + "norm1.weight"] = 1 + randn(d, scale=0.3)
            if letter in "mM":
                d_inner, N = ssm["expand"] * d, ssm["d_state"]
                H, conv_dim = d_inner // HEADDIM, d_inner + 2 * N
                sd[p + "mixer.dt_bias"] = randn(H, scale=0.5) - 1.0
                sd[p + "mixer.A_log"] = torch.log(torch.rand(H, generator=gen) * 3 + 0.5)
                sd[p + "mixer.D"] = randn(H)
                sd[p + "mixer.in_proj.weight"] = linear(2 * d_inner + 2 * N + H, d)
                sd[p + "mixer.conv1d.weight"] = randn(conv_dim, 1, ssm["d_conv"], scale=0.5)
                sd[p + "mixer.conv1d.bias"] = randn(conv_dim, scale=0.5)
                sd[p + "mixer.norm.weight"] = 1 + randn(d_inner, scale=0.3)
                sd[p + "mixer.out_proj.weight"] = linear(d, d_inner)
            else:
                sd[p + "mixer.Wqkv.weight"] = linear(3 * d, d)
                sd[p + "mixer.out_proj.weight"] = linear(d, d)
            if letter.isupper():
                inter = (cfg["d_intermediate"][s] + 127) // 128 * 128  # SwiGLU's multiple_of=128
                sd[p + "norm2.weight"] = 1 + randn(d, scale=0.3)
                sd[p + "mlp.fc1.weight"] = linear(2 * inter, d)
                sd[p + "mlp.fc2.weight"] = linear(d, inter)
        sd[prefix + ".rmsnorm.weight"] = 1 + randn(d, scale=0.3)

    def hnet(prefix, layout, s):
        d = d_model[s]
        if len(layout) == 1:
            isotropic(prefix + ".main_network", layout[0], s)
        else:
            isotropic(prefix + ".encoder", layout[0], s)
            hnet(prefix + ".main_network", layout[1], s + 1)
            isotropic(prefix + ".decoder", layout[2], s)
            sd[prefix + ".routing_module.q_proj_layer.weight"] = linear(d, d)
            sd[prefix + ".routing_module.k_proj_layer.weight"] = linear(d, d)
            sd[prefix + ".residual_proj.weight"] = linear(d, d)
            sd[prefix + ".residual_proj.bias"] = randn(d, scale=0.5)
        if s > 0 and d > d_model[s - 1]:
            sd[prefix + ".pad_dimension"] = randn(d - d_model[s - 1])

    hnet("backbone", cfg["arch_layout"], 0)
    sd["lm_head.weight"] = linear(cfg["vocab_size"], d_model[0])
    return sd


# ---------------------------------------------------------------------------------------------------------------
# The reference's forward pass in plain fp64 on that state dict, one row [T] at a time (packed mode: every
# sequence on its own).


def _rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_mamba2(W, p, x, ssm):
    T, d = x.shape
    d_inner, N = ssm["expand"] * d, ssm["d_state"]
    H = d_inner // HEADDIM
    z, xBC, dt = (x @ W[p + "in_proj.weight"].T).split([d_inner, d_inner + 2 * N, H], -1)
    w, K = W[p + "conv1d.weight"][:, 0, :], ssm["d_conv"]
    padded = torch.cat([xBC.new_zeros(K - 1, xBC.shape[1]), xBC])
    conv = torch.stack([(padded[t : t + K].T * w).sum(-1) for t in range(T)]) + W[p + "conv1d.bias"]
    xs, Bm, Cm = F.silu(conv).split([d_inner, N, N], -1)
    dt = F.softplus(dt + W[p + "dt_bias"])
    A = -torch.exp(W[p + "A_log"])
    S = x.new_zeros(H, HEADDIM, N)
    y = x.new_zeros(T, H, HEADDIM)
    xh = xs.view(T, H, HEADDIM)
    for t in range(T):
        for h in range(H):
            S[h] = torch.exp(dt[t, h] * A[h]) * S[h] + dt[t, h] * torch.outer(xh[t, h], Bm[t])
            y[t, h] = S[h] @ Cm[t] + W[p + "D"][h] * xh[t, h]
    g = y.reshape(T, d_inner) * F.silu(z)  # RMSNormGated, norm_before_gate=False, one group
    return _rmsnorm(g, W[p + "norm.weight"]) @ W[p + "out_proj.weight"].T


def _rotary(x, rotary_dim, base=10000.0):
    """flash-attn's non-interleaved rotary on the first rotary_dim channels of x [T, H, hd], positions 0..T-1."""
    if rotary_dim == 0:
        return x
    half = rotary_dim // 2
    out = x.clone()
    for t in range(x.shape[0]):
        for i in range(half):
            angle = t / base ** (2 * i / rotary_dim)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[t, :, i], x[t, :, i + half]
            out[t, :, i], out[t, :, i + half] = a * c - b * s, b * c + a * s
    return out


def ref_attention(W, p, x, heads, rotary_dim, window):
    T, d = x.shape
    hd = d // heads
    qkv = (x @ W[p + "Wqkv.weight"].T).view(T, 3, heads, hd)  # "... (three h d)"
    q, k, v = _rotary(qkv[:, 0], rotary_dim), _rotary(qkv[:, 1], rotary_dim), qkv[:, 2]
    out = x.new_zeros(T, heads, hd)
    for i in range(T):
        lo = 0 if window < 0 else max(0, i - window)  # flash-attn window_size=(window, -1), causal
        for h in range(heads):
            a = torch.softmax(torch.stack([q[i, h] @ k[j, h] for j in range(lo, i + 1)]) / math.sqrt(hd), 0)
            out[i, h] = (a[:, None] * v[lo : i + 1, h]).sum(0)
    return out.reshape(T, d) @ W[p + "out_proj.weight"].T


def ref_isotropic(W, cfg, prefix, spec, s, x):
    attn = cfg["attn_cfg"]
    hidden = x
    for j, letter in enumerate(_letters(spec)):
        p = f"{prefix}.layers.{j}."
        normed = _rmsnorm(hidden, W[p + "norm1.weight"])
        if letter in "mM":
            hidden = hidden + ref_mamba2(W, p + "mixer.", normed, cfg["ssm_cfg"])
        else:
            hidden = hidden + ref_attention(
                W, p + "mixer.", normed, attn["num_heads"][s], attn["rotary_emb_dim"][s], attn["window_size"][s]
            )
        if letter.isupper():
            y, gate = (_rmsnorm(hidden, W[p + "norm2.weight"]) @ W[p + "mlp.fc1.weight"].T).chunk(2, -1)
            hidden = hidden + (F.silu(gate) * y) @ W[p + "mlp.fc2.weight"].T
    return _rmsnorm(hidden, W[prefix + ".rmsnorm.weight"])


def ref_hnet(W, cfg, prefix, layout, s, x, boundaries):
    T, D = x.shape
    if prefix + ".pad_dimension" in W:
        x = torch.cat([x, W[prefix + ".pad_dimension"].expand(T, -1)], -1)
    if len(layout) == 1:
        return ref_isotropic(W, cfg, prefix + ".main_network", layout[0], s, x)[:, :D]
    h = ref_isotropic(W, cfg, prefix + ".encoder", layout[0], s, x)
    residual = h @ W[prefix + ".residual_proj.weight"].T + W[prefix + ".residual_proj.bias"]
    q = F.normalize(h[:-1] @ W[prefix + ".routing_module.q_proj_layer.weight"].T, dim=-1)
    k = F.normalize(h[1:] @ W[prefix + ".routing_module.k_proj_layer.weight"].T, dim=-1)
    p = F.pad(torch.clamp((1 - (q * k).sum(-1)) / 2, 0.0, 1.0), (1, 0), value=1.0)
    b = torch.argmax(torch.stack([1 - p, p], -1), -1) == 1  # a tie is not a boundary
    boundaries.append(b)
    z = ref_hnet(W, cfg, prefix + ".main_network", layout[1], s + 1, h[b], boundaries)
    P = p[b].clamp(1e-4, 1 - 1e-4)
    zbar, state = torch.zeros_like(z), torch.zeros_like(z[0])
    for j in range(z.shape[0]):  # dc.py's EMA: Mamba-2 scan with dt = log(1/(1-P)), x = z/dt, A = -1, B = P, C = 1
        state = P[j] * z[j] + (1 - P[j]) * state
        zbar[j] = state
    up = zbar[torch.cumsum(b.long(), 0) - 1]
    out = up * 1.0 + residual  # STE: ones in the forward pass
    return ref_isotropic(W, cfg, prefix + ".decoder", layout[2], s, out)[:, :D]


def ref_logits(W, cfg, ids):
    boundaries = []
    h = ref_hnet(W, cfg, "backbone", cfg["arch_layout"], 0, W["embeddings.weight"][ids], boundaries)
    return h @ W["lm_head.weight"].T, boundaries


# ---------------------------------------------------------------------------------------------------------------


def write_release(folder, cfg, sd, name="hnet_tiny", omegaconf_monkeypatch=None):
    """``<name>.pt`` pickled as torch.save(state_dict) writes it, ``<name>.json`` as in the reference's configs/.
    With the fake OmegaConf modules registered, the pickle also carries OmegaConf containers: a DictConfig in the
    state dict's ``_metadata`` and a ListConfig in one Parameter's Python state (places where a flat state dict
    can hold them and the reference's ``load_state_dict`` still accepts the file)."""
    os.makedirs(folder, exist_ok=True)
    sd = collections.OrderedDict(sd)
    if omegaconf_monkeypatch is not None:
        sd._metadata = collections.OrderedDict(
            [("", {"version": 1}), ("config", omega({"lr_multiplier": [3.0, 1.7], "train": {"steps": 10, "ok": True}}))]
        )
        param = torch.nn.Parameter(sd["embeddings.weight"].clone())
        param._optim = {"lr_multiplier": omega([3.0, 1.7, 0.9]), "weight_decay": 0.0}
        sd["embeddings.weight"] = param
    torch.save(sd, os.path.join(folder, name + ".pt"))
    if omegaconf_monkeypatch is not None:
        omegaconf_monkeypatch.undo()  # gone before loading: the loader must not need them
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(cfg, f, indent=4)
    return folder


def _rows(gen, lengths):
    return [torch.randint(0, 256, (n,), generator=gen) for n in lengths]


@pytest.mark.parametrize("preset", ["1stage", "2stage"])
def test_reference_checkpoint_matches_reference_forward(tmp_path, fake_omegaconf, fresh_seed, preset):
    cfg = PRESETS[preset]
    gen = torch.Generator().manual_seed(fresh_seed)
    sd = reference_state_dict(cfg, gen)
    folder = write_release(tmp_path / preset, cfg, sd, omegaconf_monkeypatch=fake_omegaconf)
    assert "omegaconf" not in sys.modules
    assert hnet_format.detect(folder)

    model = HNetForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    assert "omegaconf" not in sys.modules
    config = model.config
    assert config.d_intermediate == [(d + 127) // 128 * 128 for d in cfg["d_intermediate"]]
    assert (config.bos_token_id, config.eos_token_id) == (254, 255)

    W = {k: v.double() for k, v in sd.items()}
    rows = _rows(gen, [int(n) for n in torch.randint(17, 34, (3,), generator=gen)])
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):  # left padding
        ids[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    n_stages = len(cfg["d_model"]) - 1
    for i, r in enumerate(rows):
        logits, boundaries = ref_logits(W, cfg, r)
        assert len(boundaries) == n_stages
        for s, b in enumerate(boundaries):  # the test is only as good as its chunking: some, not all, boundaries
            assert 1 <= int(b.sum()) < len(b), (s, b)
        torch.testing.assert_close(out.boundary_masks[0][i, T - len(r) :], boundaries[0], rtol=0, atol=0)
        torch.testing.assert_close(out.logits[i, T - len(r) :], logits, rtol=0, atol=1e-9)


def test_load_keeps_dtypes_and_bf16_keeps_residual_proj_fp32(tmp_path):
    sd = reference_state_dict(ONE_STAGE, torch.Generator().manual_seed(0))
    folder = write_release(tmp_path, ONE_STAGE, sd)
    config, ours = hnet_format.load(folder)
    assert {v.dtype for v in ours.values()} == {torch.float32}
    up, gate = sd["backbone.main_network.main_network.layers.0.mlp.fc1.weight"].chunk(2)
    assert torch.equal(ours["model.backbone.main_network.main_network.layers.0.mlp.up_proj.weight"], up)
    assert torch.equal(ours["model.backbone.main_network.main_network.layers.0.mlp.gate_proj.weight"], gate)
    _, ours = hnet_format.load(folder, dtype=torch.bfloat16)
    assert ours["model.backbone.residual_proj.weight"].dtype == torch.float32
    assert ours["model.embeddings.weight"].dtype == torch.bfloat16
    model = HNetForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert model.model.backbone.residual_proj.weight.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = reference_state_dict(TWO_STAGE, torch.Generator().manual_seed(1))
    missing = dict(sd)
    del missing["backbone.main_network.encoder.layers.1.mixer.A_log"]
    with pytest.raises(ValueError, match=r"missing key.*backbone\.main_network\.encoder\.layers\.1\.mixer\.A_log"):
        hnet_format.load(write_release(tmp_path / "missing", TWO_STAGE, missing))
    extra = dict(sd, **{"backbone.main_network.encoder.layers.0.mixer.Wqkv.bias": torch.zeros(192)})
    with pytest.raises(ValueError, match=r"unexpected key.*main_network\.encoder\.layers\.0\.mixer\.Wqkv\.bias"):
        hnet_format.load(write_release(tmp_path / "extra", TWO_STAGE, extra))
    stray = dict(sd, **{"backbone.rotary_emb.inv_freq": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"unexpected key.*backbone\.rotary_emb\.inv_freq"):
        hnet_format.load(write_release(tmp_path / "stray", TWO_STAGE, stray))
    shape = dict(sd, **{"backbone.main_network.main_network.pad_dimension": torch.zeros(31)})
    with pytest.raises(ValueError, match=r"backbone\.main_network\.main_network\.pad_dimension.*shape"):
        hnet_format.load(write_release(tmp_path / "shape", TWO_STAGE, shape))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("attn_cfg", {**ONE_STAGE["attn_cfg"], "softmax_scale": 0.1}, "softmax_scale"),
        ("ssm_cfg", {**ONE_STAGE["ssm_cfg"], "d_state": [16, 32]}, r"d_state.*differs"),
        ("arch_layout", ["m2", ["G2"], "m2"], "'G2'"),
        ("lr_multiplier", [1.0, 1.0], "lr_multiplier"),
    ],
)
def test_reference_config_fields_we_cannot_honour_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        hnet_format.config_from_reference({**copy.deepcopy(ONE_STAGE), field: value})


def test_omegaconf_containers_load_as_plain_data(tmp_path, fake_omegaconf):
    sd = reference_state_dict(ONE_STAGE, torch.Generator().manual_seed(2))
    folder = write_release(tmp_path, ONE_STAGE, sd, omegaconf_monkeypatch=fake_omegaconf)
    loaded = safe_pickle.load(folder / "hnet_tiny.pt")
    assert loaded._metadata["config"] == {"lr_multiplier": [3.0, 1.7], "train": {"steps": 10, "ok": True}}
    assert loaded["embeddings.weight"]._optim == {"lr_multiplier": [3.0, 1.7, 0.9], "weight_decay": 0.0}
    assert torch.equal(loaded["embeddings.weight"], sd["embeddings.weight"])
    assert "omegaconf" not in sys.modules


class _Shell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class _CallsStandIn:
    """Calls an allow-listed name (OmegaConf's ListConfig) with arguments: must fail, not construct anything."""

    def __reduce__(self):
        return ListConfig, ("x",)


@pytest.mark.parametrize("payload,name", [(_Shell, "system"), (_Exec, "builtins.exec")])
@pytest.mark.parametrize("zip_format", [True, False])
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, payload, name, zip_format):
    marker = tmp_path / "pwned"
    sd = reference_state_dict(ONE_STAGE, torch.Generator().manual_seed(3))
    sd["lm_head.weight"] = payload(marker)
    folder = tmp_path / "release"
    folder.mkdir()
    torch.save(sd, folder / "hnet_tiny.pt", _use_new_zipfile_serialization=zip_format)
    (folder / "hnet_tiny.json").write_text(json.dumps(ONE_STAGE))
    with pytest.raises(ValueError, match=re.escape(name)):
        safe_pickle.load(folder / "hnet_tiny.pt")
    with pytest.raises(ValueError, match=re.escape(name)):
        HNetForCausalLM.from_pretrained(folder)
    assert not marker.exists()


def test_calling_an_allowed_stand_in_is_refused(tmp_path, fake_omegaconf):
    torch.save({"x": _CallsStandIn()}, tmp_path / "bad.pt")
    fake_omegaconf.undo()
    with pytest.raises(ValueError, match="refused"):
        safe_pickle.load(tmp_path / "bad.pt")


def test_detect_needs_a_checkpoint_and_a_reference_config(tmp_path):
    assert not hnet_format.detect(tmp_path)
    torch.save({}, tmp_path / "hnet_a.pt")
    assert not hnet_format.detect(tmp_path)
    ours = {"model_type": "hf_seqmodels_hnet", "arch_layout": [], "d_model": []}
    (tmp_path / "config.json").write_text(json.dumps(ours))
    assert not hnet_format.detect(tmp_path)  # our own config.json is not the reference's
    (tmp_path / "hnet_a.json").write_text(json.dumps(ONE_STAGE))
    assert hnet_format.detect(tmp_path)
    pair = (str(tmp_path / "hnet_a.pt"), str(tmp_path / "hnet_a.json"))
    assert hnet_format.find_files(tmp_path) == pair
    torch.save({}, tmp_path / "hnet_b.pt")
    assert hnet_format.find_files(tmp_path) == pair  # paired by stem
    (tmp_path / "hnet_b.json").write_text(json.dumps(TWO_STAGE))
    with pytest.raises(ValueError, match="cannot tell"):
        hnet_format.find_files(tmp_path)
    assert not hnet_format.detect(tmp_path)
    os.remove(tmp_path / "hnet_b.json")
    assert hnet_format.detect(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not hnet_format.detect(tmp_path)  # a checkpoint of ours: from_pretrained loads it as usual


def test_byte_tokenizer_matches_the_reference_convention():
    """hnet/utils/tokenizers.py: ids are the UTF-8 bytes, BOS 254 before them (generate.py: add_bos=True), EOS 255."""
    text = "Hé 日本 🎉"
    reference = [254] + list(text.encode("utf-8"))
    tok = ByteTokenizer()
    assert (tok.bos_token_id, tok.eos_token_id) == (254, 255)
    assert tok(text)["input_ids"] == reference
    assert ByteTokenizer(add_eos_token=True)(text)["input_ids"] == reference + [255]
    assert tok.decode(reference[1:]) == bytearray(reference[1:]).decode("utf-8")


def test_convert_writes_a_folder_the_auto_classes_and_pipeline_load(tmp_path, capsys):
    """`hf-seqmodels convert` on a release folder: our safetensors folder with the byte tokenizer the reference uses
    (the release holds no tokenizer files), equal logits through AutoModelForCausalLM, and pipeline() generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from hf_seqmodels.commands.main import main

    sd = reference_state_dict(TWO_STAGE, torch.Generator().manual_seed(2))
    folder = write_release(tmp_path / "release", TWO_STAGE, sd)
    assert main(["convert", str(folder), str(tmp_path / "ours"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "H-Net reference release" in out and "tokenizer: the format's ByteTokenizer" in out
    direct = HNetForCausalLM.from_pretrained(folder).eval()
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(converted) is HNetForCausalLM
    assert not any(name.endswith(".pt") for name in os.listdir(tmp_path / "ours"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "ours")
    ids = tok(["héllo wörld, chunks"], return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == 254  # the reference's BOS
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, direct(input_ids=ids).logits, rtol=0, atol=0)
    text = pipeline("text-generation", model=str(tmp_path / "ours"))("abc", max_new_tokens=4, do_sample=False)
    assert text[0]["generated_text"].startswith("abc")
    assert "Conversion" in (tmp_path / "ours" / "README.md").read_text()
