"""ParaRNN cells and models: parallel (Newton) == sequential, Jacobian-structure check, convergence handling, cache."""

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import hf_seqmodels
from hf_seqmodels.compat import output_cache
from hf_seqmodels.kernels.pararnn import NewtonConvergenceError, sequential_solve
from hf_seqmodels.layers.pararnn import (
    AUTO_SEQUENTIAL_MIN_STATE,
    CELLS,
    ParaGRUCell,
    ParallelRNNCell,
    ParaLSTMCell,
    check_jacobian_structure,
)

CELL_CLASSES = [ParaGRUCell, ParaLSTMCell]


def _tiny(cell="gru", **kw):
    args = dict(cell=cell, vocab_size=64, hidden_size=16, num_hidden_layers=2, num_heads=2)
    args.update(kw)
    return hf_seqmodels.ParaRNNConfig(**args)


@pytest.mark.parametrize("cell_class", CELL_CLASSES)
def test_builtin_cells_have_the_declared_jacobian_and_closed_forms_match_autograd(cell_class):
    check_jacobian_structure(cell_class(6, 5))


class _MixingCell(ParallelRNNCell):
    """Declares a diagonal Jacobian but its step reads the neighbouring unit: must be caught."""

    def __init__(self, input_size, state_size):
        super().__init__(input_size, state_size)
        self.proj = nn.Linear(input_size, state_size)

    def input_projection(self, x):
        return self.proj(x).unsqueeze(-2)

    def step(self, h, u):
        return torch.tanh(0.5 * h.roll(1, dims=-1) + u[..., 0, :])


class _WrongClosedFormCell(_MixingCell):
    def step(self, h, u):
        return torch.tanh(0.5 * h + u[..., 0, :])

    def jacobian(self, h, u):
        return 0.5 * torch.ones_like(h)  # forgets the tanh derivative


def test_structure_check_catches_a_cell_that_mixes_units():
    with pytest.raises(ValueError, match="off-structure"):
        check_jacobian_structure(_MixingCell(4, 3))


def test_structure_check_catches_a_wrong_closed_form_jacobian():
    with pytest.raises(ValueError, match="differs from autograd"):
        check_jacobian_structure(_WrongClosedFormCell(4, 3))


def test_structure_check_leaves_the_cell_alone():
    cell = ParaGRUCell(6, 4)
    model = nn.Sequential(cell)
    check_jacobian_structure(cell)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("cell_class", CELL_CLASSES)
