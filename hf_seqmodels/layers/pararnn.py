"""ParaRNN cells (Danieli et al., 2025): nonlinear RNNs trained in parallel over the sequence by Newton's method.

A cell only says how one step goes. Subclass :class:`ParallelRNNCell` and write

* ``input_projection(x) -> [B, T, G, D]``: everything that does not depend on the state (parallel over time),
* ``step(h_prev, u, *params) -> h``: one step, vectorized over all leading dims, where ``u`` is the input projection
  and ``params`` are the recurrent tensors the step uses (returned by ``recurrent_params()``; pass them through
  rather than reading ``self`` so that they get gradients),
* ``structure``: ``"diagonal"`` (state ``[.., D]``) or ``"block2"`` (state ``[.., D, 2]``, 2x2 Jacobian blocks),
* optionally ``jacobian(h_prev, u, *params)`` in closed form (default: autograd).

The cell then trains in parallel (``mode="parallel"``: Newton iterations solved with parallel scans, adjoint
backward) or step by step (``mode="sequential"``); both give the same result. :func:`check_jacobian_structure`
verifies that a cell's Jacobian has the structure it declares.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels import select_backend
from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm, newton_solve, sequential_solve

MODES = ("parallel", "sequential")


class ParallelRNNCell(nn.Module):
    structure = "diagonal"
    num_gates = 1

    def __init__(self, input_size: int, state_size: int):
        super().__init__()
        self.input_size, self.state_size = input_size, state_size

    # -- what a cell defines -------------------------------------------------------------------------------------
    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define input_projection(x) -> [B, T, G, D]")

    def step(self, h_prev, u, *params):
        raise TypeError(f"{type(self).__name__} must define step(h_prev, u, *params) -> h")

    def recurrent_params(self) -> tuple:
        return ()

    jacobian = None  # optional closed form: jacobian(h_prev, u, *params) -> [.., D] or [.., D, 2, 2]

    # Built-in cells: a fused Triton solver for exactly their step, fused(u, *params, h0, mask, tol=, max_iter=,
    # on_fail=, return_info=True) -> (h, NewtonInfo). Used for mode="parallel" when Triton is the selected backend.
    fused_solver = None

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """What the layer emits from the state (``[.., D]``); block2 cells emit component 1 by default."""
        return h if self.structure == "diagonal" else h[..., 1]

    # -- shared machinery ---------------------------------------------------------------------------------------
    def _masked(self, fn, identity):
        """Wrap step/jacobian so padded positions (mask row appended to ``u``) keep the previous state."""

        def wrapped(h_prev, u, *params):
            m = u[..., -1, :]
            if self.structure == "block2":
                m = m.unsqueeze(-1) if identity is None else m[..., None, None]
            out = fn(h_prev, u[..., :-1, :], *params)
            other = h_prev if identity is None else identity(out)
            return m * out + (1 - m) * other

        return wrapped

    def _eye(self, J):
        if self.structure == "diagonal":
            return torch.ones_like(J)
        return torch.eye(2, dtype=J.dtype, device=J.device).expand_as(J)

    def _fused(self, u):
        """The class's fused solver when it applies: Triton selected for ``u``'s device (CUDA, unless
        ``HF_SEQMODELS_BACKEND=torch``) and ``step``/``jacobian``/``recurrent_params`` not overridden below it."""
        owner = next(c for c in type(self).__mro__ if "fused_solver" in vars(c))
        if owner.fused_solver is None or select_backend("ParaRNN fused solver", u.device) != "triton":
            return None
        if any(getattr(type(self), n) is not getattr(owner, n) for n in ("step", "jacobian", "recurrent_params")):
            return None
        return owner.fused_solver

    def forward(self, x, h0=None, mask=None, mode="parallel", tol=None, max_iter=10, on_fail="fallback", return_info=False):
        """x ``[B, T, input_size]`` -> (outputs ``[B, T, D]``, states ``[B, T, D(, 2)]``), optionally Newton info."""
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {MODES}, got {mode!r}")
        u = self.input_projection(x)
        fused = self._fused(u) if mode == "parallel" and x.shape[1] > 1 else None
        if fused is not None:
            h, info = fused(u, *self.recurrent_params(), h0, mask, tol=tol, max_iter=max_iter, on_fail=on_fail,
                            return_info=True)
            out = self.output(h)
            return (out, h, info) if return_info else (out, h)
        step, jac = self.step, self.jacobian
        if mask is not None:
            u = torch.cat([u, mask[:, :, None, None].to(u.dtype).expand(-1, -1, 1, u.shape[-1])], dim=-2)
            step = self._masked(self.step, None)
            jac = self._masked(self.jacobian, self._eye) if self.jacobian is not None else None
        params = self.recurrent_params()
        info = None
        if mode == "sequential" or x.shape[1] == 1:
            h = sequential_solve(step, u, params, h0, state_size=self.state_size, structure=self.structure)
        else:
            h, info = newton_solve(step, jac, u, params, h0, state_size=self.state_size, structure=self.structure,
                                   tol=tol, max_iter=max_iter, on_fail=on_fail, return_info=True)
        out = self.output(h)
        return (out, h, info) if return_info else (out, h)


def _xavier_diag(size: int, clip: float = 0.5) -> torch.Tensor:
    """A diagonal recurrent weight: Xavier-normal (fan_in = fan_out = size), its norm clipped to ``clip`` (paper)."""
    w = torch.randn(size) * math.sqrt(2.0 / (size + size))
    return w * (clip / w.norm()).clamp(max=1.0)  # tensor ops only: this also runs on the meta device


class GatedDiagonalCell(ParallelRNNCell):
    """Shared parts of the paper's cells: one input projection for all gates (Kaiming-uniform, zero bias) and
    diagonal weights ``a`` ``[num_diagonals, D]`` (recurrent and peephole; Xavier-normal, norm clipped to 0.5)."""

    num_diagonals = 3

    def __init__(self, input_size, state_size):
        super().__init__(input_size, state_size)
        self.in_proj = nn.Linear(input_size, self.num_gates * state_size, bias=True)
        self.a = nn.Parameter(torch.zeros(self.num_diagonals, state_size))
        self.init_extra_weights()

    def init_extra_weights(self, config=None):
        # transformers.initialization skips tensors already loaded from a checkpoint
        init.kaiming_uniform_(self.in_proj.weight, a=math.sqrt(5))
        init.zeros_(self.in_proj.bias)
        init.copy_(self.a, torch.stack([_xavier_diag(self.state_size) for _ in range(self.num_diagonals)]))

    def input_projection(self, x):
        return self.in_proj(x).unflatten(-1, (self.num_gates, self.state_size))

    def recurrent_params(self):
        return (self.a,)


class ParaGRUCell(GatedDiagonalCell):
    """``z = sig(a_z*h + B_z x + b_z)``, ``r = sig(a_r*h + B_r x + b_r)``, ``c = tanh(a_c*(h*r) + B_c x + b_c)``,
    ``h' = (1-z)*h + z*c`` with diagonal recurrent weights ``a``: a diagonal Jacobian."""

    structure = "diagonal"
    num_gates = 3  # z, r, c
    fused_solver = fused_newton_gru

    def step(self, h, u, a):
        z = torch.sigmoid(a[0] * h + u[..., 0, :])
        r = torch.sigmoid(a[1] * h + u[..., 1, :])
        c = torch.tanh(a[2] * (h * r) + u[..., 2, :])
        return (1 - z) * h + z * c

    def jacobian(self, h, u, a):
        z = torch.sigmoid(a[0] * h + u[..., 0, :])
        r = torch.sigmoid(a[1] * h + u[..., 1, :])
        c = torch.tanh(a[2] * (h * r) + u[..., 2, :])
        dz = z * (1 - z) * a[0]
        dr = r * (1 - r) * a[1]
        dc = (1 - c * c) * a[2] * (r + h * dr)
        return (1 - z) + (c - h) * dz + z * dc


