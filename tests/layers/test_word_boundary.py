"""HAT's fixed word-boundary router: hand-written chunkings of tricky strings, the byte limit that never splits a
character, padding, and the decoding step (== the full form, token by token) on random bytes and real text."""

from __future__ import annotations

import random

import pytest
import torch

from hf_seqmodels.layers.word_boundary import word_boundaries, word_boundary_state, word_boundary_step

PAD, BOS, EOS = 253, 254, 255


def chunks(text: str, max_chunk_bytes: int = 16) -> list[str]:
    """The text cut at the chunk starts (each chunk must be valid UTF-8 on its own)."""
    data = text.encode("utf-8")
    starts = word_boundaries(torch.tensor([list(data)], dtype=torch.long), max_chunk_bytes=max_chunk_bytes)[0]
    return [bytes(c).decode("utf-8") for c in _split(list(data), starts.tolist())]


def _split(ids: list[int], starts: list[bool]) -> list[list[int]]:
    out: list[list[int]] = []
    for b, s in zip(ids, starts):
        if s or not out:
            out.append([])
        out[-1].append(b)
    assert starts[:1] in ([], [True])
    return out


def reference(ids: list[int], max_chunk_bytes: int = 16, special_ids=(PAD, BOS, EOS)) -> list[bool]:
    """The rules as plain Python, written from the docstring without the module's code."""

    def kind(b):
        if b in special_ids or not 0 <= b < 256:
            return "special"
        if b == 0x20:
            return "space"
        if b in b"\t\n\r\v\f":
            return "ws"
        if b >= 0x80 or b in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
            return "word"
        return "punct"

    out, length, prev = [], 0, None
    for b in ids:
        k = kind(b)
        if prev is None:
            start = True
        else:
            p = kind(prev)
            start = (
                k in ("space", "ws", "special")
                or p in ("ws", "special")
                or (k == "word" and p not in ("word", "space"))
            )
            if not start and length >= max_chunk_bytes and not 0x80 <= b <= 0xBF:
                start = True
        length = 1 if start else length + 1
        out.append(start)
        prev = b
    return out


CASES = [
    ("Hello, world!", ["Hello,", " world!"]),
    ("Wait... what?!", ["Wait...", " what?!"]),
    ("end.) Next", ["end.)", " Next"]),
    ("(a) [b]", ["(", "a)", " [", "b]"]),
    (" (note)", [" (", "note)"]),
    ('"quoted"', ['"', 'quoted"']),
    ("C++ & C#", ["C++", " &", " C#"]),
    ("e-mail: a@b.c", ["e-", "mail:", " a@", "b.", "c"]),
    ("foo_bar-baz", ["foo_bar-", "baz"]),
    ("!!!", ["!!!"]),
    ("a\tb", ["a", "\t", "b"]),
    ("line1\nline2", ["line1", "\n", "line2"]),
    ("x\r\ny", ["x", "\r", "\n", "y"]),
    ("\n\n", ["\n", "\n"]),
    ("a\n b", ["a", "\n", " b"]),
    ("\t,x", ["\t", ",", "x"]),
    ("v\vf\fz", ["v", "\v", "f", "\f", "z"]),
    ("a  b", ["a", " ", " b"]),
    ("   ", [" ", " ", " "]),
    (" lead", [" lead"]),
    ("  lead", [" ", " lead"]),
    ("trail ", ["trail", " "]),
    ("trail  ", ["trail", " ", " "]),
    ("a , b", ["a", " ,", " b"]),
    ("x", ["x"]),
    (",", [","]),
    (" ", [" "]),
    ("\x00a\x00", ["\x00", "a\x00"]),
    ("123 4.5 x1_y", ["123", " 4.", "5", " x1_y"]),
    ("3.14159, 2,718", ["3.", "14159,", " 2,", "718"]),
    ("naïve café", ["naïve", " café"]),
    ("Straße über", ["Straße", " über"]),
    ("東京タワー", ["東京タワー"]),
    ("你好，世界。", ["你好，世界。"]),  # non-ASCII punctuation is made of bytes >= 0x80: letters
    ("日本 語", ["日本", " 語"]),
    ("hi 🎉!", ["hi", " 🎉!"]),
    ("👨‍👩‍👧", ["👨‍👩‍👧"]),  # 18 bytes; the cut would fall inside the last emoji, which ends the text
]


@pytest.mark.parametrize("text,expected", CASES, ids=[repr(c[0]) for c in CASES])
def test_chunks(text, expected):
    assert "".join(expected) == text
    assert chunks(text) == expected


