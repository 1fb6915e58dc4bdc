"""Empty input and token ids outside the vocabulary (issue 21, item 7).

Models refuse them at the entry, by argument name, for every registered architecture and a memory-bank model: no
convolution, reduction or IndexError from deep inside. The kernels' public ops compute the empty result at T = 0 (an
empty output, and the initial state unchanged as the final state); a stream split with an empty piece gives what the
unsplit stream gives.
"""

import re

import pytest
import torch

from hf_seqmodels import GLAConfig, HNetConfig, LigerConfig, LizardConfig, ParaRNNConfig
from hf_seqmodels.kernels import (
    block2_scan,
    chunk_gla,
    fused_recurrent_gla,
    linear_scan,
    memory_ffn,
    newton_solve,
    sequential_solve,
    sliding_window_attention,
)
from hf_seqmodels.memory import MemoryBankConfig, attach_memory_bank, build_memory_index
from hf_seqmodels.models import (
    GLAForCausalLM,
    HNetForCausalLM,
    LigerForCausalLM,
    LizardForCausalLM,
    ParaRNNForCausalLM,
)
from hf_seqmodels.models.hnet.tokenization_byte import ByteTokenizer

V = 256
_SEQ = dict(vocab_size=V, hidden_size=32, num_hidden_layers=1, intermediate_size=64, pad_token_id=0)
_LLAMA = dict(num_attention_heads=4, num_key_value_heads=2, window_size=3)
# short convolutions (conv_size 4) on GLA and ParaGRU, where T = 0 used to fail; none on ParaLSTM, where it reached
# the Newton solve; Mamba-2 (conv) and the chunking stages in H-Net
ARCHS = {
    "gla": lambda: GLAForCausalLM(GLAConfig(num_heads=2, use_short_conv=True, **_SEQ)),
    "paragru": lambda: ParaRNNForCausalLM(ParaRNNConfig(cell="gru", use_short_conv=True, **_SEQ)),
    "paralstm": lambda: ParaRNNForCausalLM(ParaRNNConfig(cell="lstm", use_short_conv=False, **_SEQ)),
    "liger": lambda: LigerForCausalLM(LigerConfig(**_LLAMA, **_SEQ)),
    "lizard": lambda: LizardForCausalLM(LizardConfig(num_sinks=2, **_LLAMA, **_SEQ)),
    "hnet": lambda: HNetForCausalLM(
        HNetConfig(
            arch_layout=["m1", ["T1"], "m1"],
            d_model=[32, 48],
            d_intermediate=[0, 64],
            vocab_size=V,
            ssm_cfg={"d_state": 8, "head_dim": 16},
            attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [3, -1]},
        )
    ),
    "hnet-word": lambda: HNetForCausalLM(
        HNetConfig(
            arch_layout=["m1", ["T1"], "m1"],
            d_model=[32, 48],
            d_intermediate=[0, 64],
            vocab_size=V,
            boundary_router="word",
            ssm_cfg={"d_state": 8, "head_dim": 16},
            attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [3, -1]},
        )
    ),
}
MEMORY_TEXTS = [f"text number {i} about topic {i % 3}" for i in range(12)]


@pytest.fixture(scope="module")
def memory_index():
    return build_memory_index(MEMORY_TEXTS, levels=1, branching=2, embed_dim=16, progress=False)


def build(arch, memory_index):
    if arch == "memory-gla":
        model = ARCHS["gla"]().eval()
        return attach_memory_bank(
            model,
            MemoryBankConfig(block_sizes=(4,), branching=2, generic_memory_prob=0.0),
            memory_index,
            tokenizer=ByteTokenizer(),
        )
    return ARCHS[arch]().eval()


ALL = [*ARCHS, "memory-gla"]


@pytest.mark.parametrize("arch", ALL)
def test_empty_input_ids_are_refused_by_name(arch, memory_index):
    model = build(arch, memory_index)
    expected = "`input_ids` has 0 positions (shape [2, 0]): give at least one token"
    for kwargs in ({}, {"use_cache": False}):
        with pytest.raises(ValueError, match=re.escape(expected)):
            model(torch.zeros(2, 0, dtype=torch.long), **kwargs)


