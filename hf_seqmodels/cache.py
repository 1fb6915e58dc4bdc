"""One recurrent cache for every architecture: per-layer named tensors of any kind.

A layer keeps whatever its decoding needs under names of its choosing: a recurrent state ``[B, H, K, V]``,
short-convolution tails, a sliding-window KV ring buffer, per-stage state. The model advances the token count
once per forward. Recurrent state cannot be rolled back, so cropping (assisted decoding) is refused.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


class RecurrentCache(Cache):
    is_compileable = False

    def __init__(self, num_layers: int):
        # Cache.__init__'s signature differs across transformers versions; we keep our own per-layer storage.
        self.layers = []
        self.offloading = False
        self.states: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        self.seen_tokens = 0

    def __repr__(self):
        names = sorted({n for layer in self.states for n in layer})
        return f"RecurrentCache(layers={len(self.states)}, seen_tokens={self.seen_tokens}, entries={names})"

    def __len__(self):
        return len(self.states)

    # -- what the layers use ------------------------------------------------------------------------------------
    def get(self, layer_idx: int, name: str) -> torch.Tensor | None:
        return self.states[layer_idx].get(name)

    def set(self, layer_idx: int, name: str, value: torch.Tensor) -> None:
        self.states[layer_idx][name] = value

    def advance(self, num_tokens: int) -> None:
        self.seen_tokens += num_tokens

    def nbytes(self, layer_idx: int | None = None) -> int:
        """Bytes held by one layer's state (or by every layer's): decode memory, e.g. per token of context."""
        layers = self.states if layer_idx is None else [self.states[layer_idx]]
        return sum(t.numel() * t.element_size() for layer in layers for t in layer.values())

    # -- what generate() uses -----------------------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_mask_sizes(self, query_length, layer_idx: int = 0):
        ql = query_length if isinstance(query_length, int) else int(query_length.shape[-1])
        return self.seen_tokens + ql, 0

    @property
    def is_initialized(self) -> bool:
        return self.seen_tokens > 0

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.states)

    @property
    def is_linear(self) -> list[bool]:
        # False: this cache counts its tokens, so generate() may slice inputs by get_seq_length().
        return [False] * len(self.states)

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.states)

    @property
    def is_croppable(self) -> bool:
        return False

    def _map(self, fn) -> None:
        for layer in self.states:
            for name, value in layer.items():
                layer[name] = fn(value)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def reset(self) -> None:
        self.states = [{} for _ in self.states]
        self.seen_tokens = 0

    def crop(self, max_length: int) -> None:
        raise ValueError(
            "RecurrentCache cannot be cropped: a recurrent state cannot be rolled back to an earlier token"
        )
