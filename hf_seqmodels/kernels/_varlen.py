"""Packed ("varlen") sequences, the convention of fla and flash-attn: ``N`` sequences laid end to end in one row of
batch 1, ``cu_seqlens = [0, l1, l1 + l2, ..., T]`` (int32 or int64, 1-D). Every op that takes ``cu_seqlens``
restarts its state at each sequence start and never mixes tokens of different sequences; ``initial_state`` and the
final state are then per sequence (``[N, ...]`` instead of ``[B, ...]``).

:func:`check_cu_seqlens` validates the argument and returns a :class:`Packed`, which holds the offsets (as Python ints:
one host sync per call) and the index tensors the ops need, built once.
"""

from __future__ import annotations

import torch


def check_cu_seqlens(op: str, cu_seqlens, batch_size: int, seq_len: int, name: str = "cu_seqlens") -> "Packed | None":
    """None when ``cu_seqlens`` is None, else a :class:`Packed`. Raises TypeError naming ``name`` when it is not a
    tensor, ValueError when it is not a 1-D int32/int64 tensor of non-decreasing offsets from 0 to ``seq_len`` or the
    batch is not 1."""
    if cu_seqlens is None:
        return None
    if isinstance(cu_seqlens, Packed):
        offsets = cu_seqlens.offsets
    else:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(
                f"{op}: `{name}` must be a 1-D int32/int64 torch.Tensor of offsets, got {type(cu_seqlens).__name__}"
            )
        if cu_seqlens.dim() != 1:
            raise ValueError(
                f"{op}: `{name}` must be 1-D [N + 1] (offsets of N packed sequences), got shape "
                f"{tuple(cu_seqlens.shape)}"
            )
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{op}: `{name}` must be int32 or int64, got {cu_seqlens.dtype}")
        offsets = [int(o) for o in cu_seqlens.tolist()]
    if len(offsets) < 2:
        raise ValueError(f"{op}: `{name}` must hold at least two offsets [0, T] (one sequence), got {offsets}")
    if offsets[0] != 0:
        raise ValueError(f"{op}: `{name}` must start at 0, got {offsets[0]}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"{op}: `{name}` must be non-decreasing (offsets of consecutive sequences), got {offsets}")
    if offsets[-1] != seq_len:
        raise ValueError(f"{op}: `{name}` must end at the sequence length T={seq_len}, got {offsets[-1]}")
    if batch_size != 1:
        raise ValueError(
            f"{op}: packed sequences (`{name}`) need batch size 1 (all sequences in one row), got batch {batch_size}"
        )
    return cu_seqlens if isinstance(cu_seqlens, Packed) else Packed(offsets)


class Packed:
    """Offsets of ``N`` packed sequences and index helpers (device tensors are built lazily, per device)."""

    def __init__(self, offsets):
        self.offsets = [int(o) for o in offsets]
        self.N = len(self.offsets) - 1
        self.T = self.offsets[-1]
        self.lengths = [b - a for a, b in zip(self.offsets, self.offsets[1:])]
        self.max_len = max(self.lengths)
        self.nonempty = [i for i, n in enumerate(self.lengths) if n > 0]
        self._cache = {}

    def _get(self, key, device, build):
        k = (key, str(device))
        if k not in self._cache:
            self._cache[k] = build()
        return self._cache[k]

    def starts(self, device):
        """First token index of each non-empty sequence, LongTensor [N']."""
        return self._get(
            "starts",
            device,
            lambda: torch.tensor([self.offsets[i] for i in self.nonempty], dtype=torch.long, device=device),
        )

    def ends(self, device):
        """Last token index of each non-empty sequence, LongTensor [N']."""
        return self._get(
            "ends",
            device,
            lambda: torch.tensor([self.offsets[i + 1] - 1 for i in self.nonempty], dtype=torch.long, device=device),
        )

    def nonempty_index(self, device):
        return self._get("nonempty", device, lambda: torch.tensor(self.nonempty, dtype=torch.long, device=device))

    def seq_ids(self, device):
        """Sequence index of every token, LongTensor [T]."""
        return self._get(
            "seq_ids",
            device,
            lambda: torch.repeat_interleave(
                torch.arange(self.N, device=device), torch.tensor(self.lengths, device=device)
            ),
        )

    def positions(self, device):
        """Position of every token inside its sequence (0 at each start), LongTensor [T]."""

        def build():
            starts = torch.tensor(self.offsets[:-1], dtype=torch.long, device=device)
            return torch.arange(self.T, device=device) - starts[self.seq_ids(device)]

        return self._get("positions", device, build)

    def _padded_index(self, device, length):
        def build():
            col = torch.arange(length, device=device)
            starts = torch.tensor(self.offsets[:-1], dtype=torch.long, device=device)
            lens = torch.tensor(self.lengths, dtype=torch.long, device=device)
            valid = col[None, :] < lens[:, None]  # [N, L]
            idx = (starts[:, None] + col[None, :]).clamp(max=max(self.T - 1, 0))
            return idx, valid

        return self._get(("padded", length), device, build)

    def to_padded(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """[1, T, ...] -> [N, L, ...] (each sequence in its own row, zero-padded at the end; L = the longest)."""
        length = self.max_len if length is None else length
        idx, valid = self._padded_index(x.device, length)
        y = x[0][idx]  # [N, L, ...]
        keep = valid.reshape(*valid.shape, *([1] * (x.dim() - 2)))
        return y * keep.to(y.dtype) if y.is_floating_point() else y.masked_fill(~keep, 0)

    def from_padded(self, y: torch.Tensor) -> torch.Tensor:
        """[N, L, ...] -> [1, T, ...] (drops the padding)."""
        rows = self.seq_ids(y.device)
        cols = self.positions(y.device)
        return y[rows, cols].unsqueeze(0)

    def per_sequence(self, state, empty_value=None):
        """Scatter a state of the non-empty sequences [N', ...] to all sequences [N, ...] (empty ones get
        ``empty_value[i]`` (their initial state) or zeros)."""
        if len(self.nonempty) == self.N:
            return state
        out = state.new_zeros(self.N, *state.shape[1:]) if empty_value is None else empty_value.to(state.dtype).clone()
        return out.index_copy(0, self.nonempty_index(state.device), state)
