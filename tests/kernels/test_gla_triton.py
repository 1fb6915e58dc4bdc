"""Triton GLA kernels (chunked and recurrent): values and gradients against the fp64 loop reference.

On the CPU they run in the Triton interpreter (TRITON_INTERPRET=1, set by conftest) on small shapes; the tests
marked ``cuda`` compare against the PyTorch path at larger shapes on a GPU.
"""

import pytest
import torch
import torch.nn.functional as F
from reference import gla_loop

from hf_seqmodels.kernels.gla import ops
from hf_seqmodels.kernels.gla.chunk_torch import chunk_gla_torch
from hf_seqmodels.kernels.gla.chunk_triton import chunk_gla_triton
from hf_seqmodels.kernels.gla.recurrent_triton import fused_recurrent_gla_triton

OPS = {"chunk": chunk_gla_triton, "recurrent": fused_recurrent_gla_triton}
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def make_gates(shape, kind, dtype):
    if kind == "normal":
        g = F.logsigmoid(3 * torch.randn(shape))
    elif kind == "layer":  # as the GLA layer makes them (logsigmoid / 16): mild, the common case
        g = F.logsigmoid(torch.randn(shape)) / 16
    elif kind == "moderate":  # -1.4 nats a step on average: a chunk decays by far more than 2^64, 16 rows do not
        g = -1.4 * (0.5 + torch.rand(shape))
    elif kind == "gentle":  # the same for fp16's 2^8: a chunk decays by more, 16 rows by less
        g = -0.25 * (0.5 + torch.rand(shape))
    elif kind == "near0":  # no decay at all in places (g == 0), almost none elsewhere
        g = torch.where(torch.rand(shape) < 0.3, 0.0, -1e-3 * torch.rand(shape))
    elif kind == "steep":  # half the key dims forget everything each step (-30 and below), half almost nothing
        steep = torch.arange(shape[-1]) % 2 == 0
        g = torch.where(steep, -30 - 10 * torch.rand(shape), -1e-2 * torch.rand(shape))
    else:
        raise ValueError(kind)
    return g.to(dtype)


def make_inputs(B, T, H, K, V, dtype=torch.float32, gates="normal", g_dtype=None, h0=True, device="cpu"):
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = make_gates((B, T, H, K), gates, g_dtype or dtype)
    s0 = torch.randn(B, H, K, V) if h0 else None
    return [x.to(device) if x is not None else None for x in (q, k, v, g, s0)]


def err(got, ref, scale=None):
    """Largest absolute error relative to the largest reference value (or to ``scale``)."""
    got, ref = got.detach().double(), ref.detach().double()
    scale = ref.abs().max() if scale is None else scale
    return float((got - ref).abs().max() / max(float(scale), 1e-30))


