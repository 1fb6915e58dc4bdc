"""The fixed word-boundary router of HAT (Aleph Alpha's hierarchical byte/word model): chunk boundaries of a byte
sequence from a rule instead of a learned router, for an H-Net stage whose chunks are words.

Two forms that agree token by token:

- :func:`word_boundaries` marks every chunk start of a batch ``[B, T]`` at once (training, prefill);
- :func:`word_boundary_step` decides one byte per row from a small state (decoding). The state a model keeps in
  its cache is two ``[B]`` long tensors: ``prev_byte``, the row's previous real byte (``-1`` before the first one),
  and ``chunk_len``, the number of bytes in the row's current chunk (``0`` before the first one). Start a row at
  ``(-1, 0)``; each step returns the new ``chunk_len`` and the next ``prev_byte`` is the byte just fed.
  :func:`word_boundary_state` gives that state after a prefix that went through :func:`word_boundaries`.

Pure torch; ids are bytes (0..255) as from :class:`~hf_seqmodels.models.hnet.tokenization_byte.ByteTokenizer`.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .checks import check_int

__all__ = ["DEFAULT_SPECIAL_IDS", "word_boundaries", "word_boundary_state", "word_boundary_step"]

#: ByteTokenizer's PAD, BOS, EOS: the bytes that never occur in valid UTF-8
DEFAULT_SPECIAL_IDS = (253, 254, 255)

# byte classes
_WORD, _SPACE, _OTHER_WS, _PUNCT, _SPECIAL = 0, 1, 2, 3, 4
_OUT_OF_RANGE = 256  # table slot for ids outside 0..255 (they count as special tokens)


@lru_cache(maxsize=32)
def _class_table(special_ids: tuple, device: torch.device) -> torch.Tensor:
    table = [_PUNCT] * 257
    for b in range(256):
        c = chr(b)
        if b >= 0x80 or c.isascii() and (c.isalnum() or c == "_"):
            table[b] = _WORD
        elif b == 0x20:
            table[b] = _SPACE
        elif c in "\t\n\r\v\f":
            table[b] = _OTHER_WS
    for s in special_ids:
        if 0 <= s < 256:
            table[s] = _SPECIAL
    table[_OUT_OF_RANGE] = _SPECIAL
    return torch.tensor(table, dtype=torch.int8, device=device)


def _check(max_chunk_bytes, special_ids) -> tuple:
    check_int("", "max_chunk_bytes", max_chunk_bytes)
    special_ids = tuple(int(s) for s in special_ids)
    if any(not 0 <= s < 256 for s in special_ids):
        raise ValueError(f"special_ids must be byte values in 0..255, got {special_ids}")
    return special_ids


def _classes(ids: torch.Tensor, special_ids: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(byte class, is-UTF-8-continuation-byte) of every id; ids outside 0..255 are special tokens."""
    table = _class_table(special_ids, ids.device)
    ids = ids.long()
    inside = (ids >= 0) & (ids < 256)
    cls = table[torch.where(inside, ids, _OUT_OF_RANGE).long()]
    continuation = (ids >= 0x80) & (ids <= 0xBF) & (cls != _SPECIAL)
    return cls, continuation


