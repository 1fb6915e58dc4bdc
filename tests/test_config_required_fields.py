"""Every config field left None, and fields at edge values (issue 21, item 8).

A field whose default is None (optional) left None either gets a default derived from the others, and then the model
builds and runs a forward pass on 3 tokens, or is refused with a ValueError naming it. A required field given None
is a wrong type: a TypeError (or ValueError) naming it. Never an error from deep inside (a TypeError such as
"'NoneType' object is not iterable", an AttributeError, IndexError or KeyError, an assertion in torch).
"""

import inspect

import pytest
import torch
from transformers import PretrainedConfig

from hf_seqmodels import GLAConfig, HNetConfig, LigerConfig, LizardConfig, ParaRNNConfig, S4DConfig
from hf_seqmodels.memory import MemoryBankConfig, attach_memory_bank, build_memory_index
from hf_seqmodels.models import GLAForCausalLM
from hf_seqmodels.models.hnet.tokenization_byte import ByteTokenizer
from hf_seqmodels.models.linearized import LinearizedLlamaConfig
from hf_seqmodels.registry import classes_for_config

_SEQ = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, intermediate_size=48)
_LLAMA = dict(_SEQ, num_attention_heads=4, num_key_value_heads=2, window_size=2)
_HNET = dict(
    arch_layout=["m1", ["T1"], "m1"],
    d_model=[32, 48],
    d_intermediate=[0, 64],
    vocab_size=256,
    ssm_cfg={"d_state": 8, "head_dim": 16},
    attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [3, -1]},
)
_MEMORY = dict(block_sizes=(4, 2), branching=2, generic_memory_prob=0.0)

#: config class -> the small fields every case starts from
BASES = {
    GLAConfig: dict(_SEQ, num_heads=2, use_short_conv=True),
    ParaRNNConfig: dict(_SEQ, cell="lstm"),
    S4DConfig: dict(_SEQ, d_state=8),
    LigerConfig: _LLAMA,
    LizardConfig: dict(_LLAMA, num_sinks=2),
    LinearizedLlamaConfig: _LLAMA,  # the base of Liger and Lizard: no model of its own
    HNetConfig: _HNET,
    MemoryBankConfig: _MEMORY,
}


def _fields(config_class):
    """(name, default) of every ``__init__`` argument along the class's bases (kwargs flow up to them), and every
    dataclass field of MemoryBankConfig."""
    out = {}
    for cls in config_class.__mro__:
        if cls in (PretrainedConfig, object) or "__init__" not in vars(cls):
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out.setdefault(p.name, p.default)
    return sorted(out.items())


pytestmark = pytest.mark.usefixtures("one_thread")

NONE_CASES = [
    pytest.param(cls, name, default is None, id=f"{cls.__name__}.{name}")
    for cls in BASES
    for name, default in _fields(cls)
]


@pytest.fixture(scope="module")
def memory_index():
    texts = [f"text number {i} about topic {i % 3}" for i in range(12)]
    return build_memory_index(texts, levels=2, branching=2, embed_dim=16, progress=False)


def _runs(config, memory_index=None):
    """Build the config's model (for a MemoryBankConfig: a tiny GLA with the bank attached) and run 3 tokens."""
    if isinstance(config, LinearizedLlamaConfig) and type(config) is LinearizedLlamaConfig:
        return  # no model of its own: LigerConfig and LizardConfig build on it
    if isinstance(config, MemoryBankConfig):
        model = GLAForCausalLM(GLAConfig(**{**BASES[GLAConfig], "vocab_size": 256}))
        model = attach_memory_bank(model, config, memory_index, tokenizer=ByteTokenizer())
        vocab = 256
    else:
        model = classes_for_config(config)[2](config)
        vocab = config.vocab_size
    with torch.no_grad():
        logits = model.eval()(torch.randint(0, min(vocab, 120), (2, 3))).logits
    assert logits.shape == (2, 3, vocab) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("config_class,name,optional", NONE_CASES)
def test_each_field_left_none(config_class, name, optional, memory_index):
    kwargs = {**BASES[config_class], name: None}
    try:
        config = config_class(**kwargs)
    except (ValueError, TypeError) as err:
        assert name in str(err), f"{type(err).__name__} does not name `{name}`: {err}"
        if optional:
            assert isinstance(err, ValueError), f"an optional field left None must give a ValueError: {err!r}"
        return
    _runs(config, memory_index)


