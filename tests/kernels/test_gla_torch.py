"""The PyTorch path of the GLA ops against the fp64 loop reference: values and all gradients."""

import pytest
import torch
import torch.nn.functional as F
from reference import gla_loop

from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla

OPS = {"chunk": chunk_gla, "recurrent": fused_recurrent_gla}


def _inputs(B, T, H, K, V, dtype=torch.float32, gate="normal", with_state=True):
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    if gate == "normal":
        g = F.logsigmoid(torch.randn(B, T, H, K) * 2) / 4
    elif gate == "near_zero":
        g = -torch.rand(B, T, H, K) * 1e-4
    else:  # very negative: the state forgets everything within a step
        g = -torch.rand(B, T, H, K) * 30 - 20
    h0 = torch.randn(B, H, K, V) if with_state else None
    return q, k, v, g.to(dtype), h0


def _grads(fn, tensors, do, dh):
    xs = [t.detach().clone().requires_grad_() for t in tensors]
    o, h = fn(*xs)
    loss = (o.double() * do).sum() + (h.double() * dh).sum()
    return o, h, torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "B,T,H,K,V", [(2, 1, 2, 8, 8), (1, 37, 1, 16, 8), (2, 130, 2, 8, 12), (1, 64, 3, 4, 4), (1, 200, 1, 32, 16)]
)
def test_matches_loop_fp64_values_and_gradients(op, B, T, H, K, V):
    q, k, v, g, h0 = _inputs(B, T, H, K, V, torch.float64)
    h0 = h0.double()
    do, dh = torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)
    scale = 0.7
    o, h, grads = _grads(
        lambda *x: OPS[op](*x[:4], scale=scale, initial_state=x[4], output_final_state=True), (q, k, v, g, h0), do, dh
    )
    ro, rh, rgrads = _grads(lambda *x: gla_loop(*x[:4], scale, x[4]), (q, k, v, g, h0), do, dh)
    torch.testing.assert_close(o, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, rh, rtol=1e-10, atol=1e-10)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_gradcheck_small():
    q, k, v, g, h0 = _inputs(1, 21, 1, 4, 3, torch.float64)
    xs = [t.double().requires_grad_() for t in (q, k, v, g, h0)]
    assert torch.autograd.gradcheck(lambda *x: chunk_gla(*x[:4], initial_state=x[4], output_final_state=True), xs)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 4e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("gate", ["normal", "near_zero", "very_negative"])
def test_low_precision_inputs_and_extreme_gates(dtype, tol, gate):
    B, T, H, K, V = 2, 150, 2, 16, 8
    q, k, v, g, h0 = _inputs(B, T, H, K, V, dtype, gate)
    do, dh = torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)
    o, h, grads = _grads(
        lambda *x: chunk_gla(*x[:4], initial_state=x[4], output_final_state=True), (q, k, v, g, h0), do, dh
    )
    ro, rh, rgrads = _grads(lambda *x: gla_loop(*x[:4], None, x[4]), (q, k, v, g, h0), do, dh)
    assert o.dtype == dtype and h.dtype == torch.float32
    ref_scale = lambda r: tol * max(1.0, r.abs().max().item())  # noqa: E731
    assert torch.isfinite(o).all()
    assert (o.double() - ro).abs().max() <= ref_scale(ro)
    assert (h.double() - rh).abs().max() <= ref_scale(rh)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        assert torch.isfinite(a).all(), name
        assert (a.double() - b).abs().max() <= ref_scale(b) * 2, f"gradient of {name}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunks_of_both_intra_chunk_forms_in_one_call(dtype):
    """A chunk whose total decay is within the one-matmul form's span and one beyond it (the sub-block form), in the
    same call: heads and chunks decay at different rates; the fp32 case puts chunks just under the span limit."""
    from hf_seqmodels.kernels.gla.chunk_torch import CHUNK, FAST_SPAN

    B, T, H, K, V = 2, 3 * CHUNK + 5, 3, 8, 6
    q, k, v, _, h0 = _inputs(B, T, H, K, V, dtype)
    limit = FAST_SPAN[torch.float32 if dtype == torch.float32 else torch.float64]
    g = -torch.rand(B, T, H, K, dtype=torch.float64) * 0.1
    g[:, CHUNK : 2 * CHUNK, 0] = -(0.9 * limit / CHUNK)  # head 0, chunk 1: just under the limit (fast form)
    g[:, 2 * CHUNK :, 1, :3] = -(2.5 * limit / CHUNK)  # head 1, chunk 2 on: beyond it in 3 keys (sub-blocks)
    g[0, :CHUNK, 2] = -(1.5 * limit / CHUNK)  # row 0, head 2, chunk 0 only
    g = g.to(dtype)
    do, dh = torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)
    o, h, grads = _grads(
        lambda *x: chunk_gla(*x[:4], scale=0.6, initial_state=x[4], output_final_state=True), (q, k, v, g, h0), do, dh
    )
    ro, rh, rgrads = _grads(lambda *x: gla_loop(*x[:4], 0.6, x[4]), (q, k, v, g, h0), do, dh)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for name, a, b in zip(["o", "final state", *"dq dk dv dg dh0".split()], (o, h, *grads), (ro, rh, *rgrads)):
        assert torch.isfinite(a).all(), name
        assert (a.double() - b).abs().max() <= tol * max(1.0, b.abs().max().item()), name


