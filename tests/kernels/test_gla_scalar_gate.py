"""The scalar-gate (one decay per head, ``g`` [B, T, H]) path of the GLA ops against an fp64 loop written from
its recurrence ``S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t``: values and all gradients, packed
sequences, initial/final states, extreme decays, and equality with the per-key path given the gate over K."""

import pytest
import torch
import torch.nn.functional as F

from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla
from hf_seqmodels.kernels.gla import chunk_torch

OPS = {"chunk": chunk_gla, "recurrent": fused_recurrent_gla}


def scalar_gla_loop(q, k, v, g, scale, initial_state=None):
    """Token by token in fp64: per head, S_t = exp(g_t) * S_{t-1} + outer(k_t, v_t), o_t = scale * q_t @ S_t."""
    q, k, v, g = (x.double() for x in (q, k, v, g))
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64) if initial_state is None else initial_state.double()
    outs = []
    for t in range(T):
        S = torch.exp(g[:, t])[:, :, None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return (torch.stack(outs, 1) if T else v.reshape(B, 0, H, v.shape[-1])), S


def _inputs(B, T, H, K, V, dtype=torch.float64, gate="normal"):
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    if gate == "normal":
        g = F.logsigmoid(torch.randn(B, T, H) * 2) / 2
    else:  # "fast": 5-20 nats a step, the state forgets almost everything each step
        g = -5 - 15 * torch.rand(B, T, H)
    h0 = torch.randn(B, H, K, V)
    return [x.to(dtype) for x in (q, k, v, g, h0)]


def _grads(fn, tensors, do, dh):
    xs = [t.detach().clone().requires_grad_() for t in tensors]
    o, h = fn(*xs)
    loss = (o.double() * do).sum() + (h.double() * dh).sum()
    return o, h, torch.autograd.grad(loss, xs)


def _check_against_loop(fn, inputs, scale, tol, gtol=None):
    q, k, v, g, h0 = inputs
    do = torch.randn(*v.shape, dtype=torch.float64)
    dh = torch.randn(*h0.shape, dtype=torch.float64)
    o, h, grads = _grads(fn, inputs, do, dh)
    ro, rh, rgrads = _grads(lambda *x: scalar_gla_loop(*x[:4], scale, x[4]), inputs, do, dh)
    assert o.dtype == q.dtype and o.shape == v.shape and h.shape == h0.shape
    assert h.dtype == (torch.float64 if q.dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(o.double(), ro, rtol=tol, atol=tol)
    torch.testing.assert_close(h.double(), rh, rtol=tol, atol=tol)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        assert a.shape == b.shape, name
        torch.testing.assert_close(
            a.double(),
            b.double(),
            rtol=gtol or tol,
            atol=gtol or tol,
            msg=lambda m, name=name: f"gradient of {name}: {m}",
        )


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("gate", ["normal", "fast"])
@pytest.mark.parametrize(
    "B,T,H,K,V", [(2, 1, 2, 8, 8), (1, 37, 1, 16, 8), (2, 130, 2, 8, 12), (1, 64, 3, 4, 4), (1, 201, 2, 6, 5)]
)
def test_matches_loop_fp64_values_and_gradients(op, gate, B, T, H, K, V):
    scale = 0.7
    _check_against_loop(
        lambda *x: OPS[op](*x[:4], scale=scale, initial_state=x[4], output_final_state=True),
        _inputs(B, T, H, K, V, gate=gate),
        scale,
        1e-10,
        1e-9,
    )


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("gate", ["normal", "fast"])
def test_lower_precision_matches_loop(dtype, tol, gate):
    """fp32 arithmetic inside (the state is fp32); bf16/fp16 inputs and outputs, so their rounding sets the bound."""
    B, T, H, K, V = 2, 150, 2, 16, 8
    inputs = _inputs(B, T, H, K, V, dtype, gate)
    inputs[4] = inputs[4].float()  # the state is fp32 whatever the input dtype
    _check_against_loop(
        lambda *x: chunk_gla(*x[:4], initial_state=x[4], output_final_state=True), inputs, K**-0.5, tol, 5 * tol
    )


def test_equals_per_key_path_with_the_gate_broadcast_over_k():
    B, T, H, K, V = 2, 99, 3, 8, 5
    q, k, v, g, h0 = _inputs(B, T, H, K, V)
    do, dh = torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)

    def run(*x):
        return chunk_gla(*x[:4], initial_state=x[4], output_final_state=True)

    o, h, grads = _grads(run, (q, k, v, g, h0), do, dh)
    gk = g.unsqueeze(-1).expand(B, T, H, K)
    ro, rh, rgrads = _grads(run, (q, k, v, gk, h0), do, dh)
    torch.testing.assert_close(o, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, rh, rtol=1e-10, atol=1e-10)
    rgrads = list(rgrads)
    rgrads[3] = rgrads[3].sum(-1)  # a gate shared over K gets the sum of the per-key gradients
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_gradcheck_small():
    xs = [t.requires_grad_() for t in _inputs(1, 21, 2, 3, 2)]
    assert torch.autograd.gradcheck(lambda *x: chunk_gla(*x[:4], initial_state=x[4], output_final_state=True), xs)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("lengths", [[5, 0, 70, 1, 64], [129]])
def test_packed_sequences_match_the_loop_per_sequence(op, lengths):
    H, K, V, scale = 2, 8, 4, 0.6
    T = sum(lengths)
    q, k, v, g, _ = _inputs(1, T, H, K, V)
    h0 = torch.randn(len(lengths), H, K, V, dtype=torch.float64)
    cu = torch.tensor([0] + lengths).cumsum(0)
    do, dh = torch.randn(1, T, H, V, dtype=torch.float64), torch.randn(len(lengths), H, K, V, dtype=torch.float64)

    def ref(q, k, v, g, h0):
        outs, finals = [], []
        for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            o, h = scalar_gla_loop(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], scale, h0[i : i + 1])
            outs.append(o)
            finals.append(h)
        return torch.cat(outs, 1), torch.cat(finals)

    o, h, grads = _grads(
        lambda *x: OPS[op](*x[:4], scale=scale, initial_state=x[4], output_final_state=True, cu_seqlens=cu),
        (q, k, v, g, h0),
        do,
        dh,
    )
    ro, rh, rgrads = _grads(ref, (q, k, v, g, h0), do, dh)
    torch.testing.assert_close(o, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, rh, rtol=1e-10, atol=1e-10)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_streamed_forward_without_gradients_matches_the_loop(monkeypatch):
    monkeypatch.setattr(chunk_torch, "STREAM_ELEMENTS", 1024)  # a few chunks per streamed block
    q, k, v, g, h0 = _inputs(2, 300, 2, 4, 4)
    with torch.no_grad():
        o, h = chunk_gla(q, k, v, g, scale=0.5, initial_state=h0, output_final_state=True)
        cu = torch.tensor([0, 17, 300])
        op, hp = chunk_gla(
            q[:1], k[:1], v[:1], g[:1], scale=0.5, initial_state=h0, output_final_state=True, cu_seqlens=cu
        )
    ro, rh = scalar_gla_loop(q, k, v, g, 0.5, h0)
    torch.testing.assert_close(o, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, rh, rtol=1e-10, atol=1e-10)
    ro1, rh1 = scalar_gla_loop(q[:1, :17], k[:1, :17], v[:1, :17], g[:1, :17], 0.5, h0[:1])
    ro2, rh2 = scalar_gla_loop(q[:1, 17:], k[:1, 17:], v[:1, 17:], g[:1, 17:], 0.5, h0[1:])
    torch.testing.assert_close(op, torch.cat([ro1, ro2], 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hp, torch.cat([rh1, rh2]), rtol=1e-10, atol=1e-10)


def test_token_by_token_decoding_equals_chunked():
    q, k, v, g, h0 = _inputs(1, 19, 2, 8, 4, torch.float32)
    o, h = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    state, outs = h0, []
    for t in range(19):
        ot, state = fused_recurrent_gla(
            *(x[:, t : t + 1] for x in (q, k, v, g)), initial_state=state, output_final_state=True
        )
        outs.append(ot)
    torch.testing.assert_close(torch.cat(outs, 1), o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "g,pattern",
    [
        (-torch.rand(1, 8, 3), r"`g` must be \[B, T, H, K\] = \(1, 8, 2, 4\) .* or \[B, T, H\] = \(1, 8, 2\)"),
        (-torch.rand(1, 9, 2), r"`g` must be \[B, T, H, K\]"),
        (-torch.rand(1, 8), r"`g` must have 4 dimensions \[B, T, H, K\] .* or 3 \[B, T, H\]"),
        (-torch.rand(1, 8, 2, 4, 1), r"`g` must have 4 dimensions"),
        (torch.rand(1, 8, 2) + 0.1, "`g` is a log-space forget gate"),
        (torch.full((1, 8, 2), float("nan")), "NaN"),
        (torch.full((1, 8, 2), float("-inf")), "-inf"),
    ],
)
def test_bad_scalar_gates_raise_named_value_error(op, g, pattern):
    q, k, v = torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match=pattern):
        OPS[op](q, k, v, g)


