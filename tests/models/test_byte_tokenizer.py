"""ByteTokenizer: UTF-8 bytes as ids, fixed special ids, exact round trips, padding, save/load, AutoTokenizer in
fresh processes (after ``import hf_seqmodels``, and with ``trust_remote_code=True`` and no prior import)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_seqmodels.models.hnet.tokenization_byte import BOS_ID, EOS_ID, PAD_ID, TOKENIZER_FILE, ByteTokenizer

TRICKY = [
    "",
    "héllo",
    "naïve café, Straße; ¿qué? ¡sí!",
    "日本語のテキスト、中文文本。한국어",
    "emoji 🎉🚀 and a family 👨‍👩‍👧 and flags 🇺🇸",
    "NUL\x00inside\x00\x00",
    "tabs\tand\nnewlines\r\n\v\f end",
    "  leading and trailing spaces  ",
    "<bos><eos><pad> look like special tokens but are text",
    "<0x41> looks like a byte token",
    "\U0010ffff\u200b\ufeff\ufffd",  # last code point, zero-width space, BOM, the replacement character itself
    "x" * 1000,
]


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer()


def _random_text(rng: random.Random, n: int) -> str:
    """Code points from all planes (no surrogates: they are not text and UTF-8 cannot hold them)."""
    out = []
    for _ in range(n):
        plane = rng.choice([0x80, 0x800, 0x10000, 0x110000])
        cp = rng.randrange(plane)
        out.append(chr(cp if not 0xD800 <= cp < 0xE000 else 0x41))
    return "".join(out)


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert ids == [BOS_ID] + list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<bos>" + text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_round_trip_random_unicode(tok):
    rng = random.Random(torch.initial_seed())
    texts = [_random_text(rng, rng.randrange(0, 60)) for _ in range(50)]
    batch = tok(texts)["input_ids"]
    assert tok.batch_decode(batch, skip_special_tokens=True) == texts


def test_ids_and_vocab(tok):
    assert tok("héllo")["input_ids"] == [254, 104, 195, 169, 108, 108, 111]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID) == (253, 254, 255)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert tok.unk_token is None
    assert tok.vocab_size == len(tok) == len(tok.get_vocab()) == 256
    assert sorted(tok.get_vocab().values()) == list(range(256))
    assert sorted(tok.all_special_ids) == [253, 254, 255]
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert tok.tokenize("aé") == ["<0x61>", "<0xC3>", "<0xA9>"]
    assert tok.convert_tokens_to_ids(["<0x00>", "<0xFC>", "<bos>"]) == [0, 252, 254]
    assert tok.convert_ids_to_tokens([0, 10, 253, 254, 255]) == ["<0x00>", "<0x0A>", "<pad>", "<bos>", "<eos>"]
    assert tok.convert_tokens_to_string(tok.tokenize("héllo")) == "héllo"
    enc = tok("hi")
    assert set(enc.keys()) == {"input_ids", "attention_mask"}


def test_bos_eos_options():
    assert ByteTokenizer(add_eos_token=True)("ab")["input_ids"] == [254, 97, 98, 255]
    assert ByteTokenizer(add_bos_token=False)("ab")["input_ids"] == [97, 98]
    both = ByteTokenizer(add_bos_token=True, add_eos_token=True)
    assert both("ab", add_special_tokens=False)["input_ids"] == [97, 98]
    assert both("a", "b")["input_ids"] == [254, 97, 255, 254, 98, 255]
    enc = both("ab", return_special_tokens_mask=True)
    assert enc["special_tokens_mask"] == [1, 0, 0, 1]


def test_special_token_strings_in_text(tok):
    # default: text is always bytes, so text spelling "<eos>" is not the EOS token
    assert tok("<eos>", add_special_tokens=False)["input_ids"] == list(b"<eos>")
    literal = ByteTokenizer(split_special_tokens=False)
    assert literal("a<eos>", add_special_tokens=False)["input_ids"] == [97, 255]


def test_decode_specials_and_invalid_bytes(tok):
    assert tok.decode([254, 104, 105, 255, 253, 253]) == "<bos>hi<eos><pad><pad>"
    assert tok.decode([254, 104, 105, 255, 253], skip_special_tokens=True) == "hi"
    assert tok.decode([0xC3]) == "\ufffd"  # truncated 2-byte character
    assert tok.decode([0x80, 0x41]) == "\ufffdA"  # stray continuation byte
    assert tok.decode([0xF0, 0x9F, 0x8E]) == "\ufffd"  # truncated emoji
    assert tok.decode([0xC0, 0xAF]) == "\ufffd\ufffd"  # overlong encoding
    assert tok.decode([0xED, 0xA0, 0x80]) == "\ufffd\ufffd\ufffd"  # encoded surrogate
    # a special token splits a character; skipping it leaves the bytes around it joined
    assert tok.decode([0xC3, 254, 0xA9]) == "\ufffd<bos>\ufffd"
    assert tok.decode([0xC3, 254, 0xA9], skip_special_tokens=True) == "é"
    assert tok.decode(torch.tensor([254, 0xC3, 0xA9])) == "<bos>é"
    assert tok.decode(104) == "h"
    assert tok.batch_decode(torch.tensor([[254, 104], [105, 255]]), skip_special_tokens=True) == ["h", "i"]


@pytest.mark.parametrize("bad", [[104, 256], [-1], [104, 1000, 105], [1.5]])
def test_decode_bad_ids(tok, bad):
    with pytest.raises(ValueError, match="token_ids"):
        tok.decode(bad)


def test_bad_tokens(tok):
    with pytest.raises(ValueError, match="not a ByteTokenizer token"):
        tok.convert_tokens_to_ids(["hello"])
    with pytest.raises(ValueError, match="ids holds 300"):
        tok.convert_ids_to_tokens([300])
    with pytest.raises(ValueError, match="must differ"):
        ByteTokenizer(bos_token="<x>", eos_token="<x>")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding(side):
    tok = ByteTokenizer(padding_side=side)
    texts = ["a", "héllo", ""]
    lengths = [1 + len(t.encode()) for t in texts]
    by_attribute = tok(texts, padding=True, return_tensors="pt")
    by_argument = ByteTokenizer()(texts, padding=True, return_tensors="pt", padding_side=side)
    for enc in (by_attribute, by_argument):
        ids, mask = enc["input_ids"], enc["attention_mask"]
        assert ids.dtype == torch.long and ids.shape == (3, max(lengths)) and mask.shape == ids.shape
        for row, (text, n) in enumerate(zip(texts, lengths)):
            real = ids[row][mask[row].bool()].tolist()
            assert real == [BOS_ID] + list(text.encode())
            assert mask[row].sum() == n
            pads = ids[row][~mask[row].bool()]
            assert (pads == PAD_ID).all()
            if side == "left":
                assert mask[row, -n:].all() and not mask[row, : ids.shape[1] - n].any()
            else:
                assert mask[row, :n].all() and not mask[row, n:].any()
        assert tok.batch_decode(ids, skip_special_tokens=True) == texts
    padded = tok(["ab"], padding="max_length", max_length=6)["input_ids"][0]
    assert padded == ([253, 253, 253, 254, 97, 98] if side == "left" else [254, 97, 98, 253, 253, 253])
    assert tok("abcdef", truncation=True, max_length=4)["input_ids"] == [254, 97, 98, 99]


def test_pad_collator():
    from transformers import DataCollatorForLanguageModeling

    tok = ByteTokenizer()
    collate = DataCollatorForLanguageModeling(tok, mlm=False)
    batch = collate([tok("hi"), tok("hello")])
    assert batch["input_ids"].shape == (2, 6)
    assert batch["labels"][0].tolist() == [254, 104, 105, -100, -100, -100]


def _saved_files(folder):
    return sorted(os.listdir(folder))


def test_save_load(tmp_path):
    tok = ByteTokenizer(add_eos_token=True, padding_side="left")
    tok.save_pretrained(tmp_path)
    files = _saved_files(tmp_path)
    assert "tokenizer_config.json" in files and TOKENIZER_FILE in files
    assert [f for f in files if f.endswith(".py")] == [TOKENIZER_FILE]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and config["add_eos_token"] is True
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_hf_seqmodels.ByteTokenizer", None]}
    assert config["tokenizer_class"] == "ByteTokenizer"
    assert config["padding_side"] == "left"
    loader = (tmp_path / TOKENIZER_FILE).read_text()
    assert loader.splitlines()[0].startswith('"""') and "trust_remote_code" in loader.splitlines()[0]
    assert loader.splitlines()[1:] == [
        "from hf_seqmodels.models.hnet.tokenization_byte import ByteTokenizer  # noqa: F401"
    ]

    again = ByteTokenizer.from_pretrained(tmp_path)
    assert (again.add_bos_token, again.add_eos_token, again.padding_side) == (True, True, "left")
    assert again("hé")["input_ids"] == [254, 104, 195, 169, 255]
    assert len(again) == 256 and again.all_special_ids == tok.all_special_ids
    # saving what was loaded writes the same files
    again.save_pretrained(tmp_path / "again")
    assert _saved_files(tmp_path / "again") == files
    assert json.loads((tmp_path / "again" / "tokenizer_config.json").read_text()) == config