class ParaLSTMCell(GatedDiagonalCell):
    """Coupled input-forget gate with peepholes, state ``[c; h]`` per unit (index 0: c, 1: h):
    ``f = sig(a_f*h + B_f x + p_f*c_prev + b_f)``, ``z = tanh(a_z*h + B_z x + b_z)``, ``c = f*c_prev + (1-f)*z``,
    ``o = sig(a_o*h + B_o x + p_o*c + b_o)``, ``h = o*tanh(c)``: 2x2-block Jacobian."""

    structure = "block2"
    num_gates = 3  # f, z, o
    num_diagonals = 5  # recurrent a_f, a_z, a_o; peepholes p_f, p_o
    fused_solver = fused_newton_lstm

    def _gates(self, state, u, a):
        c_prev, h = state[..., 0], state[..., 1]
        f = torch.sigmoid(a[0] * h + u[..., 0, :] + a[3] * c_prev)
        z = torch.tanh(a[1] * h + u[..., 1, :])
        c = f * c_prev + (1 - f) * z
        o = torch.sigmoid(a[2] * h + u[..., 2, :] + a[4] * c)
        return c_prev, h, f, z, c, o

    def step(self, state, u, a):
        _, _, _, _, c, o = self._gates(state, u, a)
        return torch.stack([c, o * torch.tanh(c)], -1)

    def jacobian(self, state, u, a):
        c_prev, h, f, z, c, o = self._gates(state, u, a)
        p = a[3:]
        df = f * (1 - f)
        dc_dc, dc_dh = f + (c_prev - z) * df * p[0], (c_prev - z) * df * a[0] + (1 - f) * (1 - z * z) * a[1]
        do = o * (1 - o)
        tc = torch.tanh(c)
        dh_dc = do * p[1] * dc_dc * tc + o * (1 - tc * tc) * dc_dc
        dh_dh = do * (a[2] + p[1] * dc_dh) * tc + o * (1 - tc * tc) * dc_dh
        return torch.stack([torch.stack([dc_dc, dc_dh], -1), torch.stack([dh_dc, dh_dh], -1)], -2)