@pytest.mark.interpreter
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T,lengths", [(37, None), (1, None), (40, [9, 0, 31])])
def test_triton_route_scalar_gate_kernels_interpreter(op, T, lengths):
    """On the Triton backend a per-head gate runs the scalar-gate kernels (``chunk_scalar_triton.py``, the recurrent
    kernels with SCALAR_GATE), packed sequences through the padded route: the result and the gradients are the
    loop's (the kernels themselves: ``test_gla_scalar_triton.py``)."""
    H, K, V, scale = 2, 16, 16, 0.5
    q, k, v, g, h0 = _inputs(1, T, H, K, V, torch.float32)
    cu = None
    if lengths is not None:
        cu = torch.tensor([0] + lengths).cumsum(0)
        h0 = torch.randn(len(lengths), H, K, V)
    do = torch.randn(*v.shape, dtype=torch.float64)
    dh = torch.randn(*h0.shape, dtype=torch.float64)

    def ref(q, k, v, g, h0):
        if cu is None:
            return scalar_gla_loop(q, k, v, g, scale, h0)
        parts = [
            scalar_gla_loop(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], scale, h0[i : i + 1])
            for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist()))
        ]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts])

    o, h, grads = _grads(
        lambda *x: OPS[op](
            *x[:4], scale=scale, initial_state=x[4], output_final_state=True, backend="triton", cu_seqlens=cu
        ),
        (q, k, v, g, h0),
        do,
        dh,
    )
    ro, rh, rgrads = _grads(ref, (q, k, v, g, h0), do, dh)
    torch.testing.assert_close(o.double(), ro, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.double(), rh, rtol=1e-4, atol=1e-4)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        assert a.shape == b.shape, name
        torch.testing.assert_close(
            a.double(), b.double(), rtol=1e-3, atol=1e-3, msg=lambda m, name=name: f"gradient of {name}: {m}"
        )