LONG = [
    ("a" * 20, 16, ["a" * 16, "a" * 4]),
    ("a" * 33, 16, ["a" * 16, "a" * 16, "a"]),
    ("word " + "x" * 17, 16, ["word", " " + "x" * 15, "xx"]),  # the space counts
    ("hello world", 4, ["hell", "o", " wor", "ld"]),
    ("ab,,,,,,", 3, ["ab,", ",,,", ",,"]),  # punctuation runs are cut too
    ("é" * 10, 16, ["é" * 8, "é" * 2]),  # 2-byte characters, the limit falls between two
    ("a" + "é" * 10, 16, ["a" + "é" * 8, "é" * 2]),  # the limit falls inside a character: 17 bytes
    ("日本語のテキスト", 16, ["日本語のテキ", "スト"]),  # 3-byte characters: 18 bytes, then 6
    ("🎉" * 10, 16, ["🎉" * 4, "🎉" * 4, "🎉" * 2]),
    ("a🎉🎉🎉🎉🎉", 16, ["a🎉🎉🎉🎉", "🎉"]),  # 17 bytes: the cut moves past the emoji's last byte
    ("ab🎉cd", 3, ["ab🎉", "cd"]),
    ("🎉🎉", 1, ["🎉", "🎉"]),
    ("aé🎉", 1, ["a", "é", "🎉"]),
    ("xyz", 1, ["x", "y", "z"]),
    (" wörter", 2, [" w", "ö", "rt", "er"]),
]


@pytest.mark.parametrize("text,limit,expected", LONG, ids=[f"{c[0]!r}/{c[1]}" for c in LONG])
def test_long_words(text, limit, expected):
    assert "".join(expected) == text
    assert chunks(text, limit) == expected


def test_long_mixed_word_never_splits_a_character():
    text = ("ĀāĂă日本🎉" * 12) + " ok"
    for limit in (1, 2, 3, 5, 16):
        got = chunks(text, limit)  # decoding each chunk alone proves no character is split
        assert "".join(got) == text
        assert all(len(c.encode()) <= limit + 3 for c in got)
        assert got[-1] == (" ok" if limit >= 3 else "k")


def test_special_tokens():
    ids = [BOS] + list(b"hi there") + [EOS, PAD, PAD]
    got = _split(ids, word_boundaries(torch.tensor([ids])).tolist()[0])
    assert got == [[BOS], list(b"hi"), list(b" there"), [EOS], [PAD], [PAD]]
    ids = [BOS, *b",x", BOS, *b" y", EOS, *b"z"]
    got = _split(ids, word_boundaries(torch.tensor([ids])).tolist()[0])
    assert got == [[BOS], list(b","), list(b"x"), [BOS], list(b" y"), [EOS], list(b"z")]
    # other special ids; ids outside 0..255 (added tokens) are special too
    ids = [0x41, 0x42, 0x00, 0x43, 300]
    got = word_boundaries(torch.tensor([ids]), special_ids=(0,))[0].tolist()
    assert got == [True, False, True, True, True]