# -- fresh processes -----------------------------------------------------------------------------------------------
#: A throw-away config registered with AutoConfig and (through register_byte_tokenizer) with AutoTokenizer, as the
#: package will do for H-Net. When HNetConfig exists, replace this snippet by the one line
#: "from hf_seqmodels import HNetConfig as Config" (``import hf_seqmodels`` then does the registering).
CONFIG_SETUP = """
from transformers import AutoConfig, PretrainedConfig
from hf_seqmodels.models.hnet.tokenization_byte import register_byte_tokenizer
class Config(PretrainedConfig):
    model_type = "hf_seqmodels_byte_tokenizer_test"
AutoConfig.register(Config.model_type, Config)
register_byte_tokenizer(Config)
"""

CHECK = """
assert type(tok).__name__ == "ByteTokenizer", type(tok)
assert type(tok).__module__ == "hf_seqmodels.models.hnet.tokenization_byte", type(tok).__module__
assert tok("hé")["input_ids"] == [254, 104, 195, 169, 255], tok("hé")
assert tok.decode([254, 104, 195, 169], skip_special_tokens=True) == "hé"
assert tok.padding_side == "left"
tok.save_pretrained(sys.argv[2])
print("OK")
"""


AFTER_IMPORT = (
    "import sys\nimport hf_seqmodels\n"
    + CONFIG_SETUP
    + textwrap.dedent("""
    Config().save_pretrained(sys.argv[1])
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    assert not any(m.startswith("transformers_modules") for m in sys.modules), "remote code was used"
    """)
    + CHECK
)

