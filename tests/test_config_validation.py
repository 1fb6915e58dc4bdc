"""Configs refuse bad fields when they are made, naming the field (issue 11), with TypeError for a wrong type and
ValueError for a wrong value (issue 10); valid configs still build with defaults, from dicts and from disk."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hf_seqmodels import GLAConfig, HNetConfig, LigerConfig, LizardConfig, ParaRNNConfig
from hf_seqmodels.layers.gla import GatedLinearAttention
from hf_seqmodels.layers.pararnn import ParaRNNMixer
from hf_seqmodels.memory import MemoryBankConfig

SEQ_CONFIGS = [GLAConfig, ParaRNNConfig, LigerConfig, LizardConfig]

SHARED = [  # SeqModelConfig fields: every architecture built on it
    (dict(hidden_size=0), ValueError, r"hidden_size must be an int >= 1, got 0"),
    (dict(hidden_size=-8), ValueError, r"hidden_size must be an int >= 1"),
    (dict(hidden_size=64.0), TypeError, r"hidden_size must be an int"),
    (dict(num_hidden_layers=-1), ValueError, r"num_hidden_layers must be an int >= 1, got -1"),
    (dict(num_hidden_layers=0), ValueError, r"num_hidden_layers"),
    (dict(vocab_size=0), ValueError, r"vocab_size"),
    (dict(vocab_size="32"), TypeError, r"vocab_size"),
    (dict(intermediate_size=-1), ValueError, r"intermediate_size"),
    (dict(rms_norm_eps=0.0), ValueError, r"rms_norm_eps must be a number > 0"),
    (dict(initializer_range=-0.02), ValueError, r"initializer_range"),
]


@pytest.mark.parametrize("config_class", SEQ_CONFIGS)
@pytest.mark.parametrize("kwargs,error,match", SHARED)
def test_shared_fields(config_class, kwargs, error, match):
    with pytest.raises(error, match=f"{config_class.__name__}.{match}"):
        config_class(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(num_heads=0), ValueError, r"GLAConfig\.num_heads must be an int >= 1, got 0"),
        (dict(num_heads=-2), ValueError, r"GLAConfig\.num_heads"),
        (dict(num_heads=2.0), TypeError, r"GLAConfig\.num_heads"),
        (dict(expand_k=0), ValueError, r"GLAConfig\.expand_k must be a number > 0"),
        (dict(expand_v=-1.0), ValueError, r"GLAConfig\.expand_v"),
        (dict(expand_k="0.5"), TypeError, r"GLAConfig\.expand_k"),
        (dict(num_heads=3), ValueError, r"GLAConfig: hidden_size\*expand_k .* multiples of num_heads \(3\)"),
        (dict(expand_k=0.001), ValueError, r"multiples of num_heads"),  # int(512 * 0.001) = 0 keys
        (dict(gate_low_rank_dim=0), ValueError, r"GLAConfig\.gate_low_rank_dim"),
        (dict(gate_logit_normalizer=0), ValueError, r"GLAConfig\.gate_logit_normalizer must be a number > 0"),
        (dict(conv_size=0), ValueError, r"GLAConfig\.conv_size"),
        (dict(use_short_conv="yes"), TypeError, r"GLAConfig\.use_short_conv must be a bool"),
    ],
)
def test_gla_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        GLAConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(state_size=0), ValueError, r"ParaRNNConfig\.state_size must be an int >= 1, got 0"),
        (dict(state_size=-16), ValueError, r"ParaRNNConfig\.state_size"),
        (dict(num_heads=0), ValueError, r"ParaRNNConfig\.num_heads must be an int >= 1, got 0"),
        (dict(state_size=30, num_heads=4), ValueError, r"state_size \(30\) must be divisible by num_heads \(4\)"),
        (dict(cell=3), TypeError, r"ParaRNNConfig\.cell must be a str"),
        (
            dict(cell="transformer"),
            ValueError,
            r"ParaRNNConfig\.cell must be one of \[.*'gru'.*\] \(register_cell adds more\)",
        ),
        (dict(mode="fast"), ValueError, r"ParaRNNConfig\.mode must be one of \('auto', 'parallel', 'sequential'\)"),
        (dict(mode=None), TypeError, r"ParaRNNConfig\.mode must be a str"),
        (dict(newton_on_fail="ignore"), ValueError, r"`newton_on_fail` must be one of \('fallback', 'raise'\)"),
        (dict(newton_max_iter=-1), ValueError, r"`newton_max_iter` must be a non-negative int"),
        (dict(newton_max_iter=2.5), TypeError, r"`newton_max_iter`"),
        (dict(newton_tol=0.0), ValueError, r"`newton_tol` must be a positive number or None"),
        (dict(newton_tol="1e-5"), TypeError, r"`newton_tol`"),
        (dict(conv_size=0), ValueError, r"ParaRNNConfig\.conv_size"),
    ],
)
def test_pararnn_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        ParaRNNConfig(**kwargs)


@pytest.mark.parametrize("config_class", [LigerConfig, LizardConfig])
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(num_attention_heads=0), ValueError, r"num_attention_heads must be an int >= 1, got 0"),
        (dict(num_attention_heads=1024), ValueError, r"hidden_size \(512\) // num_attention_heads \(1024\) is 0"),
        (dict(num_key_value_heads=0), ValueError, r"num_key_value_heads"),
        (dict(num_key_value_heads=3), ValueError, r"multiple of num_key_value_heads"),
        (dict(head_dim=-4), ValueError, r"head_dim"),
        (dict(window_size=0), ValueError, r"window_size must be a positive int"),
        (dict(window_size=2.5), TypeError, r"window_size must be a positive int"),
        (dict(gate_logit_normalizer=-1.0), ValueError, r"gate_logit_normalizer must be a number > 0"),
        (dict(gate_logit_normalizer=0), ValueError, r"gate_logit_normalizer must be a number > 0"),
        (dict(gla_scale=0.0), ValueError, r"gla_scale"),
        (dict(max_position_embeddings=0), ValueError, r"max_position_embeddings"),
    ],
)
def test_linearized_fields(config_class, kwargs, error, match):
    with pytest.raises(error, match=match):
        config_class(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(gla_weight=1.5), ValueError, r"LigerConfig\.gla_weight must be in \[0.0, 1.0\]"),
        (dict(gla_weight="half"), TypeError, r"LigerConfig\.gla_weight must be a number"),
    ],
)
def test_liger_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        LigerConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(num_sinks=-1), ValueError, r"LizardConfig\.num_sinks must be an int >= 0"),
        (dict(num_sinks=2.0), TypeError, r"LizardConfig\.num_sinks"),
        (dict(feature_dim=0), ValueError, r"LizardConfig\.feature_dim must be an int >= 1 or None"),
        (dict(sink_init="low"), TypeError, r"LizardConfig\.sink_init"),
    ],
)
def test_lizard_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        LizardConfig(**kwargs)


_HNET = dict(
    arch_layout=["m1", ["T1"], "m1"],
    d_model=[32, 64],
    d_intermediate=[0, 128],
    ssm_cfg={"d_state": 8, "head_dim": 16},
    attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 16], "window_size": [15, -1]},
)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(d_model=[0, 64]), ValueError, r"HNetConfig\.d_model\[0\] must be an int >= 1, got 0"),
        (dict(d_intermediate=[0, -128]), ValueError, r"HNetConfig\.d_intermediate\[1\]"),
        (
            dict(attn_cfg={"num_heads": [2, 0], "rotary_emb_dim": [8, 16], "window_size": [15, -1]}),
            ValueError,
            r"HNetConfig\.attn_cfg\['num_heads'\]\[1\] must be an int >= 1",
        ),
        (
            dict(attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 16], "window_size": [-3, -1]}),
            ValueError,
            r"attn_cfg\['window_size'\]\[0\] must be an int >= -1",
        ),
        (dict(ssm_cfg={"d_state": 0}), ValueError, r"HNetConfig\.ssm_cfg\['d_state'\]"),
        (dict(vocab_size=0), ValueError, r"HNetConfig\.vocab_size"),
        (dict(arch_layout=["g1", ["T1"], "g1"], gla_cfg={"num_heads": 0}), ValueError, r"gla_cfg.*num_heads"),
        (dict(arch_layout=["g1", ["T1"], "g1"], gla_cfg={"num_heads": 3}), ValueError, r"multiples of num_heads \(3\)"),
        (dict(arch_layout=["r1", ["T1"], "l1"], pararnn_cfg={"num_heads": 0}), ValueError, r"pararnn_cfg.*num_heads"),
        (dict(arch_layout=["r1", ["T1"], "r1"], pararnn_cfg={"mode": "fast"}), ValueError, r"pararnn_cfg\.mode"),
        (dict(arch_layout=["r1", ["T1"], "r1"], pararnn_cfg={"newton_max_iter": -2}), ValueError, r"newton_max_iter"),
    ],
)
def test_hnet_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        HNetConfig(**{**_HNET, **kwargs})


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(memory_lr=-1.0), ValueError, r"memory_lr"),
        (dict(init_std=0.0), ValueError, r"init_std"),
        (dict(branching=True), TypeError, r"branching"),
        (dict(embedder=3), TypeError, r"embedder"),
    ],
)
def test_memory_bank_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        MemoryBankConfig(**kwargs)


def test_mixers_check_their_own_arguments():
    with pytest.raises(ValueError, match=r"GatedLinearAttention\.num_heads must be an int >= 1, got 0"):
        GatedLinearAttention(32, 0)
    with pytest.raises(ValueError, match=r"GatedLinearAttention: .* multiples of num_heads \(3\)"):
        GatedLinearAttention(32, 3)
    with pytest.raises(ValueError, match=r"ParaRNNMixer\.mode must be one of"):
        ParaRNNMixer(16, mode="fast")
    with pytest.raises(ValueError, match=r"ParaRNNMixer\.cell must be one of"):
        ParaRNNMixer(16, cell="nope")
    with pytest.raises(ValueError, match=r"state_size \(10\) must be divisible by num_heads \(4\)"):
        ParaRNNMixer(16, state_size=10, num_heads=4)


def test_a_mode_changed_on_the_model_config_is_checked_at_the_next_forward():
    config = ParaRNNConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, 32, (1, 6))
    model.config.mode = "sequential"
    seq = model(ids).logits
    model.config.mode = "parallel"
    torch.testing.assert_close(model(ids).logits, seq, rtol=1e-4, atol=1e-5)
    model.config.mode = "fast"
    with pytest.raises(ValueError, match=r"ParaRNNMixer\.mode must be one of"):
        model(ids)


VALID = {
    GLAConfig: dict(hidden_size=64, num_heads=2, expand_k=0.5, num_hidden_layers=1, vocab_size=40),
    ParaRNNConfig: dict(hidden_size=32, cell="lstm", state_size=24, num_heads=3, newton_tol=1e-6, mode="sequential"),
    LigerConfig: dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, window_size=3, gla_weight=0.0),
    LizardConfig: dict(hidden_size=48, num_attention_heads=6, num_sinks=0, feature_dim=5, gla_scale=0.25),
    HNetConfig: _HNET,
}


@pytest.mark.parametrize("config_class", list(VALID))
def test_valid_configs_still_load(config_class, tmp_path):
    config_class()  # defaults (transformers builds one to diff against)
    config = config_class(**VALID[config_class])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is config_class and loaded.to_diff_dict() == config.to_diff_dict()
    again = config_class.from_dict(config.to_dict())
    assert again.to_diff_dict() == config.to_diff_dict()
    fields = {k: v for k, v in config.to_diff_dict().items() if k != "model_type"}
    assert AutoConfig.for_model(config.model_type, **fields).to_diff_dict() == config.to_diff_dict()
    config.to_json_string()  # diffs against a default instance


def test_hnet_layer_string_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"HNetConfig\.arch_layout: a layer string .* must be a str, got int"):
        HNetConfig(**{**_HNET, "arch_layout": ["m1", [3], "m1"]})


def test_wrong_types_raise_type_error_in_kernels_and_layers():
    """Issue 10: a wrong type is a TypeError (named), a wrong value a ValueError, everywhere."""
    from hf_seqmodels.kernels import chunk_gla, sliding_window_attention
    from hf_seqmodels.kernels.pararnn import fused_newton_gru
    from hf_seqmodels.layers.attention import CausalSelfAttention
    from hf_seqmodels.layers.mamba2 import Mamba2Mixer

    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(TypeError, match="`window` must be a positive int"):
        sliding_window_attention(q, q, q, 2.5)
    with pytest.raises(ValueError, match="`window` must be a positive int"):
        sliding_window_attention(q, q, q, 0)
    with pytest.raises(TypeError, match="`scale` must be a Python number"):
        sliding_window_attention(q, q, q, 2, scale="0.5")
    with pytest.raises(TypeError, match="`scale` must be a Python number"):
        chunk_gla(q, q, q, -torch.rand(1, 4, 2, 8), scale=torch.tensor(0.5))
    with pytest.raises(TypeError, match="`q` must be a torch.Tensor"):
        chunk_gla(q.tolist(), q, q, -torch.rand(1, 4, 2, 8))
    u, a = torch.randn(1, 5, 3, 4), torch.rand(3, 4)
    with pytest.raises(TypeError, match="`mask` must be a"):
        fused_newton_gru(u, a, mask=[[1] * 5])
    with pytest.raises(TypeError, match="`on_fail` must be a str"):
        fused_newton_gru(u, a, on_fail=True)
    with pytest.raises(TypeError, match=r"Mamba2Mixer\.d_state must be an int"):
        Mamba2Mixer(32, d_state=16.0, head_dim=16)
    with pytest.raises(TypeError, match=r"CausalSelfAttention\.window must be an int"):
        CausalSelfAttention(16, 2, window=4.0)
    with pytest.raises(TypeError, match="RecurrentCache"):
        AutoModelForCausalLM.from_config(GLAConfig(hidden_size=16, num_heads=2, num_hidden_layers=1, vocab_size=8))(
            torch.zeros(1, 2, dtype=torch.long), cache={}
        )
