import hashlib
import json
import os

import pytest
import torch
from memory_helpers import MODELS, ByteTokenizer, corpus, ids_for, randomize_bank
from safetensors import safe_open

from hf_seqmodels.memory import (
    MemoryBankConfig,
    MemoryBankError,
    attach_memory_bank,
    build_memory_index,
    load_memory_model,
    memory_optimizer,
)

TEXTS = corpus(6)
NEW = ["The element qq1 has atomic number 77.", "def h(z):\n    return z", "The river Oda flows past 3 villages"]


@pytest.fixture(scope="module")
def index():
    return build_memory_index(TEXTS, levels=2, branching=3, embed_dim=64, progress=False)


def dir_digest(path):
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def saved_model(tmp_path, index, arch="gla", max_shard_size=2 << 30, layers="all"):
    model = MODELS[arch]()
    tok = ByteTokenizer()
    attach_memory_bank(model, MemoryBankConfig(block_sizes=(5, 3), branching=3, layers=layers), index, tokenizer=tok)
    randomize_bank(model, 0.3)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    if max_shard_size != 2 << 30:
        from hf_seqmodels.memory import save_memory

        save_memory(model, out, max_shard_size=max_shard_size, part_size=600)
    return model, tok, out


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("reader", ["pread", "mmap"])
def test_roundtrip_identical_logits_and_routing(tmp_path, index, arch, reader):
    model, tok, out = saved_model(tmp_path, index, arch)
    files = set(os.listdir(out))
    assert {
        "config.json",
        "model.safetensors",
        "memory_config.json",
        "memory_index.json",
        "memory_index.safetensors",
        "memory_bank.safetensors.index.json",
        "memory_bank-00001-of-00001.safetensors",
    } <= files
    with safe_open(out / "model.safetensors", "pt") as f:  # the anchor's file holds the anchor only
        keys = set(f.keys())
    assert not any("memory" in k for k in keys)
    anchor_keys = {k for k in model.state_dict() if not k.startswith("memory_bank.")}
    assert keys <= anchor_keys and len(keys) >= len(anchor_keys) - 1  # (tied head may be dropped)
    loaded = load_memory_model(out, tokenizer=tok, reader=reader)
    assert not loaded.memory_bank.trainable
    assert torch.equal(loaded.memory_index.route(NEW), model.memory_index.route(NEW))
    enc = tok(NEW)
    explicit = torch.tensor([[2, 8], [-1, -1], [0, 0]])  # incl. a generic row
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, model(**enc).logits)
        assert torch.equal(loaded(**enc, memory_paths=explicit).logits, model(**enc, memory_paths=explicit).logits)
        g1 = model.generate(enc["input_ids"][:1, :10], max_new_tokens=5, do_sample=False)
        g2 = loaded.generate(enc["input_ids"][:1, :10], max_new_tokens=5, do_sample=False)
    assert torch.equal(g1, g2)


def test_bare_anchor_loads_from_the_same_folder(tmp_path, index):
    """Only through the anchor's own class (the Auto classes load anchor + bank: test_auto_loading.py)."""
    model, tok, out = saved_model(tmp_path, index)
    anchor = type(model).from_pretrained(out)
    assert not hasattr(anchor, "memory_bank")
    ids = ids_for(NEW)
    with torch.no_grad():
        from hf_seqmodels.memory import memory_disabled

        with memory_disabled(model):
            ref = model(ids).logits
        assert torch.equal(anchor(ids).logits, ref)


def test_many_shards_and_trainable_reload(tmp_path, index):
    model, tok, out = saved_model(tmp_path, index, layers=[1], max_shard_size=900)
    meta = json.loads((out / "memory_bank.safetensors.index.json").read_text())
    assert len(meta["files"]) == 14  # one block per part (1920 bytes > 600), one part per shard
    assert len([f for f in os.listdir(out) if f.startswith("memory_bank-")]) == len(meta["files"])  # stale removed
    loaded = load_memory_model(out, tokenizer=tok, trainable=True)
    assert loaded.memory_bank.trainable
    for (n1, p1), (n2, p2) in zip(model.memory_bank.named_parameters(), loaded.memory_bank.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    memory_optimizer(loaded)  # trainable again
    ids = ids_for(NEW)
    with torch.no_grad():
        assert torch.equal(
            loaded(ids, memory_paths=torch.tensor([[0, 1], [2, 8], [-1, -1]])).logits,
            model(ids, memory_paths=torch.tensor([[0, 1], [2, 8], [-1, -1]])).logits,
        )
    # re-saving a disk-backed bank into its own folder keeps it loadable and identical
    disk = load_memory_model(out, tokenizer=tok)
    disk.save_pretrained(out)
    again = load_memory_model(out, tokenizer=tok)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def corrupt_truncate(out):
    p = out / "memory_bank-00001-of-00001.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])


def corrupt_flip(out):
    p = out / "memory_bank-00001-of-00001.safetensors"
    data = bytearray(p.read_bytes())
    data[-50] ^= 0xFF
    p.write_bytes(bytes(data))


def corrupt_header(out):
    p = out / "memory_bank-00001-of-00001.safetensors"
    data = bytearray(p.read_bytes())
    data[10:20] = b"\x00" * 10
    p.write_bytes(bytes(data))


def edit_json(name, fn):
    def go(out):
        p = out / name
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))

    return go


def other_embedder_index(out):
    idx = build_memory_index(TEXTS, levels=2, branching=3, embed_dim=32, progress=False)
    idx.save_pretrained(out)


def missing_shard(out):
    os.remove(out / "memory_bank-00001-of-00001.safetensors")


@pytest.mark.parametrize(
    "damage,match",
    [
        (corrupt_truncate, "truncated"),
        (corrupt_flip, "corrupt \\(sha256"),
        (corrupt_header, "corrupt|truncated"),
        (missing_shard, "missing"),
        (edit_json("memory_config.json", lambda d: d.update(block_sizes=[6, 3])), "block_sizes is \\[5, 3\\]"),
        (edit_json("memory_config.json", lambda d: d.update(block_sizes=[5, 3, 1], levels=3)), "index has 2 levels"),
        (edit_json("memory_config.json", lambda d: d.update(embedder="all-MiniLM-L6-v2")), "expects embedder"),
        (
            edit_json("memory_bank.safetensors.index.json", lambda d: d.update(hidden_size=16)),
            "expected F32 \\[n, 3, 5, 16\\]",
        ),
        (edit_json("memory_config.json", lambda d: d.update(layers=[0])), "layers is \\[0, 1\\]"),
        (other_embedder_index, "expects embedder 'hashed-ngram-64'.*hashed-ngram-32"),
    ],
)
def test_bad_bank_is_a_clear_error_and_writes_nothing(tmp_path, index, damage, match):
    model, tok, out = saved_model(tmp_path, index)
    damage(out)
    before = dir_digest(out)
    with pytest.raises((MemoryBankError, ValueError), match=match):
        loaded = load_memory_model(out, tokenizer=tok)
        loaded(ids_for(NEW))  # an embedder mismatch may only show when routing
    assert dir_digest(out) == before


def test_width_mismatch_at_attach(tmp_path, index):
    from hf_seqmodels.memory import MemoryBank

    model, tok, out = saved_model(tmp_path, index)
    bank = MemoryBank.from_pretrained(out)
    other = MODELS["gla"](hidden=64)
    with pytest.raises(MemoryBankError, match="32 wide, the model's MLPs take 64"):
        attach_memory_bank(other, MemoryBankConfig(block_sizes=(5, 3), branching=3), index, bank=bank)
