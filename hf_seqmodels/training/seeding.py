"""One seed per (run seed, optimizer step), which every data-parallel rank computes alone: the training callbacks draw
their per-step randomness from it, so the ranks agree without communicating."""

from __future__ import annotations

import hashlib


def step_seed(seed: int, step: int) -> int:
    """A 64-bit seed for optimizer step ``step`` of a run seeded with ``seed``: the first 8 bytes (little-endian) of
    the BLAKE2b digest of ``"{seed},{step}"``. Hashed rather than packed (``seed * 2**32 + step``) because torch's CPU
    generator keeps only the low 32 bits of a seed: every bit of the result depends on both numbers."""
    digest = hashlib.blake2b(f"{int(seed)},{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