@pytest.mark.parametrize("op", OPS)
def test_state_carried_across_two_calls_equals_one_call(op):
    q, k, v, g, h0 = _inputs(2, 101, 2, 8, 8)
    o, h = OPS[op](q, k, v, g, initial_state=h0, output_final_state=True)
    o1, h1 = OPS[op](q[:, :45], k[:, :45], v[:, :45], g[:, :45], initial_state=h0, output_final_state=True)
    o2, h2 = OPS[op](q[:, 45:], k[:, 45:], v[:, 45:], g[:, 45:], initial_state=h1, output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h2, h, rtol=1e-4, atol=1e-4)


def test_token_by_token_decoding_equals_chunked():
    q, k, v, g, _ = _inputs(1, 19, 2, 8, 4, with_state=False)
    o, h = chunk_gla(q, k, v, g, output_final_state=True)
    state, outs = None, []
    for t in range(19):
        ot, state = fused_recurrent_gla(
            q[:, t : t + 1],
            k[:, t : t + 1],
            v[:, t : t + 1],
            g[:, t : t + 1],
            initial_state=state,
            output_final_state=True,
        )
        outs.append(ot)
    torch.testing.assert_close(torch.cat(outs, 1), o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, h, rtol=1e-4, atol=1e-5)


def test_no_final_state_unless_asked():
    q, k, v, g, _ = _inputs(1, 5, 1, 4, 4, with_state=False)
    assert chunk_gla(q, k, v, g)[1] is None


def _bad(**overrides):
    q, k, v, g, h0 = _inputs(1, 8, 2, 4, 4)
    args = dict(q=q, k=k, v=v, g=g, initial_state=h0)
    args.update(overrides)
    return args


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(k=torch.randn(1, 8, 2, 5)), "`k` must have the shape of `q`"),
        (dict(v=torch.randn(1, 9, 2, 4)), "`v` must be"),
        (dict(g=torch.randn(1, 8, 2, 4).abs()), "`g` is a log-space forget gate"),
        (dict(q=torch.randn(1, 8, 2)), "`q` must have 4 dimensions"),
        (dict(initial_state=torch.randn(1, 2, 4, 5)), "`initial_state` must be"),
        (dict(v=torch.randn(1, 8, 2, 4, dtype=torch.float64)), "must share a dtype"),
        (dict(q=torch.randint(0, 3, (1, 8, 2, 4))), "`q` must be a floating-point"),
    ],
)
def test_bad_input_raises_named_value_error(op, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        OPS[op](**_bad(**overrides))


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        chunk_gla(**_bad(), backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        chunk_gla(**_bad(), backend="cuda")