CELLS: dict[str, type[ParallelRNNCell]] = {"gru": ParaGRUCell, "lstm": ParaLSTMCell}


def register_cell(name: str, cell_class: type[ParallelRNNCell]) -> None:
    """Make a user cell available as ``ParaRNNConfig(cell=name)`` (register it before loading such a model)."""
    if not (isinstance(cell_class, type) and issubclass(cell_class, ParallelRNNCell)):
        raise ValueError(f"register_cell: `cell_class` must subclass ParallelRNNCell, got {cell_class!r}")
    CELLS[name] = cell_class


def check_jacobian_structure(cell: ParallelRNNCell, batch: int = 2, seq_len: int = 3, atol: float = 1e-8) -> None:
    """Raise ValueError if ``cell``'s full autograd Jacobian (fp64, random state) is not of the declared structure,
    or if its closed-form ``jacobian`` disagrees with autograd. Checks a float64 copy: ``cell`` is left as it is."""
    cell = copy.deepcopy(cell).double()
    D = cell.state_size
    shape = (batch, seq_len, D) + ((2,) if cell.structure == "block2" else ())
    h = torch.randn(shape, dtype=torch.float64)
    u = cell.input_projection(torch.randn(batch, seq_len, cell.input_size, dtype=torch.float64)).detach()
    params = tuple(p.detach() for p in cell.recurrent_params())
    per = 1 if cell.structure == "diagonal" else 2
    full = torch.autograd.functional.jacobian(lambda s: cell.step(s, u, *params), h)  # shape + shape
    n = batch * seq_len * D * per
    full = full.reshape(n, n)
    block = torch.block_diag(*[torch.ones(per, per, dtype=torch.bool)] * (batch * seq_len * D))
    leak = full.masked_fill(block, 0).abs().max().item()
    if leak > atol:
        raise ValueError(
            f"{type(cell).__name__} declares a {cell.structure!r} Jacobian but d step/d h_prev has off-structure "
            f"entries up to {leak:.3e}: a unit's next state depends on other units' previous state"
        )
    if cell.jacobian is not None:
        blocks = full.reshape(batch * seq_len * D, per, batch * seq_len * D, per).diagonal(dim1=0, dim2=2)
        auto = blocks.permute(2, 0, 1).reshape(*shape[:3], per, per)
        auto = auto[..., 0, 0] if per == 1 else auto
        closed = cell.jacobian(h, u, *params)
        err = (closed - auto).abs().max().item()
        if err > 1e-6:
            raise ValueError(f"{type(cell).__name__}.jacobian differs from autograd by {err:.3e}")


class ParaRNNMixer(nn.Module):
    """The token mixer of the paper's language model: short convolution, RNN cell, swish-gated RMSNorm (per head),
    output projection. Training solves the recurrence in parallel (Newton); decoding runs one cell step per token
    from the state kept in the cache."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        from .conv import ShortConvolution
        from .norm import GatedRMSNorm

        hidden, state = config.hidden_size, config.state_size
        if config.cell not in CELLS:
            raise ValueError(f"ParaRNNConfig.cell must be one of {sorted(CELLS)} (register_cell adds more), got {config.cell!r}")
        self.layer_idx, self.num_heads, self.state_size = layer_idx, config.num_heads, state
        self.config = config  # mode and Newton settings are read at call time: `model.config.mode = ...` applies
        self.conv = ShortConvolution(hidden, config.conv_size) if config.use_short_conv else None
        self.cell = CELLS[config.cell](hidden, state)
        self.g_proj = nn.Linear(hidden, state, bias=False)
        self.g_norm = GatedRMSNorm(state // config.num_heads, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(state, hidden, bias=False)

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        B, T, _ = hidden_states.shape
        x, idx = hidden_states, self.layer_idx
        mask = attention_mask[:, -T:] if attention_mask is not None else None
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if self.conv is not None:
            x, tail = self.conv(x, cache.get(idx, "conv") if cache is not None else None)
            if cache is not None:
                cache.set(idx, "conv", tail)
        h0 = cache.get(idx, "state") if cache is not None else None
        c = self.config
        out, states = self.cell(x, h0=h0, mask=mask, mode=c.mode, tol=c.newton_tol, max_iter=c.newton_max_iter,
                                on_fail=c.newton_on_fail)
        if cache is not None:
            cache.set(idx, "state", states[:, -1])
        H = self.num_heads
        gate = self.g_proj(hidden_states).reshape(B, T, H, -1)
        out = self.g_norm(out.to(hidden_states.dtype).reshape(B, T, H, -1), gate).reshape(B, T, self.state_size)
        return self.o_proj(out)
