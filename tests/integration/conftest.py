"""Tiny configs for the integration tests, and the fixtures that parametrize over them.

Every test that takes the ``tiny_config`` fixture runs once per entry of ``TINY_CONFIGS``; the slower tests (Trainer,
PEFT, DDP) take ``train_config`` and run once per entry of ``TRAIN_CONFIGS``. To cover a new architecture, add its
tiny configs here: nothing else in tests/integration names an architecture.

Helpers shared by the test modules live in ``integration_utils.py`` (a test module cannot reliably import a
``conftest`` module: several directories have one). ``ddp_train.py`` imports this file as a plain module.
"""

from __future__ import annotations

import importlib.util

import pytest
from integration_utils import FreshProcesses

from hf_seqmodels import (
    AarenConfig,
    GAMConfig,
    GLAConfig,
    HNetConfig,
    LigerConfig,
    LizardConfig,
    ParaRNNConfig,
    PLSTMConfig,
    RecurrentDepthConfig,
    S4DConfig,
)

# initializer_range 0.2 (not 0.02) gives peaked next-token distributions, so greedy/beam comparisons are not
# decided by float-rounding near-ties; pad 0, bos 1, eos 2 (inputs avoid them where it matters).
_TINY = dict(num_hidden_layers=2, initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny(config_class, defaults):
    return lambda **kw: config_class(**{**_TINY, **defaults, **kw})


# Linearized Llamas: grouped-query heads (4 query, 2 key/value) and a window shorter than the test inputs, so the
# decoding ring buffer wraps around.
_LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)


# H-Net: vocab 256 (bytes, pad/bos/eos 253/254/255); Mamba-2 encoder/decoder, attention + GLA inside; a window shorter
# than the test inputs on the outer attention layer.
_HNET = dict(
    d_model=[32, 48],
    d_intermediate=[64, 96],
    ssm_cfg={"d_state": 8, "head_dim": 16},
    attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [5, -1]},
    gla_cfg={"num_heads": 2},
    initializer_range=0.2,
    vocab_size=256,
)


def _hnet(layout, **defaults):
    return lambda **kw: HNetConfig(**{**_HNET, "arch_layout": layout, **defaults, **kw})


#: name -> factory(**overrides) returning a tiny config; together they cover every architecture and its options
TINY_CONFIGS = {
    "gla": _tiny(
        GLAConfig, dict(vocab_size=128, hidden_size=32, num_heads=2, use_short_conv=False, tie_word_embeddings=False)
    ),
    "gla-conv-tied": _tiny(
        GLAConfig,
        dict(vocab_size=256, hidden_size=64, num_heads=4, use_short_conv=True, conv_size=4, tie_word_embeddings=True),
    ),
    "paragru": _tiny(ParaRNNConfig, dict(cell="gru", vocab_size=128, hidden_size=32, num_heads=2, use_short_conv=True)),
    "paralstm-tied": _tiny(
        ParaRNNConfig,
        dict(cell="lstm", vocab_size=128, hidden_size=32, num_heads=1, use_short_conv=False, tie_word_embeddings=True),
    ),
    "plstm": _tiny(
        PLSTMConfig,
        dict(vocab_size=128, hidden_size=32, num_heads=2, head_k_dim=8, head_v_dim=8, source_dim=2, mark_dim=2),
    ),
    "plstm-d-conv-tied": _tiny(
        PLSTMConfig,
        dict(
            vocab_size=128,
            hidden_size=32,
            num_heads=2,
            transition_mode="D",
            use_short_conv=True,
            chunk_size=4,
            tie_word_embeddings=True,
        ),
    ),
    "s4d": _tiny(S4DConfig, dict(vocab_size=128, hidden_size=32, d_state=8, tie_word_embeddings=False)),
    "s4d-legs-tied": _tiny(
        S4DConfig, dict(vocab_size=128, hidden_size=32, d_state=16, ssm_init="legs", tie_word_embeddings=True)
    ),
    "liger": _tiny(LigerConfig, dict(**_LLAMA, window_size=5, tie_word_embeddings=True)),
    "lizard": _tiny(LizardConfig, dict(**_LLAMA, window_size=4, num_sinks=2)),
    "aaren": _tiny(AarenConfig, dict(vocab_size=128, hidden_size=32, num_heads=2)),
    "gam-tied": _tiny(
        GAMConfig,
        dict(vocab_size=128, hidden_size=32, num_memory_slots=24, conv_kernel_size=3, tie_word_embeddings=True),
    ),
    # recurrent depth: 1 + 2 x 2 + 1 blocks; deterministic (a zero initial latent state, init_scale 0; training at the
    # fixed depth, every step with gradients)
    "recurrent-depth": _tiny(
        RecurrentDepthConfig,
        dict(
            vocab_size=128,
            n_embd=32,
            n_heads=2,
            intermediate_size=48,
            num_hidden_layers=4,
            mean_recurrence=2,
            mean_backprop_depth=2,
            sampling_scheme="fixed",
            init_scale=0.0,
        ),
    ),
    "hnet": _hnet(["m1", ["T1g1"], "M1"]),
    "hnet-2stage-word": _hnet(
        ["t1", ["m1", ["T1"], "m1"], "m1"],
        d_model=[32, 48, 64],
        d_intermediate=[64, 96, 128],
        attn_cfg={"num_heads": [2, 2, 2], "rotary_emb_dim": [8, 8, 8], "window_size": [5, 5, -1]},
        boundary_router="word",
        tie_word_embeddings=True,
    ),
}

#: one tiny config per architecture for the slower tests (Trainer, PEFT, DDP); their vocab is forced to 256 (bytes)
TRAIN_CONFIGS = ["gla-conv-tied", "paralstm-tied", "liger", "lizard", "hnet", "recurrent-depth"]
TEXT_VOCAB = 256


def train_config_for(name: str):
    return TINY_CONFIGS[name](vocab_size=TEXT_VOCAB)


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    yield


def pytest_generate_tests(metafunc):
    if "tiny_name" in metafunc.fixturenames:
        metafunc.parametrize("tiny_name", list(TINY_CONFIGS))
    if "train_name" in metafunc.fixturenames:
        metafunc.parametrize("train_name", TRAIN_CONFIGS)


@pytest.fixture
def tiny_config(tiny_name):
    return TINY_CONFIGS[tiny_name]()


@pytest.fixture
def train_config(train_name):
    return train_config_for(train_name)


@pytest.fixture(scope="session")
def fresh_processes(tmp_path_factory, draw_seed):
    """Every tiny config loaded in two fresh interpreters (test_hub.py, test_auto.py): see FreshProcesses."""
    seed = draw_seed()
    fla = importlib.util.find_spec("fla") is not None
    return FreshProcesses(tmp_path_factory.mktemp("fresh"), TINY_CONFIGS, seed, fla=fla)
