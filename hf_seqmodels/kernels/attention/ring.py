"""A fixed-size key/value ring buffer for sliding-window decoding (pure tensor ops).

The buffer holds the last ``W`` keys and values ``[B, Hkv, W, D]`` and a validity mask ``[B, W]`` (False for
slots never written and for padding tokens). The token with absolute index ``p`` lives in slot ``p % W``, so the
write index is the number of tokens seen so far modulo ``W`` and needs no storage of its own.
"""
from __future__ import annotations

import torch


def ring_buffer_init(batch_size, num_kv_heads, size, head_dim, dtype, device):
    k = torch.zeros(batch_size, num_kv_heads, size, head_dim, dtype=dtype, device=device)
    return k, torch.zeros_like(k), torch.zeros(batch_size, size, dtype=torch.bool, device=device)


def ring_buffer_ordered(buf: torch.Tensor, seen: int, dim: int = 2) -> torch.Tensor:
    """The buffer in time order (oldest first), for ``seen`` tokens written so far."""
    return torch.roll(buf, -(seen % buf.shape[dim]), dims=dim)


def ring_buffer_write(k_buf, v_buf, mask_buf, k_new, v_new, mask_new, seen: int):
    """Append ``T`` tokens (k_new, v_new ``[B, Hkv, T, D]``, mask_new ``[B, T]``) after ``seen`` tokens.
    Returns the new (k_buf, v_buf, mask_buf); the inputs are not modified."""
    W, T = k_buf.shape[2], k_new.shape[2]
    if T == 1:
        idx = torch.tensor([seen % W], device=k_buf.device)
        return k_buf.index_copy(2, idx, k_new), v_buf.index_copy(2, idx, v_new), mask_buf.index_copy(1, idx, mask_new)
    k = torch.cat([ring_buffer_ordered(k_buf, seen), k_new.to(k_buf.dtype)], 2)[:, :, -W:]
    v = torch.cat([ring_buffer_ordered(v_buf, seen), v_new.to(v_buf.dtype)], 2)[:, :, -W:]
    m = torch.cat([ring_buffer_ordered(mask_buf, seen, dim=1), mask_new], 1)[:, -W:]
    shift = (seen + T) % W  # the oldest kept token (absolute index seen + T - W) goes to slot (seen + T) % W
    return torch.roll(k, shift, 2), torch.roll(v, shift, 2), torch.roll(m, shift, 1)
