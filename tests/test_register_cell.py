"""register_cell and a cell's first parallel forward check the cell (issues 10/11): a step that mixes units while
declaring "diagonal", or a wrong closed-form Jacobian, would otherwise train silently with wrong gradients."""

import pytest
import torch
from torch import nn

from hf_seqmodels.layers.pararnn import (
    CELLS,
    ParaGRUCell,
    ParallelRNNCell,
    ParaLSTMCell,
    register_cell,
    verify_cell,
)


def _diagonal_cell(step, jacobian=None, structure="diagonal"):
    """A fresh cell class (the check runs once per class) with one gate: ``step(h, u, w)``."""

    class Cell(ParallelRNNCell):
        def __init__(self, input_size, state_size):
            super().__init__(input_size, state_size)
            self.proj = nn.Linear(input_size, state_size)
            self.w = nn.Parameter(torch.randn(state_size) * 0.5)

        def input_projection(self, x):
            return self.proj(x).unsqueeze(-2)

        def recurrent_params(self):
            return (self.w,)

    Cell.structure = structure
    Cell.step = lambda self, h, u, w: step(h, u, w)
    if jacobian is not None:
        Cell.jacobian = lambda self, h, u, w: jacobian(h, u, w)
    Cell.__name__ = Cell.__qualname__ = "UserCell"
    return Cell


def _good_step(h, u, w):
    return torch.tanh(w * h + u[..., 0, :])


def _good_jacobian(h, u, w):
    return w * (1 - torch.tanh(w * h + u[..., 0, :]) ** 2)


def _rolling_step(h, u, w):  # reads the neighbouring unit: not diagonal
    return torch.tanh(w * h.roll(1, -1) + u[..., 0, :])


def _wrong_jacobian(h, u, w):  # forgets the chain rule through tanh
    return w + 0 * h


def _unregister(name):
    CELLS.pop(name, None)


def test_a_cell_that_mixes_units_is_refused_by_register_cell():
    cls = _diagonal_cell(_rolling_step)
    with pytest.raises(ValueError, match=r"UserCell declares a 'diagonal' Jacobian but its step mixes units.*unit"):
        register_cell("rolling", cls)
    assert "rolling" not in CELLS


def test_a_wrong_closed_form_jacobian_is_refused_by_register_cell():
    cls = _diagonal_cell(_good_step, _wrong_jacobian)
    with pytest.raises(ValueError, match=r"UserCell\.jacobian \(structure 'diagonal'\) differs from autograd"):
        register_cell("wrong_jac", cls)
    assert "wrong_jac" not in CELLS


def test_a_block2_cell_that_mixes_units_is_refused():
    class Block(ParallelRNNCell):
        structure = "block2"

        def __init__(self, input_size, state_size):
            super().__init__(input_size, state_size)
            self.proj = nn.Linear(input_size, 2 * state_size)

        def input_projection(self, x):
            return self.proj(x).unflatten(-1, (2, self.state_size))

        def step(self, s, u):  # component 0 reads unit i-1's component 1
            c = torch.tanh(s[..., 1].roll(1, -1) + u[..., 0, :])
            return torch.stack([c, torch.tanh(s[..., 0] + u[..., 1, :])], -1)

    with pytest.raises(ValueError, match="declares a 'block2' Jacobian but its step mixes units"):
        register_cell("block_mixer", Block)


def test_a_correct_cell_registers_and_names_are_guarded():
    cls = _diagonal_cell(_good_step, _good_jacobian)
    try:
        register_cell("good_tanh", cls)
        assert CELLS["good_tanh"] is cls
        register_cell("good_tanh", cls)  # the same class again (a re-run script) is fine
        redefined = _diagonal_cell(_good_step)  # same module and name: a re-run notebook cell replaces its old self
        register_cell("good_tanh", redefined)
        assert CELLS["good_tanh"] is redefined
        other = type("OtherCell", (redefined,), {})
        with pytest.raises(ValueError, match="already registered.*overwrite=True"):
            register_cell("good_tanh", other)
        register_cell("good_tanh", other, overwrite=True)
        assert CELLS["good_tanh"] is other
    finally:
        _unregister("good_tanh")


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_built_in_cells_cannot_be_replaced(name):
    builtin = CELLS[name]
    with pytest.raises(ValueError, match=f"'{name}' is a built-in cell"):
        register_cell(name, _diagonal_cell(_good_step))
    with pytest.raises(ValueError, match="built-in"):
        register_cell(name, _diagonal_cell(_good_step), overwrite=True)
    assert CELLS[name] is builtin


def test_register_cell_argument_types():
    with pytest.raises(TypeError, match="subclass of ParallelRNNCell"):
        register_cell("linear", nn.Linear)
    with pytest.raises(TypeError, match="subclass of ParallelRNNCell"):
        register_cell("instance", ParaGRUCell(2, 2))
    with pytest.raises(TypeError, match="`name` must be a str"):
        register_cell(3, _diagonal_cell(_good_step))
    with pytest.raises(ValueError, match="non-empty"):
        register_cell("", _diagonal_cell(_good_step))


def test_an_unknown_structure_is_refused_when_the_class_is_defined():
    with pytest.raises(ValueError, match=r"\.structure must be one of \('diagonal', 'block2'\), got 'full'"):

        class Full(ParallelRNNCell):  # noqa: F841
            structure = "full"


def test_a_cell_without_step_says_what_to_define():
    class NoStep(ParallelRNNCell):
        def input_projection(self, x):
            return x.unsqueeze(-2)

    with pytest.raises(NotImplementedError, match="must define step"):
        register_cell("no_step", NoStep)
    with pytest.raises(NotImplementedError, match="must define input_projection"):
        ParallelRNNCell(2, 2).input_projection(torch.zeros(1, 1, 2))


def test_first_parallel_forward_checks_an_unregistered_cell():
    """A cell used directly (never registered) is checked at its first Newton solve, not trained silently."""
    cell = _diagonal_cell(_rolling_step)(3, 5)
    x = torch.randn(2, 7, 3)
    out, _ = cell(x, mode="sequential")  # the step-by-step solve is right for any step: no check needed
    assert out.shape == (2, 7, 5)
    with pytest.raises(ValueError, match="declares a 'diagonal' Jacobian but its step mixes units"):
        cell(x)
    wrong = _diagonal_cell(_good_step, _wrong_jacobian)(3, 5)
    with pytest.raises(ValueError, match=r"jacobian \(structure 'diagonal'\) differs from autograd"):
        wrong(x)  # without the check: Newton falls back to the sequential solve and the gradients are wrong


def test_checked_cells_train_and_the_check_leaves_the_rng_alone():
    for cls in (ParaGRUCell, ParaLSTMCell, _diagonal_cell(_good_step, _good_jacobian)):
        state = torch.random.get_rng_state()
        verify_cell(cls)
        assert torch.equal(torch.random.get_rng_state(), state)
    cell = _diagonal_cell(_good_step, _good_jacobian)(3, 4).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    par, seq = cell(x)[0], cell(x, mode="sequential")[0]
    torch.testing.assert_close(par, seq, rtol=1e-9, atol=1e-10)
