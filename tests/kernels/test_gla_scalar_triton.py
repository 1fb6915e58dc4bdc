"""The Triton kernels for a gate per head (``g`` [B, T, H], fla's simple GLA): the chunked kernels
(``chunk_scalar_triton.py``) and the recurrent ones with SCALAR_GATE, against the fp64 loop of the per-key
recurrence with the gate repeated over K (autograd of that loop sums the gate's gradient over K): values, final
state and the gradients of q, k, v, g and the initial state. Interpreter, small shapes."""

import pytest
import torch
from reference import gla_loop

from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla
from hf_seqmodels.kernels.gla import chunk_triton
from hf_seqmodels.kernels.gla.chunk_scalar_triton import chunk_scalar_gla_triton
from hf_seqmodels.kernels.gla.recurrent_triton import fused_recurrent_gla_triton

OPS = {"chunk": chunk_scalar_gla_triton, "recurrent": fused_recurrent_gla_triton}
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def scalar_loop(q, k, v, g, scale, initial_state=None, output_final_state=True):
    """The fp64 loop with one gate per head: the per-key loop given the gate repeated over K."""
    return gla_loop(q, k, v, g.unsqueeze(-1).expand(*g.shape, q.shape[-1]), scale, initial_state)


def make_gates(shape, kind):
    if kind == "normal":
        return torch.nn.functional.logsigmoid(2 * torch.randn(shape))
    if kind == "mamba2":  # 3-8 nats a step: the state keeps nothing of the chunk's start
        return -3 - 5 * torch.rand(shape)
    if kind == "fast":  # about -20 nats a step, some heads ~0
        return torch.where(torch.rand(shape) < 0.2, -1e-3 * torch.rand(shape), -20 - torch.rand(shape))
    if kind == "steps":  # -20 nats for 8 tokens in every 32, ~0 otherwise: large cumulative gates, pairs near 1
        t = torch.arange(shape[1]).reshape(1, -1, 1) % 32
        return torch.where(t < 8, -20 - torch.rand(shape), -1e-3 * torch.rand(shape))
    if kind == "zero":  # no decay at all
        return torch.zeros(shape)
    raise ValueError(kind)


def make_inputs(B, T, H, K, V, dtype=torch.float32, gates="normal", g_dtype=None, h0=True):
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = make_gates((B, T, H), gates)
    return [x.to(dtype) for x in (q, k, v)] + [g.to(g_dtype or dtype), torch.randn(B, H, K, V) if h0 else None]


def err(got, ref, scale=None):
    """Largest absolute error relative to the largest reference value (or to ``scale``)."""
    got, ref = got.detach().double(), ref.detach().double()
    scale = ref.abs().max() if scale is None else scale
    return float((got - ref).abs().max() / max(float(scale), 1e-30))


def run(fn, inputs, scale, wo, wS):
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    o, S = fn(*leaves[:4], scale, leaves[4], True)
    ((o.double() * wo).sum() + (S.double() * wS).sum()).backward()
    return o.detach(), S.detach(), [x.grad if x is not None else None for x in leaves]


def check(fn, inputs, tol):
    q, k, v, g, s0 = inputs
    B, T, H, K = q.shape
    scale = 0.7 * K**-0.5
    # loss weights representable in the input dtype: the same `do` for the kernel and the reference
    wo = torch.randn(*v.shape).to(v.dtype).double()
    wS = torch.randn(B, H, K, v.shape[-1]).double()
    o, S, grads = run(fn, inputs, scale, wo, wS)
    ro, rS, rgrads = run(scalar_loop, [x.double() if x is not None else None for x in inputs], scale, wo, wS)
    assert o.dtype == q.dtype and S.dtype == torch.float32 and o.shape == v.shape
    assert err(o, ro) < tol, f"o: {err(o, ro):.2e}"
    assert err(S, rS) < tol, f"final state: {err(S, rS):.2e}"
    for name, got, ref in zip(("dq", "dk", "dv"), grads[:3], rgrads[:3]):
        assert got.dtype == q.dtype and torch.isfinite(got).all(), name
        assert err(got, ref) < tol, f"{name}: {err(got, ref):.2e}"
    # dg = a reverse cumsum of sum_K (q dq - k dk): with fast gates dg is tiny while the summed terms are O(1), so its
    # error is measured against the size of those terms
    dg_scale = max(
        float(rgrads[3].abs().max()),
        float((q.double() * rgrads[0]).sum(-1).abs().max()),
        float((k.double() * rgrads[1]).sum(-1).abs().max()),
    )
    assert grads[3].shape == g.shape and grads[3].dtype == g.dtype and torch.isfinite(grads[3]).all()
    assert err(grads[3], rgrads[3], dg_scale) < tol, f"dg: {err(grads[3], rgrads[3], dg_scale):.2e}"
    if s0 is not None:
        assert err(grads[4], rgrads[4]) < tol, f"d initial_state: {err(grads[4], rgrads[4]):.2e}"


