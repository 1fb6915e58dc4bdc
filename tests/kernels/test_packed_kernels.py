"""Packed sequences (``cu_seqlens``): every op against running each sequence on its own, and against the fp64 loop
references, values and gradients; odd lengths, length-1 and empty sequences; argument validation."""

import pytest
import torch
from reference import block2_scan_loop, gla_loop, linear_scan_loop, recurrence_loop, swa_loop

from hf_seqmodels.kernels import (
    block2_scan,
    chunk_gla,
    fused_recurrent_gla,
    linear_scan,
    newton_solve,
    sequential_solve,
    sliding_window_attention,
)
from hf_seqmodels.kernels.gla.chunk_torch import chunk_gla_torch
from hf_seqmodels.layers.conv import ShortConvolution

LENGTHS = [5, 1, 70, 0, 3]  # odd lengths, a length-1 and an empty sequence; 70 crosses a 64-token chunk


def _cu(lengths, dtype=torch.int32):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=dtype)


def _segments(lengths):
    out, s = [], 0
    for n in lengths:
        out.append((s, s + n))
        s += n
    return out


def _grads(outputs, weights, inputs):
    loss = sum((o * w).sum() for o, w in zip(outputs, weights) if o is not None)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _gla_inputs(T, H, K, V, N, dtype):
    q, k = torch.randn(1, T, H, K, dtype=dtype), torch.randn(1, T, H, K, dtype=dtype)
    v = torch.randn(1, T, H, V, dtype=dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, H, K, dtype=dtype)) / 4
    h0 = torch.randn(N, H, K, V, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v, g, h0)]


@pytest.mark.parametrize(
    "op, lengths", [(chunk_gla, LENGTHS), (fused_recurrent_gla, LENGTHS), (chunk_gla, [64, 129, 1])]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gla_packed_equals_each_sequence_and_loop(op, lengths, dtype):
    H, K, V = 2, 8, 4
    T, N = sum(lengths), len(lengths)
    ins = _gla_inputs(T, H, K, V, N, dtype)
    q, k, v, g, h0 = ins
    o, hN = op(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=_cu(lengths))
    assert o.shape == (1, T, H, V) and hN.shape == (N, H, K, V)
    wo, wh = torch.randn_like(o), torch.randn_like(hN)
    got = _grads([o, hN], [wo, wh], ins)

    # reference 1: the fp64 loop per sequence; reference 2: the op itself, called per sequence
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for ref_fn in ("loop", "op"):
        outs, finals = [], []
        for i, (s, e) in enumerate(_segments(lengths)):
            if e == s:
                outs.append(o[:, s:e].new_zeros(1, 0, H, V).to(torch.float64 if ref_fn == "loop" else dtype))
                finals.append(h0[i].to(outs[-1].dtype))
                continue
            args = [x[:, s:e] for x in (q, k, v, g)]
            if ref_fn == "loop":
                oi, hi = gla_loop(*args, initial_state=h0[i : i + 1])
            else:
                oi, hi = op(*args, initial_state=h0[i : i + 1], output_final_state=True)
            outs.append(oi)
            finals.append(hi[0])
        ro, rh = torch.cat(outs, 1), torch.stack(finals)
        ref = _grads([ro, rh], [wo.to(ro.dtype), wh.to(rh.dtype)], ins)
        torch.testing.assert_close(o.double(), ro.double(), atol=tol, rtol=tol)
        torch.testing.assert_close(hN.double(), rh.double(), atol=tol, rtol=tol)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a.double(), b.double(), atol=tol * 10, rtol=tol * 10)


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla])
def test_gla_packed_triton_interpreter(op):
    lengths, H, K, V = [3, 1, 9], 1, 16, 16
    T, N = sum(lengths), len(lengths)
    ins = _gla_inputs(T, H, K, V, N, torch.float32)
    q, k, v, g, h0 = ins
    o, hN = op(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=_cu(lengths), backend="triton")
    ro, rh = op(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=_cu(lengths), backend="torch")
    torch.testing.assert_close(o, ro, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hN, rh, atol=1e-4, rtol=1e-4)
    if op is chunk_gla:
        w = torch.randn_like(o)
        for a, b in zip(_grads([o], [w], ins), _grads([ro], [w], ins)):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("structure", ["diagonal", "block2"])