@pytest.mark.parametrize("arch", ALL)
def test_empty_inputs_embeds_are_refused_by_name(arch, memory_index):
    model = build(arch, memory_index)
    width = model.get_input_embeddings().embedding_dim
    kwargs = {"memory_paths": torch.zeros(2, 1, dtype=torch.long)} if arch == "memory-gla" else {}
    with pytest.raises(ValueError, match=re.escape(f"`inputs_embeds` has 0 positions (shape [2, 0, {width}])")):
        model(inputs_embeds=torch.zeros(2, 0, width), **kwargs)


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("bad", [70000, V, -1])
def test_token_ids_outside_the_vocabulary_are_refused_by_name(arch, bad, memory_index):
    model = build(arch, memory_index)
    ids = torch.randint(3, V, (2, 5))
    ids[1, 3] = bad
    expected = f"`input_ids` holds token id {bad} but vocab_size is {V} (config field vocab_size)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        model(ids)


@pytest.mark.parametrize("arch", ALL)
def test_padded_batches_and_the_vocabulary_edges_still_run(arch, memory_index):
    """Pad ids are valid ids: a left-padded batch passes, as do ids 0 and vocab_size - 1; the padded row computes
    what it computes alone."""
    model = build(arch, memory_index)
    ids = torch.randint(3, V, (2, 6))
    ids[0, 3], ids[1, 4] = V - 1, 0
    mask = torch.ones(2, 6, dtype=torch.long)
    ids[1, :2], mask[1, :2] = 0, 0  # left padding with the pad id 0
    paths = {"memory_paths": torch.zeros(2, 1, dtype=torch.long)} if arch == "memory-gla" else {}
    one = {"memory_paths": torch.zeros(1, 1, dtype=torch.long)} if arch == "memory-gla" else {}
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, **paths).logits
        alone = model(ids[1:, 2:], **one).logits
    assert batch.shape == (2, 6, V)
    torch.testing.assert_close(batch[1, 2:], alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["gla", "hnet"])
def test_input_ids_dtype_is_checked_by_name(arch):
    model = ARCHS[arch]().eval()
    ids = torch.randint(0, V, (2, 5))
    with pytest.raises(
        ValueError, match=re.escape("`input_ids` must hold token ids as torch.long (or int32), got dtype torch.float32")
    ):
        model(ids.float())
    with torch.no_grad():
        torch.testing.assert_close(model(ids.int()).logits, model(ids).logits)


@pytest.mark.parametrize("arch", [*ARCHS])
def test_generation_one_token_at_a_time_passes_the_check(arch):
    model = ARCHS[arch]().eval()
    prompt = torch.randint(3, V, (2, 4))
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert out.shape == (2, 7)
    assert torch.equal(out[:, :4], prompt)


# -- kernels at T = 0: the empty result ----------------------------------------------------------------------------
def _gla(T, B=2, H=3, K=4, Vd=5, dtype=torch.float32):
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, Vd, dtype=dtype)
    g = -torch.rand(B, T, H, K, dtype=dtype)
    return q, k, v, g


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla])
@pytest.mark.parametrize("backend", [None, pytest.param("triton", marks=pytest.mark.interpreter)])
def test_gla_ops_at_t0_return_the_initial_state(op, backend):
    if backend:
        pytest.importorskip("triton")
    q, k, v, g = _gla(0)
    h0 = torch.randn(2, 3, 4, 5, requires_grad=True)
    o, final = op(q, k, v, g, initial_state=h0, output_final_state=True, backend=backend)
    assert o.shape == (2, 0, 3, 5) and o.dtype == v.dtype
    assert final.dtype == torch.float32 and torch.equal(final, h0.detach()) and final is not h0
    weight = torch.randn_like(final)
    (final * weight).sum().backward()
    torch.testing.assert_close(h0.grad, weight)
    o, final = op(q, k, v, g, output_final_state=True, backend=backend)
    assert o.shape == (2, 0, 3, 5) and torch.equal(final, torch.zeros(2, 3, 4, 5))
    assert op(q, k, v, g, backend=backend)[1] is None


