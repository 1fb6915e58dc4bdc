import pytest

from hf_seqmodels.memory import MemoryBankConfig


def test_paper_arithmetic_160m_anchor():
    """The paper's 160M anchor: 35 layers of width 512, blocks (256, 64, 16, 0), branching 16."""
    cfg = MemoryBankConfig(block_sizes=(256, 64, 16, 0), branching=16)
    fetched = cfg.fetched_parameters(hidden_size=512, num_layers=35)
    bank = cfg.bank_parameters(hidden_size=512, num_layers=35)
    assert fetched == (256 + 64 + 16) * 3 * 512 * 35 == 18_063_360
    assert bank == (256 * 16 + 64 * 256 + 16 * 4096) * 3 * 512 * 35 == 4_624_220_160
    assert f"{fetched / 1e6:.2f}M" == "18.06M" and f"{bank / 1e9:.2f}B" == "4.62B"
    assert cfg.bank_parameters(512, 35, include_generic=True) == bank + fetched
    assert cfg.size_report(512, 35)["clusters_per_level"] == [16, 256, 4096, 65536]


def test_layer_subset_counts_only_those_layers():
    cfg = MemoryBankConfig(block_sizes=(4, 2), branching=4, layers=[0, 2])
    assert cfg.fetched_parameters(8, 3) == 6 * 3 * 8 * 2
    assert cfg.bank_parameters(8, 3) == (4 * 4 + 2 * 16) * 3 * 8 * 2
    assert cfg.layer_indices(3) == [0, 2]
    with pytest.raises(ValueError, match="out of range"):
        cfg.layer_indices(2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_sizes=(0, 0)), "at least one level"),
        (dict(block_sizes=(4, -1)), "non-negative"),
        (dict(block_sizes=(4, 2), levels=3), "levels"),
        (dict(branching=1), "branching"),
        (dict(layers=[]), "empty"),
        (dict(layers=[-1, 2]), "layers"),
        (dict(memory_lr=0.0), "memory_lr"),
        (dict(memory_weight_decay=-1e-3), "memory_weight_decay"),
        (dict(init_std=0.0), "init_std"),
        (dict(generic_memory_prob=1.5), "generic_memory_prob"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryBankConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_sizes=4), "sequence of ints"),
        (dict(layers=3), "layers"),
        (dict(branching=2.5), "branching"),
        (dict(freeze_anchor="yes"), "freeze_anchor"),
    ],
)
def test_wrong_types_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        MemoryBankConfig(**kwargs)


def test_roundtrip(tmp_path):
    cfg = MemoryBankConfig(
        block_sizes=(8, 0, 2),
        branching=4,
        layers=[1],
        generic_memory_prob=0.25,
        freeze_anchor=False,
        embedder="hashed-ngram-64",
    )
    cfg.save_pretrained(tmp_path)
    again = MemoryBankConfig.from_pretrained(tmp_path)
    assert again == cfg and again.levels == 3
    with pytest.raises(ValueError, match="unknown fields"):
        MemoryBankConfig.from_dict({**cfg.to_dict(), "bogus": 1})