def test_scans_packed_equal_loop_per_sequence(structure, reverse):
    lengths, D = [4, 1, 0, 9, 2], 3
    T, N = sum(lengths), len(lengths)
    tail = () if structure == "diagonal" else (2,)
    a = torch.randn(1, T, D, *tail, *tail, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, T, D, *tail, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, D, *tail, dtype=torch.float64, requires_grad=True)
    fn, loop = (linear_scan, linear_scan_loop) if structure == "diagonal" else (block2_scan, block2_scan_loop)
    h = fn(a, b, initial_state=h0, reverse=reverse, cu_seqlens=_cu(lengths, torch.int64))
    ref = torch.cat(
        [loop(a[:, s:e], b[:, s:e], h0[i : i + 1], reverse) for i, (s, e) in enumerate(_segments(lengths)) if e > s], 1
    )
    torch.testing.assert_close(h, ref)
    w = torch.randn_like(h)
    for x, y in zip(_grads([h], [w], (a, b, h0)), _grads([ref], [w], (a, b, h0))):
        torch.testing.assert_close(x, y)


def _gru(h, u, a):
    z = torch.sigmoid(a[0] * h + u[..., 0, :])
    c = torch.tanh(a[1] * h + u[..., 1, :])
    return (1 - z) * h + z * c


def _lstm_like(s, u, a):  # 2x2 blocks: state [c, h]
    c_prev, h = s[..., 0], s[..., 1]
    f = torch.sigmoid(a[0] * h + u[..., 0, :])
    c = f * c_prev + (1 - f) * torch.tanh(a[1] * h + u[..., 1, :])
    return torch.stack([c, torch.tanh(c)], -1)


@pytest.mark.parametrize("structure", ["diagonal", "block2"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_newton_packed_equals_loop_per_sequence(structure, with_h0):
    lengths, D = [6, 1, 0, 11], 3
    T, N = sum(lengths), len(lengths)
    step = _gru if structure == "diagonal" else _lstm_like
    tail = () if structure == "diagonal" else (2,)
    u = torch.randn(1, T, 2, D, dtype=torch.float64, requires_grad=True)
    a = (0.5 * torch.randn(2, D, dtype=torch.float64)).requires_grad_()
    h0 = torch.randn(N, D, *tail, dtype=torch.float64, requires_grad=True) if with_h0 else None
    cu = _cu(lengths)
    h = newton_solve(step, None, u, (a,), h0, state_size=D, structure=structure, max_iter=T, cu_seqlens=cu)
    hs = sequential_solve(step, u, (a,), h0, state_size=D, structure=structure, cu_seqlens=cu)
    refs = []
    for i, (s, e) in enumerate(_segments(lengths)):
        if e > s:
            start = h0[i : i + 1] if with_h0 else torch.zeros(1, D, *tail, dtype=torch.float64)
            refs.append(recurrence_loop(step, u[:, s:e], (a,), start))
    ref = torch.cat(refs, 1)
    torch.testing.assert_close(h, ref)
    torch.testing.assert_close(hs, ref)
    w = torch.randn_like(h)
    inputs = (u, a) + ((h0,) if with_h0 else ())
    for x, y in zip(_grads([h], [w], inputs), _grads([ref], [w], inputs)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("window", [1, 3, 8])
def test_swa_packed_equals_loop_per_sequence(window):
    lengths, H, Hkv, D = [5, 1, 0, 7], 2, 1, 4
    T = sum(lengths)
    q = torch.randn(1, T, H, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, T, Hkv, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, T, Hkv, D, dtype=torch.float64, requires_grad=True)
    sinks = torch.randn(H, dtype=torch.float64, requires_grad=True)
    o = sliding_window_attention(q, k, v, window, sinks=sinks, cu_seqlens=_cu(lengths))
    ref = torch.cat(
        [swa_loop(q[:, s:e], k[:, s:e], v[:, s:e], window, sinks=sinks) for s, e in _segments(lengths) if e > s], 1
    )
    torch.testing.assert_close(o, ref)
    w = torch.randn_like(o)
    for x, y in zip(_grads([o], [w], (q, k, v, sinks)), _grads([ref], [w], (q, k, v, sinks))):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("kernel_size", [1, 4])
def test_short_conv_packed_equals_each_sequence(kernel_size):
    lengths, D = [2, 1, 0, 6], 5
    conv = ShortConvolution(D, kernel_size).double()
    x = torch.randn(1, sum(lengths), D, dtype=torch.float64, requires_grad=True)
    y, tail = conv(x, cu_seqlens=_cu(lengths))
    assert tail is None
    ref = torch.cat([conv(x[:, s:e])[0] for s, e in _segments(lengths) if e > s], 1)
    torch.testing.assert_close(y, ref)
    w = torch.randn_like(y)
    params = (x, conv.conv.weight)
    for a, b in zip(_grads([y], [w], params), _grads([ref], [w], params)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "cu, error, pattern",
    [
        (torch.tensor([[0, 3]]), ValueError, "cu_seqlens.*1-D"),
        (torch.tensor([0.0, 3.0]), ValueError, "cu_seqlens.*int32 or int64"),
        ([0, 3], TypeError, "cu_seqlens.*torch.Tensor"),
        (torch.tensor([1, 3]), ValueError, "cu_seqlens.*start at 0"),
        (torch.tensor([0, 2, 1, 3]), ValueError, "cu_seqlens.*non-decreasing"),
        (torch.tensor([0, 2]), ValueError, "cu_seqlens.*end at the sequence length T=3"),
        (torch.tensor([0]), ValueError, "cu_seqlens.*at least two"),
    ],
)
def test_bad_cu_seqlens_is_a_named_error(cu, error, pattern):
    q = torch.randn(1, 3, 1, 4)
    g = torch.full_like(q, -0.1)
    with pytest.raises(error, match=pattern):
        chunk_gla(q, q, q, g, cu_seqlens=cu)
    with pytest.raises(error, match=pattern):
        linear_scan(q[..., 0, :], q[..., 0, :], cu_seqlens=cu)
    with pytest.raises(error, match=pattern):
        sliding_window_attention(q, q, q, 2, cu_seqlens=cu)
    with pytest.raises(error, match=pattern):
        newton_solve(_gru, None, torch.randn(1, 3, 2, 4), (torch.zeros(2, 4),), state_size=4, cu_seqlens=cu)
    with pytest.raises(error, match=pattern):
        ShortConvolution(4)(q[:, :, 0], cu_seqlens=cu)


def test_packed_needs_batch_one_and_per_sequence_state():
    q = torch.randn(2, 3, 1, 4)
    g = torch.full_like(q, -0.1)
    with pytest.raises(ValueError, match="cu_seqlens.*batch size 1"):
        chunk_gla(q, q, q, g, cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"initial_state.*\[N \(one per packed sequence\)"):
        chunk_gla(q[:1], q[:1], q[:1], g[:1], initial_state=torch.zeros(1, 1, 4, 4), cu_seqlens=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="h0.*one state per packed sequence"):
        newton_solve(
            _gru,
            None,
            torch.randn(1, 3, 2, 2),
            (torch.zeros(2, 2),),
            torch.zeros(1, 2),
            cu_seqlens=torch.tensor([0, 1, 3]),
        )


@pytest.mark.parametrize("T, with_state", [(200, True), (131, False)])
def test_streamed_prefill_equals_full_forward(T, with_state):
    B, H, K, V = 2, 2, 8, 4
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K)) / 8
    h0 = torch.randn(B, H, K, V) if with_state else None
    full, full_state = chunk_gla_torch(q, k, v, g, K**-0.5, h0, True, stream_elements=1 << 40)
    with torch.no_grad():  # blocks of 64 tokens: several blocks, the last one partial
        streamed, state = chunk_gla_torch(q, k, v, g, K**-0.5, h0, True, stream_elements=B * H * 64 * K)
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, full_state, atol=1e-5, rtol=1e-5)