def test_padding_left_and_right():
    texts = ["Hello, world!", "a", "  x\r\n" + "y" * 20, "naïve café 🎉🎉🎉🎉🎉", ""]
    rows = [[BOS] + list(t.encode()) for t in texts] + [[]]
    T = max(map(len, rows)) + 2
    alone = [word_boundaries(torch.tensor([r], dtype=torch.long)).tolist()[0] if r else [] for r in rows]
    for side in ("left", "right"):
        ids = torch.full((len(rows), T), PAD, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
        # garbage in padded positions must not matter
        ids[mask == 0] = torch.randint(0, 256, (int((mask == 0).sum()),))
        got = word_boundaries(ids, mask)
        assert got.dtype == torch.bool and got.shape == ids.shape
        assert not got[mask == 0].any()
        for i, r in enumerate(rows):
            assert got[i][mask[i].bool()].tolist() == alone[i], (side, i)
            prev, length = word_boundary_state(ids[i : i + 1], got[i : i + 1], mask[i : i + 1])
            assert (int(prev), int(length)) == _step_state(r)


def test_tiny_shapes_and_errors():
    assert word_boundaries(torch.tensor([[65]])).tolist() == [[True]]
    assert word_boundaries(torch.tensor([[0x20]])).tolist() == [[True]]
    assert word_boundaries(torch.tensor([[0xA9]])).tolist() == [[True]]  # a lone continuation byte at the start
    assert word_boundaries(torch.tensor([[65]]), torch.tensor([[0]])).tolist() == [[False]]
    assert word_boundaries(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)
    assert word_boundaries(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5)
    assert word_boundaries(torch.tensor([[65, 66]], dtype=torch.uint8)).tolist() == [[True, False]]
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        word_boundaries(torch.tensor([[65]]), max_chunk_bytes=0)
    with pytest.raises(ValueError, match="input_ids"):
        word_boundaries(torch.tensor([65]))
    with pytest.raises(ValueError, match="attention_mask"):
        word_boundaries(torch.tensor([[65, 66]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="special_ids"):
        word_boundaries(torch.tensor([[65]]), special_ids=(256,))


# -- the decoding step ---------------------------------------------------------------------------------------------
def _step_all(ids: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boundaries of [B, T] ids from word_boundary_step, one position at a time, and the final state."""
    B, T = ids.shape
    prev = torch.full((B,), -1, dtype=torch.long)
    length = torch.zeros(B, dtype=torch.long)
    out = []
    for t in range(T):
        b, length = word_boundary_step(ids[:, t], prev, length, max_chunk_bytes=limit)
        assert b.shape == (B,) and b.dtype == torch.bool and length.dtype == torch.long
        out.append(b)
        prev = ids[:, t]
    return torch.stack(out, 1) if out else torch.zeros(B, 0, dtype=torch.bool), prev, length


def _step_state(row: list[int], limit: int = 16) -> tuple[int, int]:
    if not row:
        return -1, 0
    _, prev, length = _step_all(torch.tensor([row], dtype=torch.long), limit)
    return int(prev), int(length)


def _random_bytes(B: int, T: int) -> torch.Tensor:
    """Bytes drawn to hit every class often: letters, spaces, whitespace, punctuation, specials, UTF-8 lead and
    continuation bytes (long runs of those too)."""
    pools = [
        list(b"abcXYZ019_"),
        [0x20] * 3,
        list(b"\t\n\r\v\f"),
        list(b".,;!?()\"'-\x00\x7f"),
        [PAD, BOS, EOS],
        [0xC3, 0xE6, 0xF0],
        list(range(0x80, 0xC0)),
    ]
    weights = [6, 3, 1, 2, 1, 2, 4]
    rng = random.Random(torch.initial_seed())
    data = [[rng.choice(rng.choices(pools, weights)[0]) for _ in range(T)] for _ in range(B)]
    return torch.tensor(data, dtype=torch.long)


@pytest.mark.parametrize("limit", [1, 3, 16])
def test_step_equals_full_random(limit):
    ids = _random_bytes(6, 300)
    full = word_boundaries(ids, max_chunk_bytes=limit)
    stepped, prev, length = _step_all(ids, limit)
    assert torch.equal(full, stepped)
    for row in ids.tolist():
        assert word_boundaries(torch.tensor([row]), max_chunk_bytes=limit)[0].tolist() == reference(row, limit)
    s_prev, s_len = word_boundary_state(ids, full)
    assert torch.equal(s_prev, prev) and torch.equal(s_len, length)


def test_step_equals_full_real_text():
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    rng = random.Random(torch.initial_seed())
    T = 400
    starts = [rng.randrange(len(text) - T) for _ in range(4)]
    mixed = list("Ünïcödé wörds, 日本語の文章 & emoji 🎉🎉🎉🎉🎉\r\n".encode()) * 5
    rows = [list(text[s : s + T]) for s in starts] + [mixed]
    rows = [r[:T] + [0x20] * (T - len(r[:T])) for r in rows]
    ids = torch.tensor(rows, dtype=torch.long)
    for limit in (4, 16):
        full = word_boundaries(ids, max_chunk_bytes=limit)
        stepped, _, _ = _step_all(ids, limit)
        assert torch.equal(full, stepped)
        for row in rows:
            assert word_boundaries(torch.tensor([row]), max_chunk_bytes=limit)[0].tolist() == reference(row, limit)
    # whole text: the vectorized form agrees with the plain rules, and words are a few bytes long
    ids = torch.tensor([list(text)], dtype=torch.long)
    full = word_boundaries(ids)[0]
    assert full.tolist() == reference(list(text))
    assert 3.0 < len(text) / int(full.sum()) < 8.0


def test_step_continues_after_prefix():
    """A prefix through word_boundaries, then decoding steps from word_boundary_state == the whole at once."""
    ids = _random_bytes(4, 120)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    mask[2, :10] = 0  # a row whose prefix is all padding
    for split in (10, 50, 119):
        for limit in (2, 16):
            pre = word_boundaries(ids[:, :split], mask[:, :split], max_chunk_bytes=limit)
            prev, length = word_boundary_state(ids[:, :split], pre, mask[:, :split])
            steps = []
            for t in range(split, ids.shape[1]):
                b, new_length = word_boundary_step(ids[:, t], prev, length, max_chunk_bytes=limit)
                steps.append(b)
                prev, length = ids[:, t], new_length
            full = word_boundaries(ids, mask, max_chunk_bytes=limit)
            assert torch.equal(torch.cat([pre, torch.stack(steps, 1)], 1), full), (split, limit)