REMOTE_CODE = (
    textwrap.dedent("""
    import sys
    from transformers import AutoTokenizer
    assert "hf_seqmodels" not in sys.modules
    tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert any(m.endswith(".tokenization_hf_seqmodels") for m in sys.modules), "the loader file was not used"
    """)
    + CHECK
)


@pytest.fixture(scope="module")
def fresh_processes(tmp_path_factory):
    """Both fresh-process loads, started at once (each child spends seconds importing torch and transformers)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_SEQMODELS_SEED")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    runs = {}
    for name, code in (("after_import", AFTER_IMPORT), ("remote_code", REMOTE_CODE)):
        root = tmp_path_factory.mktemp(name)
        ByteTokenizer(add_eos_token=True, padding_side="left").save_pretrained(root / "tok")
        files = _saved_files(root / "tok")
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(root / "tok"), str(root / "resaved")],
            cwd=root,
            env={**env, "HF_HOME": str(root / "hf_home")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs[name] = (proc, root, files)
    yield runs
    for proc, _, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(run):
    proc, root, files = run
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "OK" in out, f"rc={proc.returncode}\n{out[-3000:]}\n{err[-6000:]}"
    return root, files


@pytest.mark.subprocess
def test_auto_tokenizer_after_import_fresh_process(fresh_processes):
    root, files = _finish(fresh_processes["after_import"])
    assert _saved_files(root / "resaved") == files


@pytest.mark.subprocess
def test_auto_tokenizer_remote_code_fresh_process(fresh_processes):
    root, files = _finish(fresh_processes["remote_code"])
    # saving a tokenizer loaded as remote code writes the loader file, not a copy of this package's module
    assert _saved_files(root / "resaved") == files
    assert json.loads((root / "resaved" / "tokenizer_config.json").read_text()) == json.loads(
        (root / "tok" / "tokenizer_config.json").read_text()
    )
