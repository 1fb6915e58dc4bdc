"""Text for demos, examples and tests that every machine has: the stdlib's pydoc topics (~465 KB of English)."""

from __future__ import annotations

import torch


def default_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def byte_tokens(text: str) -> torch.Tensor:
    """UTF-8 bytes as token ids (vocabulary 256)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode_bytes(ids) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator | None = None):
    """A batch of random contiguous windows ``[batch_size, seq_len]``."""
    if tokens.numel() <= seq_len:
        raise ValueError(f"the text has {tokens.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])