def test_packed_prefill_without_gradients_streams_each_sequence(monkeypatch):
    from hf_seqmodels.kernels.gla import chunk_torch

    lengths, H, K, V = [70, 0, 1, 150], 2, 8, 4
    T, N = sum(lengths), len(lengths)
    q, k, v, g, h0 = (t.detach() for t in _gla_inputs(T, H, K, V, N, torch.float32))
    cu = _cu(lengths)
    full, full_state = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    monkeypatch.setattr(chunk_torch, "STREAM_ELEMENTS", H * 64 * K)  # 64-token blocks
    with torch.no_grad():
        streamed, state = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, full_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("structure", ["diagonal", "block2"])
def test_scans_packed_triton_interpreter_equal_torch(structure, reverse):
    lengths, D = [3, 1, 0, 6], 4
    T, N = sum(lengths), len(lengths)
    tail = () if structure == "diagonal" else (2,)
    a = torch.randn(1, T, D, *tail, *tail, requires_grad=True)
    b = torch.randn(1, T, D, *tail, requires_grad=True)
    h0 = torch.randn(N, D, *tail, requires_grad=True)
    fn = linear_scan if structure == "diagonal" else block2_scan
    cu = _cu(lengths)
    h = fn(a, b, initial_state=h0, reverse=reverse, cu_seqlens=cu, backend="triton")
    ref = fn(a, b, initial_state=h0, reverse=reverse, cu_seqlens=cu, backend="torch")
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(h)
    for x, y in zip(_grads([h], [w], (a, b, h0)), _grads([ref], [w], (a, b, h0))):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