def test_gla_stream_split_with_an_empty_piece_equals_the_whole():
    q, k, v, g = _gla(7, dtype=torch.float64)
    h0 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    whole, final = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    pieces = [slice(0, 3), slice(3, 3), slice(3, 7)]
    state, outs = h0, []
    for s in pieces:
        o, state = chunk_gla(q[:, s], k[:, s], v[:, s], g[:, s], initial_state=state, output_final_state=True)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), whole)
    torch.testing.assert_close(state, final)
    assert state.dtype == torch.float64


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("block2", [False, True])
def test_scans_at_t0_are_empty(reverse, block2):
    tail = (2,) if block2 else ()
    a = torch.randn(2, 0, 6, *tail, *tail, requires_grad=True)
    b = torch.randn(2, 0, 6, *tail, dtype=torch.float32, requires_grad=True)
    h0 = torch.randn(2, 6, *tail, requires_grad=True)
    op = block2_scan if block2 else linear_scan
    h = op(a, b, h0, reverse=reverse)
    assert h.shape == (2, 0, 6, *tail) and h.dtype == b.dtype
    h.sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    assert h0.grad is None or torch.equal(h0.grad, torch.zeros_like(h0))
    assert op(a.detach(), b.detach(), reverse=reverse).shape == (2, 0, 6, *tail)


def _gru_like_step(h, x, w):
    return torch.tanh(w * h + x)


def _block2_step(h, x, w):
    return torch.tanh(torch.stack((w * h[..., 0] + x, h[..., 0] - w * h[..., 1]), -1))


@pytest.mark.parametrize("structure", ["diagonal", "block2"])
def test_newton_and_sequential_solves_at_t0_are_empty(structure):
    step = _gru_like_step if structure == "diagonal" else _block2_step
    tail = () if structure == "diagonal" else (2,)
    x = torch.randn(3, 0, 4, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    h0 = torch.randn(3, 4, *tail, requires_grad=True)
    h, info = newton_solve(step, None, x, (w,), h0, structure=structure, return_info=True)
    assert h.shape == (3, 0, 4, *tail)
    assert info.converged and info.iterations == 0 and not info.fallback
    h.sum().backward()
    assert w.grad is None or torch.equal(w.grad, torch.zeros_like(w))
    assert newton_solve(step, None, x.detach(), (w,), state_size=4, structure=structure).shape == (3, 0, 4, *tail)
    assert sequential_solve(step, x, (w,), h0, structure=structure).shape == (3, 0, 4, *tail)
    packed = sequential_solve(step, x[:1], (w,), state_size=4, structure=structure, cu_seqlens=torch.tensor([0, 0]))
    assert packed.shape == (1, 0, 4, *tail)
    # and on to the next piece of the stream: the state after the empty piece is h0 itself
    x2 = torch.randn(3, 5, 4)
    torch.testing.assert_close(
        newton_solve(step, None, x2, (w,), h0, structure=structure, tol=1e-7, max_iter=5),
        sequential_solve(step, x2, (w,), h0, structure=structure),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("prefix", [0, 3])
def test_sliding_window_attention_at_t0_is_empty(prefix):
    q = torch.randn(2, 0, 4, 8, requires_grad=True)
    k = torch.randn(2, prefix, 2, 8, requires_grad=True)
    v = torch.randn(2, prefix, 2, 8)
    o = sliding_window_attention(q, k, v, window=2, sinks=torch.randn(4))
    assert o.shape == (2, 0, 4, 8) and o.dtype == q.dtype
    o.sum().backward()
    assert k.grad is None or torch.equal(k.grad, torch.zeros_like(k))


@pytest.mark.parametrize("backend", [None, pytest.param("triton", marks=pytest.mark.interpreter)])
def test_memory_ffn_at_t0_is_empty(backend):
    if backend:
        pytest.importorskip("triton")
    x = torch.randn(2, 0, 6)
    w = [torch.randn(2, 3, 6, requires_grad=True) for _ in range(3)]
    y = memory_ffn(x, *w, backend=backend)
    assert y.shape == (2, 0, 6) and y.dtype == x.dtype
    y.sum().backward()
    assert all(p.grad is None or torch.equal(p.grad, torch.zeros_like(p)) for p in w)


@pytest.mark.interpreter
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_newton_at_t0_is_empty(cell):
    pytest.importorskip("triton")
    from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm

    op, n, tail = (fused_newton_gru, 3, ()) if cell == "gru" else (fused_newton_lstm, 5, (2,))
    u, a = torch.randn(2, 0, 3, 4), torch.rand(n, 4) * 0.5
    h0 = torch.randn(2, 4, *tail)
    for backend in ("torch", "triton"):
        h, info = op(u, a, h0, backend=backend, return_info=True)
        assert h.shape == (2, 0, 4, *tail) and info.converged and info.iterations == 0