CASES = {
    # name: (B, T, H, K, V, dtype, gates, g dtype, initial state)
    "odd_T": (2, 70, 2, 16, 12, torch.float32, "normal", None, True),
    "T1": (1, 1, 1, 8, 8, torch.float32, "normal", None, True),
    "mamba2": (1, 45, 2, 16, 8, torch.float32, "mamba2", None, True),
    "fast": (1, 40, 2, 16, 16, torch.float32, "fast", None, True),
    "steps": (1, 100, 1, 16, 8, torch.float32, "steps", None, True),
    "zero_no_state": (1, 64, 1, 12, 20, torch.float32, "zero", None, False),
    "tiles": (1, 130, 1, 40, 72, torch.float32, "normal", None, True),  # several K tiles (partial), 3 chunks
    "bf16_g32": (1, 50, 2, 16, 16, torch.bfloat16, "mamba2", torch.float32, True),
    "fp16": (1, 20, 1, 16, 16, torch.float16, "normal", torch.float32, False),
    "bf16_gbf16": (1, 20, 1, 16, 24, torch.bfloat16, "fast", None, True),
    "V136": (1, 20, 1, 16, 136, torch.float32, "normal", None, True),  # V > MAX_V: two value slices
}


# the recurrent kernels walk token by token (slow in the interpreter): the short cases
RECURRENT_CASES = ["T1", "fast", "bf16_g32", "fp16", "V136"]


@pytest.mark.interpreter
@pytest.mark.parametrize("op,case", [("chunk", c) for c in CASES] + [("recurrent", c) for c in RECURRENT_CASES])
def test_scalar_gate_kernels_match_loop(op, case):
    B, T, H, K, V, dtype, gates, g_dtype, h0 = CASES[case]
    check(OPS[op], make_inputs(B, T, H, K, V, dtype, gates, g_dtype, h0), TOL[dtype])


@pytest.mark.interpreter
def test_prefill_then_decode_matches_one_chunked_call():
    """Chunked prefill, then T=1 decode steps through the public op, == one chunked call (outputs and state)."""
    q, k, v, g, s0 = make_inputs(2, 70, 2, 16, 8, gates="mamba2")
    o, S = chunk_gla(q, k, v, g, initial_state=s0, output_final_state=True, backend="triton")
    T1 = 66
    o1, state = chunk_gla(
        *(x[:, :T1].contiguous() for x in (q, k, v, g)), initial_state=s0, output_final_state=True, backend="triton"
    )
    outs = [o1]
    for t in range(T1, q.shape[1]):
        step = [x[:, t : t + 1].contiguous() for x in (q, k, v, g)]
        ot, state = fused_recurrent_gla(*step, initial_state=state, output_final_state=True, backend="triton")
        outs.append(ot)
    assert err(torch.cat(outs, 1), o) < 1e-5
    assert err(state, S) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["chunk_gla", "fused_recurrent_gla"])
def test_public_ops_run_no_per_key_kernel(name, monkeypatch):
    """A per-head gate is not broadcast over K onto the per-key kernels: they are not launched at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("per-key kernel launched for a per-head gate")

    monkeypatch.setattr(chunk_triton.ChunkGLATriton, "apply", refuse)
    q, k, v, g, s0 = make_inputs(1, 9, 2, 16, 8)
    op = chunk_gla if name == "chunk_gla" else fused_recurrent_gla
    o, S = op(q, k, v, g, initial_state=s0, output_final_state=True, backend="triton")
    ro, rS = scalar_loop(q, k, v, g, None, s0)
    assert err(o, ro) < 1e-4 and err(S, rS) < 1e-4