EDGES = [
    # shared fields: the pad id must be an id of the vocabulary (torch's Embedding asserts otherwise)
    (GLAConfig, dict(pad_token_id=64), "pad_token_id"),
    (ParaRNNConfig, dict(pad_token_id=-65), "pad_token_id"),
    (LizardConfig, dict(pad_token_id=63), None),
    (GLAConfig, dict(vocab_size=1, bos_token_id=0, eos_token_id=0), None),
    (GLAConfig, dict(intermediate_size=1, conv_size=1, gate_low_rank_dim=1), None),
    (ParaRNNConfig, dict(cell="gru", state_size=1, newton_max_iter=0, conv_size=1), None),
    (ParaRNNConfig, dict(num_heads=32, recurrent_clip=0.5), None),
    # linearized Llamas: RoPE turns pairs of dimensions, the derived head_dim must be even
    (LigerConfig, dict(hidden_size=36), "head_dim"),
    (LizardConfig, dict(head_dim=9), "head_dim"),
    (LinearizedLlamaConfig, dict(head_dim=3), "head_dim"),
    (LigerConfig, dict(head_dim=4, window_size=1, softmax_layers=[0], gla_weight=1.0), None),
    (LizardConfig, dict(num_key_value_heads=4, feature_dim=1, num_sinks=0, max_position_embeddings=1), None),
    (LigerConfig, dict(rope_parameters={}), None),
    # H-Net: the example; the widths cannot be derived, the MLP widths can
    (HNetConfig, dict(arch_layout=["m2", ["T4"], "m2"], d_model=None, d_intermediate=None), "d_model"),
    (HNetConfig, dict(d_intermediate=None), None),
    (
        HNetConfig,
        dict(
            arch_layout=["m1", ["t1", ["G1"], "r1"], "L1"],
            d_model=[32, 48, 64],
            d_intermediate=None,
            attn_cfg=None,
            gla_cfg={"num_heads": 2},
        ),
        None,
    ),
    (HNetConfig, dict(arch_layout=None), "arch_layout"),  # d_model without its layout is not silently replaced
    (HNetConfig, dict(arch_layout=None, d_model=None, d_intermediate=None, ssm_cfg=None, attn_cfg=None), None),
    (HNetConfig, dict(arch_layout="m1", d_model=None), "arch_layout"),
    (HNetConfig, dict(d_model=32), "d_model"),
    (HNetConfig, dict(d_model=[32, None]), "d_model[1]"),
    (HNetConfig, dict(d_model=[16, 24], ssm_cfg=None), "ssm_cfg['head_dim']"),
    (HNetConfig, dict(d_model=[18, 30], attn_cfg=None, ssm_cfg={"d_state": 8, "head_dim": 12}), None),
    (HNetConfig, dict(attn_cfg={"num_heads": None, "rotary_emb_dim": None}), None),
    (HNetConfig, dict(d_model=[32, 64], attn_cfg={"num_heads": [2, 4]}), None),  # rotary dims fit the heads given
    (HNetConfig, dict(ssm_cfg={"d_state": 8, "head_dim": 16, "chunk_size": None}, compression_ratio=2.5), None),
    (HNetConfig, dict(compression_ratio=[None]), "compression_ratio"),
    # memory banks: a level without memory, the derived level count and init
    (MemoryBankConfig, dict(block_sizes=(4, 0), levels=None, init_std=None, embedder=None, layers=[0]), None),
    (MemoryBankConfig, dict(block_sizes=None), "block_sizes"),
]


@pytest.mark.filterwarnings("ignore:newton_solve. no convergence after 0:RuntimeWarning")  # newton_max_iter=0
@pytest.mark.parametrize(
    "config_class,overrides,refused", EDGES, ids=[f"{c.__name__}-{'-'.join(o)}" for c, o, _ in EDGES]
)
def test_edge_values(config_class, overrides, refused, memory_index):
    kwargs = {**BASES[config_class], **overrides}
    if refused is not None:
        with pytest.raises((ValueError, TypeError)) as err:
            config_class(**kwargs)
        assert refused in str(err.value), f"{err.value!r} does not name `{refused}`"
        return
    _runs(config_class(**kwargs), memory_index)


def test_hnet_mlp_widths_are_derived_per_stage():
    """Left None: 0 for a stage without MLP layers, SwiGLU's 8/3 x d_model rounded up to 64 for a stage with them
    (the reference's released shapes: 1536 -> 4096, 2048 -> 5504)."""
    config = HNetConfig(arch_layout=["m1", ["T1", ["T1"], "m1"], "m1"], d_model=[32, 1536, 2048])
    assert config.d_intermediate == [0, 4096, 5504]
    assert HNetConfig(**{**_HNET, "d_intermediate": None}).d_intermediate == [0, 128]