def run_with_grads(fn, inputs, scale, weights):
    """Call ``fn``, backprop a random linear loss of o (and the final state); return outputs and input grads."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    q, k, v, g, s0 = leaves
    o, S = fn(q, k, v, g, scale, s0, True)
    wo, wS = weights
    loss = (o.double() * wo).sum() + (S.double() * wS).sum()
    loss.backward()
    return o.detach(), S.detach(), [x.grad if x is not None else None for x in leaves]


def check(fn, inputs, tol, reference="loop"):
    """Compare ``fn`` with the fp64 loop (on the CPU) or with the PyTorch path (same device and dtype)."""
    q, k, v, g, s0 = inputs
    scale = q.shape[-1] ** -0.5
    B, T, H, K = q.shape
    # loss weights representable in the input dtype, so `do` is the same for the kernel and the reference
    weights = (
        torch.randn(*v.shape, dtype=v.dtype, device=v.device).double(),
        torch.randn(B, H, K, v.shape[-1], device=v.device).double(),
    )
    o, S, grads = run_with_grads(fn, inputs, scale, weights)
    if reference == "loop":
        ref_inputs = [x.double() if x is not None else None for x in inputs]
        ro, rS, rgrads = run_with_grads(lambda *a: gla_loop(*a[:6]), ref_inputs, scale, weights)
    else:
        ro, rS, rgrads = run_with_grads(chunk_gla_torch, inputs, scale, weights)
    assert o.dtype == q.dtype and S.dtype == torch.float32
    assert err(o, ro) < tol, f"o: {err(o, ro):.2e}"
    assert err(S, rS) < tol, f"final state: {err(S, rS):.2e}"
    for name, got, ref in zip(("dq", "dk", "dv"), grads[:3], rgrads[:3]):
        assert got.dtype == q.dtype and torch.isfinite(got).all(), name
        assert err(got, ref) < tol, f"{name}: {err(got, ref):.2e}"
    # dg = reverse cumsum of (q*dq - k*dk): with steep gates dg is ~exp(-30) while the summed terms are O(1), so its
    # error is measured against the size of those terms (the PyTorch path computes it the same way).
    dq_ref, dk_ref, dg_ref = rgrads[0], rgrads[1], rgrads[3]
    dg_scale = max(
        float(dg_ref.abs().max()),
        float((q.double() * dq_ref.double()).abs().max()),
        float((k.double() * dk_ref.double()).abs().max()),
    )
    assert grads[3].dtype == g.dtype and torch.isfinite(grads[3]).all()
    assert err(grads[3], dg_ref, dg_scale) < tol, f"dg: {err(grads[3], dg_ref, dg_scale):.2e}"
    if s0 is not None:
        assert err(grads[4], rgrads[4]) < tol, f"d initial_state: {err(grads[4], rgrads[4]):.2e}"


CASES = {
    # name: (B, T, H, K, V, dtype, gates, g dtype, initial state)
    "odd_T": (2, 70, 2, 16, 12, torch.float32, "normal", None, True),
    "T1_H1": (1, 1, 1, 8, 8, torch.float32, "normal", None, True),
    "near0": (1, 64, 1, 12, 20, torch.float32, "near0", None, False),
    "steep": (1, 40, 2, 16, 16, torch.float32, "steep", None, True),
    "tiles": (1, 130, 1, 80, 72, torch.float32, "normal", None, True),  # several K and V tiles, 3 chunks
    "bf16": (2, 50, 2, 16, 16, torch.bfloat16, "normal", None, True),
    "bf16_g32": (1, 20, 1, 16, 24, torch.bfloat16, "steep", torch.float32, True),
    "fp16": (1, 20, 1, 16, 16, torch.float16, "normal", torch.float32, False),
    "K100_V36": (1, 67, 2, 100, 36, torch.float32, "normal", None, True),  # partial K and V tiles
    "K100_V36_bf16": (1, 67, 1, 100, 36, torch.bfloat16, "layer", torch.float32, True),  # the GLA layer's gates
    "V136": (1, 20, 1, 16, 136, torch.float32, "normal", None, True),  # V > MAX_V: two value slices
}


@pytest.mark.interpreter
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("op", list(OPS))
def test_matches_loop_reference(op, case):
    B, T, H, K, V, dtype, gates, g_dtype, h0 = CASES[case]
    check(OPS[op], make_inputs(B, T, H, K, V, dtype, gates, g_dtype, h0), TOL[dtype])


def gate_paths(g, limit, BK=32):
    """How the chunk kernels compute the scores inside each chunk, from the gate: "fast" (every K tile decays by at
    most 2^limit over the chunk: one reference row), else per K tile "blocked" (per 16-row block references, the
    diagonal blocks in the dot) or "exact" (diagonal blocks pair by pair)."""
    B, T, H, K = g.shape
    n = -(-T // 64)
    gp = F.pad(g.double() * 1.4426950408889634, (0, 0, 0, 0, 0, n * 64 - T)).reshape(B, n, 64, H, K)
    c = gp.cumsum(2)
    span = (c[:, :, 0] - c[:, :, -1]).transpose(1, 2)  # [B, H, n, K]
    inner = (c.reshape(B, n, 4, 16, H, K)[:, :, :, :1] - c.reshape(B, n, 4, 16, H, K)).amax((2, 3))  # [B, n, H, K]
    inner = inner.transpose(1, 2)
    paths = set()
    for b in range(B):
        for h in range(H):
            for i in range(n):
                if all(span[b, h, i, k0 : k0 + BK].max() <= limit for k0 in range(0, K, BK)):
                    paths.add("fast")
                    continue
                for k0 in range(0, K, BK):
                    paths.add("blocked" if inner[b, h, i, k0 : k0 + BK].max() <= limit else "exact")
    return paths


PATH_CASES = {
    # name: (gates per K tile, dtype, SPAN_LIMIT override or None, the paths the gates must take)
    "fast": (["layer"], torch.float32, None, {"fast"}),
    "fast_bf16": (["layer"], torch.bfloat16, None, {"fast"}),
    "blocked": (["moderate"], torch.float32, None, {"blocked"}),
    "exact": (["steep"], torch.float32, None, {"exact"}),
    "exact_forced": (["normal"], torch.float32, -1.0, {"exact"}),  # every block pair by pair
    "mixed_bf16": (["layer", "moderate", "steep"], torch.bfloat16, None, {"blocked", "exact"}),
    "mixed_fp16": (["layer", "gentle", "steep"], torch.float16, None, {"blocked", "exact"}),
    # the second chunk steep in every K tile, the others mild: fast and slow chunks in one call
    "chunks_bf16": (["layer", "layer"], torch.bfloat16, None, {"fast", "exact"}),
}


@pytest.mark.interpreter
@pytest.mark.parametrize("case", list(PATH_CASES))
def test_chunk_paths_match_loop_reference(case, monkeypatch):
    """Each way the chunk kernels compute the scores inside a chunk (chosen per chunk, and inside slow chunks per K
    tile, from the gate), alone and mixed in one call, against the fp64 loop: 3 chunks (the last one 52 rows),
    K tiles of 32 (the last partial), values, final state and all gradients."""
    from hf_seqmodels.kernels.gla import chunk_triton

    kinds, dtype, limit, want = PATH_CASES[case]
    if limit is not None:
        monkeypatch.setitem(chunk_triton.SPAN_LIMIT, dtype, limit)
    B, T, H, V = 1, 180, 1, 20
    K = 32 * len(kinds) - (8 if len(kinds) > 1 else 0)
    q, k, v, _, s0 = make_inputs(B, T, H, K, V, dtype)
    g = torch.cat([make_gates((B, T, H, 32), kind, torch.float32) for kind in kinds], -1)[..., :K]
    if case.startswith("chunks"):
        g[:, 64:128] = make_gates((B, 64, H, K), "steep", torch.float32)
    g = g.contiguous().to(dtype)
    assert gate_paths(g, chunk_triton.SPAN_LIMIT[dtype]) == want
    check(chunk_gla_triton, [q, k, v, g, s0], TOL[dtype])


@pytest.mark.interpreter
@pytest.mark.parametrize("op", list(OPS))
def test_without_state(op):
    """No initial state and no final state requested: o and the gradients of q, k, v, g."""
    q, k, v, g, _ = make_inputs(1, 20, 2, 16, 16, h0=False)
    o, S = OPS[op](q, k, v, g, 0.3, None, False)
    assert S is None
    ro, _ = gla_loop(q, k, v, g, 0.3)
    assert err(o, ro) < 1e-4
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g)]
    w = torch.randn_like(o)
    (OPS[op](*leaves, 0.3, None, False)[0] * w).sum().backward()
    ref = [x.double().requires_grad_() for x in (q, k, v, g)]
    (gla_loop(*ref, 0.3)[0] * w.double()).sum().backward()
    for a, b in zip(leaves[:3], ref[:3]):
        assert err(a.grad, b.grad) < 1e-4


@pytest.mark.interpreter
def test_chunk_state_carried_across_calls():
    """Two calls with the state handed over == one call, for outputs, final state and all gradients."""
    q, k, v, g, s0 = make_inputs(1, 90, 2, 16, 16)
    T1 = 37
    leaves_one = [x.clone().requires_grad_() for x in (q, k, v, g, s0)]
    o, S = chunk_gla_triton(*leaves_one[:4], 0.25, leaves_one[4], True)
    leaves_two = [x.clone().requires_grad_() for x in (q, k, v, g, s0)]
    a, b = ([x[:, :T1] for x in leaves_two[:4]], [x[:, T1:] for x in leaves_two[:4]])
    o1, S1 = chunk_gla_triton(*[x.contiguous() for x in a], 0.25, leaves_two[4], True)
    o2, S2 = chunk_gla_triton(*[x.contiguous() for x in b], 0.25, S1, True)
    assert err(torch.cat([o1, o2], 1), o) < 1e-5 and err(S2, S) < 1e-5
    wo, wS = torch.randn_like(o), torch.randn_like(S)
    ((o * wo).sum() + (S * wS).sum()).backward()
    ((torch.cat([o1, o2], 1) * wo).sum() + (S2 * wS).sum()).backward()
    for x, y in zip(leaves_one, leaves_two):
        assert err(y.grad, x.grad) < 1e-4


@pytest.mark.interpreter
def test_prefill_then_decode_matches_one_call():
    """Chunked prefill, then token-by-token decoding with the recurrent op, == one chunked call."""
    q, k, v, g, s0 = make_inputs(2, 75, 2, 16, 12)
    o, S = chunk_gla_triton(q, k, v, g, 0.25, s0, True)
    T1 = 68
    outs = [
        chunk_gla_triton(
            q[:, :T1].contiguous(),
            k[:, :T1].contiguous(),
            v[:, :T1].contiguous(),
            g[:, :T1].contiguous(),
            0.25,
            s0,
            True,
        )
    ]
    state = outs[0][1]
    for t in range(T1, q.shape[1]):
        step = [x[:, t : t + 1].contiguous() for x in (q, k, v, g)]
        outs.append(fused_recurrent_gla_triton(*step, 0.25, state, True))
        state = outs[-1][1]
    assert err(torch.cat([x[0] for x in outs], 1), o) < 1e-5
    assert err(state, S) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["chunk_gla", "fused_recurrent_gla"])
def test_through_public_ops(name):
    q, k, v, g, s0 = make_inputs(1, 9, 2, 16, 8)
    op = getattr(ops, name)
    o, S = op(q, k, v, g, initial_state=s0, output_final_state=True, backend="triton")
    ro, rS = gla_loop(q, k, v, g, None, s0)
    assert err(o, ro) < 1e-4 and err(S, rS) < 1e-4
    with pytest.raises(ValueError, match="float64"):
        op(*(x.double() for x in (q, k, v, g)), backend="triton")


# ---------------------------------------------------------------------------------------------------------------
# On a GPU: the same checks at larger shapes, against the PyTorch path.

CUDA_CASES = {
    "fp32": (2, 300, 4, 64, 128, torch.float32, "normal", None),
    "bf16": (2, 1000, 4, 128, 128, torch.bfloat16, "normal", torch.float32),
    "odd": (3, 129, 3, 100, 36, torch.float32, "steep", None),
    "wide": (1, 200, 2, 256, 256, torch.bfloat16, "near0", None),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(CUDA_CASES))
@pytest.mark.parametrize("op", list(OPS))
def test_cuda_matches_torch_path(op, case):
    B, T, H, K, V, dtype, gates, g_dtype = CUDA_CASES[case]
    if op == "recurrent":
        T = min(T, 300)
    inputs = make_inputs(B, T, H, K, V, dtype, gates, g_dtype, True, device="cuda")
    check(OPS[op], inputs, 1e-3 if dtype == torch.float32 else 3e-2, reference="torch")


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["odd_T", "T1_H1", "steep", "bf16"])
@pytest.mark.parametrize("op", list(OPS))
def test_cuda_matches_loop_reference(op, case):
    """The kernels run on the GPU; the fp64 loop reference and the comparison run on the CPU."""
    B, T, H, K, V, dtype, gates, g_dtype, h0 = CASES[case]
    fn = OPS[op]

    def on_cuda(*args):
        out = fn(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
        return tuple(x.cpu() for x in out)

    check(on_cuda, make_inputs(B, T, H, K, V, dtype, gates, g_dtype, h0), TOL[dtype])