def _natural(cls: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Chunk starts of the class rules (everything but the first position and the length limit)."""
    prev_ws_or_special = (prev == _OTHER_WS) | (prev == _SPECIAL)
    return (
        (cls == _SPACE)
        | (cls == _OTHER_WS)
        | (cls == _SPECIAL)
        | prev_ws_or_special
        | ((cls == _WORD) & (prev != _WORD) & (prev != _SPACE))
    )


def word_boundaries(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_chunk_bytes: int = 16,
    special_ids=DEFAULT_SPECIAL_IDS,
) -> torch.Tensor:
    """Where a chunk starts: a ``[B, T]`` bool tensor for byte ids ``input_ids`` ``[B, T]``.

    Byte classes:

    - word bytes: ASCII letters, digits and ``_``, and every byte ``>= 0x80`` except the special ids (the bytes of
      UTF-8 multi-byte characters count as letters);
    - the space ``0x20``;
    - other whitespace: ``\\t \\n \\r \\v \\f``;
    - punctuation: every other ASCII byte (symbols and control bytes, NUL included);
    - special tokens: the ``special_ids`` (default PAD 253, BOS 254, EOS 255) and any id outside 0..255.

    A chunk starts:

    1. at the first real (unpadded) position of each row;
    2. at every space;
    3. at every other-whitespace byte and at the byte after it (other whitespace stands alone: ``"\\r\\n"`` is two
       chunks);
    4. at a word byte, unless the previous byte is a word byte or a space (a single space attaches to the word
       after it: ``" word"`` is one chunk, ``"  word"`` is ``" "`` and ``" word"``; a word byte after punctuation
       starts a new chunk: ``"a.b"`` is ``"a."`` and ``"b"``);
    5. never at punctuation, except after other whitespace or a special (rules 3 and 6): punctuation attaches to
       what precedes it (``"word,"`` and ``"end.)"`` are one chunk, ``" ("`` stays with its space);
    6. at a special token and at the byte after it (special tokens stand alone);
    7. where a chunk would grow past ``max_chunk_bytes``: at the byte that would make it exceed the limit, except
       that this cut never lands on a UTF-8 continuation byte (``0x80..0xBF``) but moves to the next byte that is
       not one (so a character is never split; a chunk can then hold up to ``max_chunk_bytes + 3`` bytes of valid
       UTF-8). The count restarts at every chunk start.

    ``attention_mask`` (``[B, T]``, 1 = real) marks padding: padded positions are never boundaries, and a row's
    first real position always is (left padding works). The real positions of a row must be contiguous (left or
    right padding). Vectorized: the length cuts take ``O(log(T / max_chunk_bytes))`` passes over the batch.
    """
    special_ids = _check(max_chunk_bytes, special_ids)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer byte ids, got dtype {input_ids.dtype}")
    B, T = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=device)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(device=device, dtype=torch.bool)
    if T == 0:
        return mask.clone()

    cls, continuation = _classes(input_ids, special_ids)
    prev = torch.nn.functional.pad(cls[:, :-1], (1, 0), value=_PUNCT)
    prev_mask = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=False)
    roots = (_natural(cls, prev) | ~prev_mask) & mask  # rules 1-6

    # Rule 7 within each run between rule-1..6 starts (padding ends a run too). From a chunk start c the next cut is
    # the first non-continuation position >= c + max_chunk_bytes, if that is still inside the run: a chain
    # c -> jump[c] -> ... from each root. The positions on the chains are found by pointer doubling.
    pos = torch.arange(T, device=device).expand(B, T)
    sentinel = torch.full((B, 1), T, dtype=torch.long, device=device)
    stop = roots | ~mask
    # first stop strictly after t, and first non-continuation real position at or after t (T if none)
    next_stop = torch.where(stop, pos, T).flip(1).cummin(1).values.flip(1)
    next_stop = torch.cat([next_stop[:, 1:], sentinel], 1)
    next_cut_ok = torch.where(~continuation & mask, pos, T).flip(1).cummin(1).values.flip(1)
    target = pos + max_chunk_bytes
    jump = torch.cat([next_cut_ok, sentinel], 1).gather(1, target.clamp(max=T))
    jump = torch.where(jump < next_stop, jump, T)
    jump = torch.cat([jump, sentinel], 1)  # [B, T + 1]; the sentinel T maps to itself

    marked = torch.cat([roots, torch.zeros(B, 1, dtype=torch.bool, device=device)], 1)
    # invariant after k passes: marked = the first 2**k positions of every chain, jump = jump composed 2**k times
    for _ in range(T.bit_length() + 1):
        hits = torch.zeros_like(marked).scatter_(1, torch.where(marked, jump, T), True)
        hits[:, T] = False
        hits &= ~marked
        if not bool(hits.any()):
            break
        marked |= hits
        jump = jump.gather(1, jump)
    return marked[:, :T]


def word_boundary_step(
    byte: torch.Tensor,
    prev_byte: torch.Tensor,
    chunk_len: torch.Tensor,
    max_chunk_bytes: int = 16,
    special_ids=DEFAULT_SPECIAL_IDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of :func:`word_boundaries`: for the next byte of each row, whether a chunk starts there.

    ``byte``, ``prev_byte``, ``chunk_len``: ``[B]`` integer tensors; ``prev_byte`` is the row's previous byte
    (``-1`` at the start of a row), ``chunk_len`` the number of bytes in its current chunk (``0`` at the start).
    Returns ``(is_boundary [B] bool, new_chunk_len [B] long)``: ``new_chunk_len`` is 1 where a chunk starts, else
    ``chunk_len + 1``. The next step takes ``prev_byte = byte`` and ``chunk_len = new_chunk_len``. Feeding a row's
    real bytes one by one from ``(-1, 0)`` gives exactly the boundaries of :func:`word_boundaries` on that row.
    """
    special_ids = _check(max_chunk_bytes, special_ids)
    byte, prev_byte, chunk_len = (torch.as_tensor(x) for x in (byte, prev_byte, chunk_len))
    if not byte.shape == prev_byte.shape == chunk_len.shape:
        raise ValueError(
            "byte, prev_byte and chunk_len must have one shape, got "
            f"{tuple(byte.shape)}, {tuple(prev_byte.shape)}, {tuple(chunk_len.shape)}"
        )
    cls, continuation = _classes(byte, special_ids)
    start = prev_byte == -1
    prev_cls, _ = _classes(prev_byte, special_ids)
    cut = (chunk_len >= max_chunk_bytes) & ~continuation
    is_boundary = start | _natural(cls, prev_cls) | cut
    new_len = torch.where(is_boundary, torch.ones_like(chunk_len), chunk_len + 1).long()
    return is_boundary, new_len


def word_boundary_state(
    input_ids: torch.Tensor, boundaries: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoding state ``(prev_byte [B], chunk_len [B])`` after the prefix ``input_ids`` ``[B, T]`` whose chunk
    starts ``boundaries`` came from :func:`word_boundaries`: the last real byte of each row and the length of its
    last chunk; ``(-1, 0)`` for a row without real positions. Real positions must be contiguous, as there."""
    B, T = input_ids.shape
    device = input_ids.device
    if T == 0:
        return torch.full((B,), -1, dtype=torch.long, device=device), torch.zeros(B, dtype=torch.long, device=device)
    mask = torch.ones_like(boundaries, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)
    pos = torch.arange(T, device=device).expand(B, T)
    last_real = torch.where(mask, pos, -1).amax(1)
    last_start = torch.where(boundaries & mask, pos, -1).amax(1)
    has = last_real >= 0
    last_byte = input_ids.gather(1, last_real.clamp(min=0)[:, None]).squeeze(1).long()
    prev_byte = torch.where(has, last_byte, -1)
    chunk_len = torch.where(has, last_real - last_start + 1, 0)
    return prev_byte, chunk_len.long()
