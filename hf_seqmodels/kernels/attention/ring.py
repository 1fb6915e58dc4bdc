"""A key/value ring buffer for sliding-window decoding (pure tensor ops) that grows with the tokens seen.

The buffer holds keys and values ``[B, Hkv, n, D]`` and a validity mask ``[B, n]`` (False for padding tokens) of
the last ``n = min(seen, W)`` tokens, for a window of ``W`` keys: it starts empty, grows by the tokens written
until it holds ``W``, then stays that size. The token with absolute index ``p`` lives in slot ``p % W`` (while the
buffer grows, ``p < W``: slot ``p``, in time order), so the write index is the number of tokens seen so far modulo
``W`` and needs no storage of its own. A window far longer than the input therefore costs memory for the input only.
"""

from __future__ import annotations

import torch


def ring_buffer_init(batch_size, num_kv_heads, head_dim, dtype, device):
    """Empty buffers (no token seen): k, v ``[B, Hkv, 0, D]``, mask ``[B, 0]``."""
    k = torch.zeros(batch_size, num_kv_heads, 0, head_dim, dtype=dtype, device=device)
    return k, torch.zeros_like(k), torch.zeros(batch_size, 0, dtype=torch.bool, device=device)


def ring_buffer_ordered(buf: torch.Tensor, seen: int, dim: int = 2) -> torch.Tensor:
    """The buffer in time order (oldest first), for ``seen`` tokens written so far."""
    n = buf.shape[dim]
    return torch.roll(buf, -(seen % n), dims=dim) if n else buf


def ring_buffer_write(k_buf, v_buf, mask_buf, k_new, v_new, mask_new, seen: int, window: int):
    """Append ``T`` tokens (k_new, v_new ``[B, Hkv, T, D]``, mask_new ``[B, T]``) after ``seen`` tokens to the
    buffer of a ``window``-key window. Returns the new (k_buf, v_buf, mask_buf), of ``min(seen + T, window)``
    slots; the inputs are not modified."""
    n, T = k_buf.shape[2], k_new.shape[2]
    if n != min(seen, window):
        raise ValueError(
            f"ring_buffer_write: the buffer must hold min(seen, window) = {min(seen, window)} slots "
            f"after {seen} tokens with window {window}, got {n}"
        )
    if T == 1 and n == window:  # a full buffer: overwrite the oldest token's slot
        idx = torch.tensor([seen % window], device=k_buf.device)
        return k_buf.index_copy(2, idx, k_new), v_buf.index_copy(2, idx, v_new), mask_buf.index_copy(1, idx, mask_new)
    k = torch.cat([ring_buffer_ordered(k_buf, seen), k_new.to(k_buf.dtype)], 2)[:, :, -window:]
    v = torch.cat([ring_buffer_ordered(v_buf, seen), v_new.to(v_buf.dtype)], 2)[:, :, -window:]
    m = torch.cat([ring_buffer_ordered(mask_buf, seen, dim=1), mask_new], 1)[:, -window:]
    if seen + T <= window:  # still growing: slot p holds token p
        return k, v, m
    shift = (seen + T) % window  # the oldest kept token (absolute index seen + T - window) goes to slot (seen + T) % W
    return torch.roll(k, shift, 2), torch.roll(v, shift, 2), torch.roll(m, shift, 1)