@pytest.mark.parametrize("B,T", [(1, 1), (2, 37), (3, 130)])
def test_cell_parallel_equals_sequential_values_and_gradients(cell_class, B, T):
    cell = cell_class(5, 4).double()
    x = torch.randn(B, T, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, 4, *((2,) if cell.structure == "block2" else ()), dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, T, 4, dtype=torch.float64)
    results = []
    for mode in ("parallel", "sequential"):
        out, states = cell(x, h0=h0, mode=mode)
        grads = torch.autograd.grad((out * w).sum() + states[:, -1].sum(), [x, h0, *cell.parameters()])
        results.append((out, grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-9, atol=1e-10)
    names = ["x", "h0"] + [n for n, _ in cell.named_parameters()]
    for name, a, b in zip(names, results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_model_parallel_equals_sequential_for_every_parameter(cell):
    torch.set_default_dtype(torch.float64)
    try:
        model = AutoModelForCausalLM.from_config(_tiny(cell, num_heads=2))
    finally:
        torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, 64, (2, 45))
    grads = {}
    for mode in ("parallel", "sequential"):
        model.config.mode = mode
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        grads[mode] = (out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads["parallel"][0], grads["sequential"][0], rtol=1e-8, atol=1e-9)
    for name, g in grads["parallel"][1].items():
        torch.testing.assert_close(g, grads["sequential"][1][name], rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("cell_class", CELL_CLASSES)
@pytest.mark.parametrize("T", [1, 23])
def test_no_grad_sequential_scan_equals_the_step_loop(cell_class, T):
    """Without gradients a built-in cell's sequential solve runs its fused step loop (``scan``); it must equal the
    generic loop over the cell's ``step`` (``sequential_solve`` on the masked step), with h0 and padding."""
    cell = cell_class(5, 4).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn_like(p))  # O(1) weights: every term matters
    B = 3
    x = torch.randn(B, T, 5, dtype=torch.float64)
    h0 = torch.randn(B, 4, *((2,) if cell.structure == "block2" else ()), dtype=torch.float64)
    mask = torch.ones(B, T)
    mask[0, : T // 2] = 0  # left padding
    mask[2, T // 2] = 0  # and a hole
    u = cell.input_projection(x).detach()
    m = mask[:, :, None, None].to(u.dtype).expand(-1, -1, 1, u.shape[-1])
    ref = sequential_solve(
        cell._masked(cell.step, None),
        torch.cat([u, m], -2),
        cell.recurrent_params(),
        h0,
        state_size=4,
        structure=cell.structure,
    )
    with torch.no_grad():
        out, states = cell(x, h0=h0, mask=mask, mode="sequential")
    torch.testing.assert_close(states, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, cell.output(ref).detach(), rtol=1e-12, atol=1e-12)
    assert torch.equal(states[0, T // 2 - 1], h0[0]) if T > 1 else True  # padding keeps the initial state
    # with gradients the generic loop runs (and agrees)
    grad_out, _ = cell(x, h0=h0, mask=mask, mode="sequential")
    assert grad_out.requires_grad
    torch.testing.assert_close(grad_out.detach(), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,B", [("gru", 2), ("gru", 16), ("lstm", 2), ("lstm", 8)])
def test_auto_mode_equals_sequential_and_newton_with_and_without_grad(cell, B):
    """``mode="auto"`` (the default) gives the outputs and gradients of both solves, and picks (on the CPU) the
    step-by-step solve from AUTO_SEQUENTIAL_MIN_STATE state elements per step (with gradients: its forward and the
    adjoint backward, checked here against autograd through the generic loop), Newton below: its NewtonInfo is
    there exactly when Newton ran."""
    torch.set_default_dtype(torch.float64)
    try:
        model = AutoModelForCausalLM.from_config(_tiny(cell))
    finally:
        torch.set_default_dtype(torch.float32)
    assert model.config.mode == "auto" and model.model.layers[0].mixer.mode == "auto"
    elements = B * 16 * (2 if cell == "lstm" else 1)  # state_size 16 (hidden_size)
    ids, mask = torch.randint(0, 64, (B, 29)), torch.ones(B, 29, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    for grad in (False, True):
        got = {}
        for mode in ("auto", "sequential", "parallel"):
            model.config.mode = mode
            model.zero_grad()
            with torch.set_grad_enabled(grad):
                out = model(ids, attention_mask=mask, labels=ids)
            if grad:
                out.loss.backward()
            infos = [layer.mixer.newton_info for layer in model.model.layers]
            got[mode] = (out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}, infos)
        newton = elements < AUTO_SEQUENTIAL_MIN_STATE
        if grad:
            from hf_seqmodels.layers.pararnn import resolve_mode

            x = torch.ones(1, 1, requires_grad=True)
            assert resolve_mode("auto", x, (), elements) == ("parallel" if newton else "adjoint")
        assert all((info is not None) == newton for info in got["auto"][2]), (grad, elements, got["auto"][2])
        assert all(info is not None for info in got["parallel"][2])
        assert all(info is None for info in got["sequential"][2])
        for other in ("sequential", "parallel"):
            torch.testing.assert_close(got["auto"][0][:, 4:], got[other][0][:, 4:], rtol=1e-8, atol=1e-9)
            for name, g in got["auto"][1].items():
                if grad:
                    torch.testing.assert_close(g, got[other][1][name], rtol=1e-7, atol=1e-9, msg=name)
                else:
                    assert g is None and got[other][1][name] is None


@pytest.mark.parametrize("cell_class", CELL_CLASSES)
def test_newton_converges_in_a_few_iterations_on_random_inputs(cell_class):
    cell = cell_class(8, 16)
    _, _, info = cell(torch.randn(4, 512, 8), return_info=True)
    assert info.converged and not info.fallback
    assert info.iterations <= 6, info


def test_newton_converges_in_a_few_iterations_after_brief_training():
    model = AutoModelForCausalLM.from_config(_tiny("lstm", hidden_size=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    text = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 30)) % 64
    for _ in range(15):
        ids = torch.stack([text[i : i + 96] for i in torch.randint(0, len(text) - 96, (4,)).tolist()])
        loss = model(ids, labels=ids).loss
        loss.backward(), opt.step(), opt.zero_grad()
    mixer = model.model.layers[0].mixer
    x = mixer.conv(torch.randn(2, 256, 32))[0]
    _, _, info = mixer.cell(x, return_info=True)
    assert info.converged and info.iterations <= 8, info


def test_non_convergence_falls_back_to_sequential_with_a_warning():
    cell = ParaGRUCell(4, 8).double()
    with torch.no_grad():
        cell.a.mul_(8)  # strongly nonlinear recurrence: one Newton step is not enough
    x = torch.randn(2, 64, 4, dtype=torch.float64) * 3
    with pytest.warns(RuntimeWarning, match="falling back to the sequential solve"):
        out, _, info = cell(x, max_iter=1, tol=1e-14, return_info=True)
    assert info.fallback and not info.converged
    torch.testing.assert_close(out, cell(x, mode="sequential")[0], rtol=0, atol=0)


def test_non_convergence_raises_with_the_residual_when_configured():
    cell = ParaGRUCell(4, 8).double()
    with torch.no_grad():
        cell.a.mul_(8)
    with pytest.raises(NewtonConvergenceError, match=r"relative residual \d"):
        cell(torch.randn(2, 64, 4, dtype=torch.float64) * 3, max_iter=1, tol=1e-14, on_fail="raise")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_decoding_with_cache_equals_full_forward(cell):
    model = AutoModelForCausalLM.from_config(_tiny(cell)).eval()
    ids = torch.randint(0, 64, (2, 29))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :11], use_cache=True)
        cache, steps = output_cache(out), [out.logits]
        for t in range(11, 29):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 29


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_left_padded_rows_equal_unpadded_rows(cell):
    model = AutoModelForCausalLM.from_config(_tiny(cell)).eval()
    ids = torch.randint(1, 64, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :7] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        alone = model(ids[:1, 7:]).logits
    torch.testing.assert_close(padded[0, 7:], alone[0], rtol=1e-4, atol=1e-4)


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="ParaRNNConfig.mode"):
        _tiny(mode="fast")
    with pytest.raises(ValueError, match="ParaRNNConfig: `newton_on_fail` must be one of"):
        _tiny(newton_on_fail="ignore")
    with pytest.raises(ValueError, match="ParaRNNConfig.cell must be one of"):
        AutoModelForCausalLM.from_config(_tiny("transformer"))


def test_example_user_cell_trains_in_parallel():
    example = Path(__file__).resolve().parents[2] / "examples" / "custom_pararnn_cell.py"
    namespace = runpy.run_path(str(example))
    cell_class = namespace["LeakyTanhCell"]
    assert CELLS["leaky_tanh"] is cell_class
    check_jacobian_structure(cell_class(5, 4))
    cell = cell_class(5, 4).double()
    x = torch.randn(2, 50, 5, dtype=torch.float64)
    torch.testing.assert_close(cell(x)[0], cell(x, mode="sequential")[0], rtol=1e-9, atol=1e-10)
