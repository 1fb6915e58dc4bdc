import time

import pytest
import torch
from reference import swa_loop

from hf_seqmodels.kernels.attention import (
    ring_buffer_init,
    ring_buffer_ordered,
    ring_buffer_write,
    sliding_window_attention,
    sliding_window_decode,
)


def _inputs(B, T, H, Hkv, D, L=None, dtype=torch.float64, sinks=None):
    L = T if L is None else L
    q = torch.randn(B, T, H, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, L, Hkv, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, L, Hkv, D, dtype=dtype, requires_grad=True)
    s = None if sinks is None else torch.randn(H, *sinks, dtype=dtype, requires_grad=True)
    return q, k, v, s


@pytest.mark.parametrize(
    "B,T,L,H,Hkv,D,window,sinks,masked",
    [
        (2, 13, 13, 4, 2, 8, 4, None, False),  # odd length, GQA
        (1, 1, 1, 2, 2, 4, 3, None, False),  # T = 1
        (2, 9, 9, 3, 1, 8, 1, (), False),  # window 1 (the token alone), one sink per head
        (2, 7, 12, 4, 2, 8, 5, (3,), True),  # a prefix of 5 keys, three sinks, padding
        (1, 6, 6, 2, 1, 4, 20, None, False),  # window longer than the sequence: full causal
        (2, 16, 16, 2, 2, 8, 4, (2,), True),  # T a multiple of the window
    ],
)
def test_matches_loop_reference(B, T, L, H, Hkv, D, window, sinks, masked):
    q, k, v, s = _inputs(B, T, H, Hkv, D, L, sinks=sinks)
    key_mask = None
    if masked:  # left padding: row 0 has its first 3 keys padded
        key_mask = torch.ones(B, L, dtype=torch.bool)
        key_mask[0, :3] = False
    out = sliding_window_attention(q, k, v, window, sinks=s, key_mask=key_mask)
    ref = swa_loop(q, k, v, window, sinks=s, key_mask=key_mask)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    do = torch.randn_like(out)
    params = [q, k, v] + ([s] if s is not None else [])
    grads = torch.autograd.grad(out, params, do)
    ref_grads = torch.autograd.grad(ref, params, do)
    for name, g, r in zip("qkvs", grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_float32_and_gradcheck():
    q, k, v, s = _inputs(1, 10, 2, 1, 4, sinks=())
    torch.autograd.gradcheck(lambda q, k, v, s: sliding_window_attention(q, k, v, 3, sinks=s), (q, k, v, s))
    q32, k32, v32 = (x.detach().float() for x in (q, k, v))
    out = sliding_window_attention(q32, k32, v32, 3, sinks=s.detach().float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), swa_loop(q, k, v, 3, sinks=s).detach(), rtol=1e-5, atol=1e-5)


def test_extreme_logits_and_fully_masked_rows():
    q, k, v, _ = _inputs(2, 8, 2, 2, 4, dtype=torch.float32)
    q = (q.detach() * 300).requires_grad_()
    key_mask = torch.ones(2, 8, dtype=torch.bool)
    key_mask[1, :5] = False  # queries 0..4 of row 1 see no key at all
    out = sliding_window_attention(q, k, v, 3, key_mask=key_mask)
    assert torch.isfinite(out).all()
    assert out[1, :5].abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    torch.testing.assert_close(out.double(), swa_loop(q, k, v, 3, key_mask=key_mask).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "window,steps",
    [
        (1, [4, 1, 1, 3, 1, 1]),
        (3, [4, 1, 1, 3, 1, 1]),
        (5, [4, 1, 1, 3, 1, 1]),  # full after the first decoding step
        (7, [3, 1, 1, 1, 1, 1, 1, 2]),  # the window fills during one-token decoding and is crossed by a chunk of 2
        (8, [5, 3, 1, 1, 1]),  # a chunk ends exactly at the window
        (20, [4, 1, 1, 3, 1, 1]),  # never full
    ],
)
def test_decode_with_ring_buffer_equals_full(window, steps):
    B, T, H, Hkv, D = 2, 11, 4, 2, 8
    assert sum(steps) == T
    q, k, v, s = _inputs(B, T, H, Hkv, D, dtype=torch.float64, sinks=(2,))
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[1, :4] = False
    full = sliding_window_attention(q, k, v, window, sinks=s, key_mask=key_mask)
    kb, vb, mb = ring_buffer_init(B, Hkv, D, torch.float64, "cpu")
    assert kb.shape == (B, Hkv, 0, D) and mb.shape == (B, 0)
    seen, outs = 0, []
    for n in steps:
        sl = slice(seen, seen + n)
        kn, vn, mn = k[:, sl].transpose(1, 2), v[:, sl].transpose(1, 2), key_mask[:, sl]
        if n == 1 and seen > 0:
            kb, vb, mb = ring_buffer_write(kb, vb, mb, kn, vn, mn, seen, window)
            outs.append(sliding_window_decode(q[:, sl], kb, vb, mb, sinks=s))
        else:
            kp = torch.cat([ring_buffer_ordered(kb, seen).transpose(1, 2), k[:, sl]], 1)
            vp = torch.cat([ring_buffer_ordered(vb, seen).transpose(1, 2), v[:, sl]], 1)
            mp = torch.cat([ring_buffer_ordered(mb, seen, dim=1), mn], 1)
            outs.append(sliding_window_attention(q[:, sl], kp, vp, window, sinks=s, key_mask=mp))
            kb, vb, mb = ring_buffer_write(kb, vb, mb, kn, vn, mn, seen, window)
        seen += n
        # the buffer holds the last min(seen, window) tokens, token p in slot p % window
        kept = range(max(seen - window, 0), seen)
        assert kb.shape == vb.shape == (B, Hkv, len(kept), D) and mb.shape == (B, len(kept))
        for p in kept:
            slot = p % window
            assert torch.equal(kb[:, :, slot], k[:, p].detach()) and torch.equal(vb[:, :, slot], v[:, p].detach())
            assert torch.equal(mb[:, slot], key_mask[:, p])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


def test_ring_buffer_refuses_a_buffer_of_the_wrong_size():
    kb, vb, mb = ring_buffer_init(1, 1, 4, torch.float32, "cpu")
    new = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match=r"min\(seen, window\) = 3"):
        ring_buffer_write(kb, vb, mb, new, new, torch.ones(1, 2, dtype=torch.bool), 3, 5)


def test_bad_arguments():
    q, k, v, _ = _inputs(1, 4, 2, 1, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="multiple"):
        sliding_window_attention(q, torch.randn(1, 4, 3, 4), torch.randn(1, 4, 3, 4), 2)
    with pytest.raises(ValueError, match="sinks"):
        sliding_window_attention(q, k, v, 2, sinks=torch.zeros(3))
    with pytest.raises(ValueError, match="key_mask"):
        sliding_window_attention(q, k, v, 2, key_mask=torch.ones(1, 4))


def test_window_larger_than_the_sequence_is_capped():
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    start = time.perf_counter()
    huge = sliding_window_attention(q, k, v, window=10**9)
    assert time.perf_counter() - start < 5
    torch.testing.assert_close(huge, sliding_window_attention(q, k, v, window=8))
    # and it is the full causal attention
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    torch.testing.assert_close(huge, ref, rtol=1e-5, atol=1e-5)
