"""ParaRNN cells (Danieli et al., 2025): nonlinear RNNs trained in parallel over the sequence by Newton's method.

A cell only says how one step goes. Subclass :class:`ParallelRNNCell` and write

* ``input_projection(x) -> [B, T, G, D]``: everything that does not depend on the state (parallel over time),
* ``step(h_prev, u, *params) -> h``: one step, vectorized over all leading dims, where ``u`` is the input projection
  and ``params`` are the recurrent tensors the step uses (returned by ``recurrent_params()``; pass them through
  rather than reading ``self`` so that they get gradients),
* ``structure``: ``"diagonal"`` (state ``[.., D]``) or ``"block2"`` (state ``[.., D, 2]``, 2x2 Jacobian blocks),
* optionally ``jacobian(h_prev, u, *params)`` in closed form (default: autograd).

The cell then trains in parallel (``mode="parallel"``: Newton iterations solved with parallel scans, adjoint
backward) or step by step (``mode="sequential"``); both give the same result. ``mode="auto"`` (the mixer's and
``ParaRNNConfig``'s default) picks the faster for each call (:func:`resolve_mode`); on a CPU with gradients that
can be a third way: the step-by-step forward without a graph and the adjoint backward (``adjoint_solve``).
:func:`check_jacobian_structure` verifies that a cell's Jacobian has the structure it declares (and a closed-form
``jacobian`` matches autograd); ``register_cell`` and a cell class's first parallel forward run it once
(:func:`verify_cell`). The built-in cells' maths live in ``hf_seqmodels.kernels.pararnn.cells``, shared with the
fused solver's PyTorch path.

Mixers here take keyword arguments and have a ``from_config(config, layer_idx)`` classmethod (the convention of
every mixer in ``hf_seqmodels.layers``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels import context_parallel, select_backend
from hf_seqmodels.kernels.pararnn import (
    adjoint_solve,
    cells,
    check_newton_options,
    fused_newton_gru,
    fused_newton_lstm,
    newton_solve,
    sequential_solve,
)
from hf_seqmodels.kernels.pararnn.newton import STRUCTURES

from .checks import check_choice, check_int

MODES = ("auto", "parallel", "sequential")


def check_mode(where: str, mode, name: str = "mode") -> None:
    """The one check of a ParaRNN solve mode (cells, mixer, ``ParaRNNConfig``)."""
    check_choice(where, name, mode, MODES)


#: ``mode="auto"`` without gradients on the CPU: the step-by-step solve from this many state elements per step
#: (batch x state_size, x 2 for block2 cells) up, Newton below, where the per-step overhead of the loop dominates
#: (measured with ``benchmarks/pararnn_auto.py``, see ``ParaRNNConfig``'s docstring)
AUTO_SEQUENTIAL_MIN_STATE = 256


def resolve_mode(mode: str, x: torch.Tensor, tensors, state_elements: int) -> str:
    """``"auto"``: the faster solve for this call (measured: ``ParaRNNConfig``'s docstring,
    ``benchmarks/pararnn_auto.py``). Off the CPU, Newton (``"parallel"``: the fused solver). On the CPU, when a step
    updates at least :data:`AUTO_SEQUENTIAL_MIN_STATE` state elements (``state_elements``, over the batch): the
    step-by-step solve, and when a gradient will flow (grad mode on and ``x`` or one of ``tensors``, the parameters
    and initial state, requires grad) ``"adjoint"``: that solve's forward without a graph and Newton's adjoint
    backward (cheaper than both Newton's iterations and autograd through the loop); Newton for smaller states, where
    the loop's per-step overhead dominates. Other modes are returned as they are."""
    if mode != "auto":
        return mode
    if x.device.type != "cpu" or state_elements < AUTO_SEQUENTIAL_MIN_STATE:
        return "parallel"
    return "adjoint" if _needs_grad(x, *tensors) else "sequential"


def _needs_grad(*tensors) -> bool:
    """Whether a result computed from ``tensors`` now would record a graph."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def pararnn_shape(where: str, hidden_size, state_size, num_heads) -> None:
    """The one check of a ParaRNN mixer's shape (mixer, ``ParaRNNConfig``): positive sizes, ``num_heads`` (groups
    of the output norm) dividing ``state_size``."""
    check_int(where, "hidden_size", hidden_size)
    check_int(where, "state_size", state_size)
    check_int(where, "num_heads", num_heads)
    if state_size % num_heads:
        raise ValueError(f"{where}: state_size ({state_size}) must be divisible by num_heads ({num_heads})")


class ParallelRNNCell(nn.Module):
    structure = "diagonal"
    num_gates = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.structure not in STRUCTURES:  # refused when the class is defined, not at its first forward
            raise ValueError(f"{cls.__name__}.structure must be one of {STRUCTURES}, got {cls.structure!r}")

    def __init__(self, input_size: int, state_size: int):
        super().__init__()
        check_int(type(self).__name__, "input_size", input_size)
        check_int(type(self).__name__, "state_size", state_size)
        self.input_size, self.state_size = input_size, state_size

    # -- what a cell defines -------------------------------------------------------------------------------------
    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define input_projection(x) -> [B, T, G, D]")

    def step(self, h_prev, u, *params):
        raise NotImplementedError(f"{type(self).__name__} must define step(h_prev, u, *params) -> h")

    def recurrent_params(self) -> tuple:
        return ()

    jacobian = None  # optional closed form: jacobian(h_prev, u, *params) -> [.., D] or [.., D, 2, 2]

    # Built-in cells: a fused Triton solver for exactly their step, fused(u, *params, h0, mask, tol=, max_iter=,
    # on_fail=, return_info=True) -> (h, NewtonInfo). Used for mode="parallel" when Triton is the selected backend.
    fused_solver = None
    # Built-in cells: their whole step-by-step solve without autograd, scan(u, *params, h0, mask) -> states. Used for
    # a sequential solve (and a one-token step) that needs no gradient, on any backend.
    scan = None

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

    def _builtin(self, name):
        """The class's ``fused_solver`` or ``scan`` (``name``) when it applies: ``step``/``jacobian``/
        ``recurrent_params`` not overridden below the class that set it."""
        owner = next(c for c in type(self).__mro__ if name in vars(c))
        if any(getattr(type(self), n) is not getattr(owner, n) for n in ("step", "jacobian", "recurrent_params")):
            return None
        return getattr(owner, name)

    def _fused(self, u):
        """The class's fused solver when it applies: Triton selected for ``u``'s device (CUDA, unless
        ``HF_SEQMODELS_BACKEND=torch``) and the cell's maths not overridden (:meth:`_builtin`)."""
        if select_backend("ParaRNN fused solver", u.device) != "triton":
            return None
        return self._builtin("fused_solver")

    def forward(
        self,
        x,
        h0=None,
        mask=None,
        mode="parallel",
        tol=None,
        max_iter=10,
        on_fail="fallback",
        return_info=False,
        cu_seqlens=None,
    ):
        """x ``[B, T, input_size]`` -> (outputs ``[B, T, D]``, states ``[B, T, D(, 2)]``), optionally Newton info.
        ``cu_seqlens``: offsets of packed sequences (batch 1), each solved from its own ``h0`` row (``[N, D(, 2)]``)."""
        check_mode(type(self).__name__, mode)
        per_row = self.state_size * (2 if self.structure == "block2" else 1)
        if context_parallel.active():  # a slice of the sequence: Newton's distributed solve ("auto" routes there)
            if mode == "sequential":
                context_parallel.refuse(
                    f"{type(self).__name__} mode='sequential'", "a step-by-step solve; use mode='parallel' or 'auto'"
                )
            mode = "parallel"
        mode = resolve_mode(mode, x, (h0, *self.parameters()), x.shape[0] * per_row)
        if mode == "parallel" and x.shape[1] > 1:
            verify_cell(self)  # once per class: structure and closed-form Jacobian, on a tiny fp64 copy
        u = self.input_projection(x)
        # the fused solvers know no sequence boundaries and no other rank: packed input and a slice of a sequence
        # (context parallelism) take the generic Newton path
        fused = (
            self._fused(u)
            if mode == "parallel" and x.shape[1] > 1 and cu_seqlens is None and not context_parallel.active()
            else None
        )
        if fused is not None:
            h, info = fused(
                u, *self.recurrent_params(), h0, mask, tol=tol, max_iter=max_iter, on_fail=on_fail, return_info=True
            )
            out = self.output(h)
            return (out, h, info) if return_info else (out, h)
        params = self.recurrent_params()
        scan = self._builtin("scan") if cu_seqlens is None else None
        if mode == "adjoint" and (scan is None or x.shape[1] == 1):
            mode = "parallel"  # a user cell, or packed sequences: Newton's solve
        sequential = mode == "sequential" or (x.shape[1] == 1 and not context_parallel.active())
        if sequential and scan is not None and not _needs_grad(u, h0, *params):  # the same solve in fewer ops
            h = scan(u, *params, h0, mask)
            out = self.output(h)
            return (out, h, None) if return_info else (out, h)
        step, jac, u_raw = self.step, self.jacobian, u
        if mask is not None:
            u = torch.cat([u, mask[:, :, None, None].to(u.dtype).expand(-1, -1, 1, u.shape[-1])], dim=-2)
            step = self._masked(self.step, None)
            jac = self._masked(self.jacobian, self._eye) if self.jacobian is not None else None
        info = None
        if mode == "adjoint":
            h = adjoint_solve(
                lambda: scan(u_raw, *params, h0, mask),
                step,
                jac,
                u,
                params,
                h0,
                state_size=self.state_size,
                structure=self.structure,
            )
        elif sequential:
            h = sequential_solve(
                step, u, params, h0, state_size=self.state_size, structure=self.structure, cu_seqlens=cu_seqlens
            )
        else:
            h, info = newton_solve(
                step,
                jac,
                u,
                params,
                h0,
                state_size=self.state_size,
                structure=self.structure,
                tol=tol,
                max_iter=max_iter,
                on_fail=on_fail,
                return_info=True,
                cu_seqlens=cu_seqlens,
            )
        out = self.output(h)
        return (out, h, info) if return_info else (out, h)


def _xavier_diag(size: int, clip: float = 0.5) -> torch.Tensor:
    """A diagonal recurrent weight: Xavier-normal (fan_in = fan_out = size), its norm clipped to ``clip`` (paper)."""
    w = torch.randn(size) * math.sqrt(2.0 / (size + size))
    return w * (clip / w.norm()).clamp(max=1.0)  # tensor ops only: this also runs on the meta device


#: how the diagonal recurrent weights ``a`` start: ``"xavier_clipped"`` (Xavier-normal, each vector's norm clipped to
#: 0.5, as the paper describes), ``"xlstm"`` (the reference library's default: N(0, (2 / sqrt(5 D))^2) per element) or
#: ``"uniform"`` (U(-0.9, 0.9) per element, the reference library's "uniform" option, inside the paper's synthetic-task
#: clip of 0.9). The first two shrink with D (at D 64 no |a| exceeds ~0.3); tracking parity needs |a| > 1 on some unit
#: (a flip is a 2-cycle of ``h -> tanh(a h + u)``, which exists only for ``a < -1``), which Adam reaches from the small
#: inits only at ~lr per step, when it does (BENCHMARKS.md, state tracking).
RECURRENT_INITS = ("xavier_clipped", "xlstm", "uniform")
#: the bound of recurrent_init="uniform"
UNIFORM_BOUND = 0.9


class GatedDiagonalCell(ParallelRNNCell):
    """Shared parts of the paper's cells: one input projection for all gates (Kaiming-uniform, zero bias) and
    diagonal weights ``a`` ``[num_diagonals, D]`` (recurrent and peephole; initialized as ``recurrent_init`` says,
    one of :data:`RECURRENT_INITS`)."""

    num_diagonals = 3

    def __init__(
        self, input_size, state_size, recurrent_init: str = "xavier_clipped", recurrent_clip: float | None = None
    ):
        super().__init__(input_size, state_size)
        if recurrent_init not in RECURRENT_INITS:
            raise ValueError(
                f"{type(self).__name__}: recurrent_init must be one of {RECURRENT_INITS}, got {recurrent_init!r}"
            )
        if recurrent_clip is not None and not (isinstance(recurrent_clip, (int, float)) and recurrent_clip > 0):
            raise ValueError(
                f"{type(self).__name__}: recurrent_clip must be None or a number > 0, got {recurrent_clip!r}"
            )
        self.recurrent_init, self.recurrent_clip = recurrent_init, recurrent_clip
        self.in_proj = nn.Linear(input_size, self.num_gates * state_size, bias=True)
        self.a = nn.Parameter(torch.zeros(self.num_diagonals, state_size))
        self.init_extra_weights()

    def init_extra_weights(self, config=None):
        # transformers.initialization skips tensors already loaded from a checkpoint
        init.kaiming_uniform_(self.in_proj.weight, a=math.sqrt(5))
        init.zeros_(self.in_proj.bias)
        D = self.state_size
        if self.recurrent_init == "xlstm":
            a = torch.randn(self.num_diagonals, D) * (2 / math.sqrt(5 * D))
        elif self.recurrent_init == "uniform":
            a = (torch.rand(self.num_diagonals, D) * 2 - 1) * UNIFORM_BOUND
        else:
            a = torch.stack([_xavier_diag(D) for _ in range(self.num_diagonals)])
        init.copy_(self.a, a)

    def input_projection(self, x):
        return self.in_proj(x).unflatten(-1, (self.num_gates, self.state_size))

    def recurrent_params(self):
        # recurrent_clip: |a| <= clip elementwise in every step (the paper's synthetic-task constraint)
        return (self.a,) if self.recurrent_clip is None else (self.a.clamp(-self.recurrent_clip, self.recurrent_clip),)


class ParaGRUCell(GatedDiagonalCell):
    """``z = sig(a_z*h + B_z x + b_z)``, ``r = sig(a_r*h + B_r x + b_r)``, ``c = tanh(a_c*(h*r) + B_c x + b_c)``,
    ``h' = (1-z)*h + z*c`` with diagonal recurrent weights ``a``: a diagonal Jacobian."""

    structure = "diagonal"
    num_gates = 3  # z, r, c
    fused_solver = fused_newton_gru
    scan = cells.gru_scan

    def step(self, h, u, a):
        return cells.gru_step(h, u, a)

    def jacobian(self, h, u, a):
        return cells.gru_jacobian(h, u, a)


class ParaLSTMCell(GatedDiagonalCell):
    """Coupled input-forget gate with peepholes, state ``[c; h]`` per unit (index 0: c, 1: h):
    ``f = sig(a_f*h + B_f x + p_f*c_prev + b_f)``, ``z = tanh(a_z*h + B_z x + b_z)``, ``c = f*c_prev + (1-f)*z``,
    ``o = sig(a_o*h + B_o x + p_o*c + b_o)``, ``h = o*tanh(c)``: 2x2-block Jacobian."""

    structure = "block2"
    num_gates = 3  # f, z, o
    num_diagonals = 5  # recurrent a_f, a_z, a_o; peepholes p_f, p_o
    fused_solver = fused_newton_lstm
    scan = cells.lstm_scan

    def step(self, state, u, a):
        return cells.lstm_step(state, u, a)

    def jacobian(self, state, u, a):
        return cells.lstm_jacobian(state, u, a)


CELLS: dict[str, type[ParallelRNNCell]] = {"gru": ParaGRUCell, "lstm": ParaLSTMCell}


BUILTIN_CELLS = tuple(CELLS)
_VERIFIED: set[type] = set()  # cell classes whose structure and closed-form Jacobian were checked


def check_cell_name(where: str, name, registered: bool = False) -> None:
    """A cell name is a str; with ``registered``, one of :data:`CELLS` (``register_cell`` adds more)."""
    if not isinstance(name, str):
        raise TypeError(
            f"{where}.cell must be a str (a name in {sorted(CELLS)} or given to register_cell), got "
            f"{type(name).__name__} {name!r}"
        )
    if registered and name not in CELLS:
        raise ValueError(f"{where}.cell must be one of {sorted(CELLS)} (register_cell adds more), got {name!r}")


@torch.compiler.disable  # a one-off Python check: never traced into a compiled graph
def verify_cell(cell: "ParallelRNNCell | type[ParallelRNNCell]") -> None:
    """Check once per cell class that ``step`` has the Jacobian structure the class declares and that a closed-form
    ``jacobian`` matches autograd (:func:`check_jacobian_structure` on a tiny fp64 instance with random O(1)
    weights, the global RNG left as it was). Raises ValueError naming the cell, its structure and what differs.
    ``register_cell`` calls it; so does a cell's first parallel forward (built-in and unregistered cells)."""
    cls = cell if isinstance(cell, type) else type(cell)
    if cls in _VERIFIED:
        return
    # random probe weights and states on the CPU (also when a model is built on the meta device); the caller's RNG
    # stream untouched
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        try:
            probe = cls(3, 4)  # the (input_size, state_size) constructor the mixer uses
        except Exception:
            if isinstance(cell, type):
                raise
            probe = copy.deepcopy(cell)  # a cell with another constructor: check a copy of this one
        probe = probe.to("cpu", torch.float64)
        with torch.no_grad():
            for p in probe.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
        check_jacobian_structure(probe, batch=1, seq_len=2)
    _VERIFIED.add(cls)


def register_cell(name: str, cell_class: type[ParallelRNNCell], *, overwrite: bool = False) -> None:
    """Make a user cell available as ``ParaRNNConfig(cell=name)`` (register it before loading such a model).

    The cell is checked first (:func:`verify_cell`): its step must have the declared Jacobian structure and a
    closed-form ``jacobian`` must match autograd, otherwise Newton's solve would train with wrong gradients.
    Built-in names (``"gru"``, ``"lstm"``) cannot be replaced; another class under a registered name needs
    ``overwrite=True``."""
    if not isinstance(name, str):
        raise TypeError(f"register_cell: `name` must be a str, got {type(name).__name__} {name!r}")
    if not name:
        raise ValueError("register_cell: `name` must be a non-empty str")
    if not (isinstance(cell_class, type) and issubclass(cell_class, ParallelRNNCell)):
        raise TypeError(f"register_cell: `cell_class` must be a subclass of ParallelRNNCell, got {cell_class!r}")
    if name in BUILTIN_CELLS and CELLS[name] is not cell_class:
        raise ValueError(
            f"register_cell: {name!r} is a built-in cell ({CELLS[name].__name__}) and cannot be "
            f"replaced; register {cell_class.__name__} under another name"
        )
    # a class redefined under the same module and name (a re-run notebook cell or script) replaces its old self
    redefined = name in CELLS and (CELLS[name].__module__, CELLS[name].__qualname__) == (
        cell_class.__module__,
        cell_class.__qualname__,
    )
    if name in CELLS and CELLS[name] is not cell_class and not (overwrite or redefined):
        raise ValueError(
            f"register_cell: {name!r} is already registered to {CELLS[name].__name__}; pass "
            f"overwrite=True to replace it with {cell_class.__name__}"
        )
    verify_cell(cell_class)
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
    name, structure = type(cell).__name__, cell.structure
    out = cell.step(h, u, *params)
    if not isinstance(out, torch.Tensor) or out.shape != h.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{name} (structure {structure!r}): step must return a state shaped like h_prev {tuple(h.shape)}, got {got}"
        )
    full = torch.autograd.functional.jacobian(lambda s: cell.step(s, u, *params), h)  # shape + shape
    n = batch * seq_len * D * per
    full = full.reshape(n, n)
    block = torch.block_diag(*[torch.ones(per, per, dtype=torch.bool)] * (batch * seq_len * D))
    off = full.masked_fill(block, 0).abs()
    leak = off.max().item()
    if leak > atol:
        i, j = divmod(int(off.argmax()), n)  # flat indices over (batch, time, unit[, component])
        (ri, ui), (rj, uj) = divmod(i // per, D), divmod(j // per, D)  # (batch*time row, unit)
        where = f"d h[unit {ui}] / d h_prev[unit {uj}]"
        if ri != rj:
            where = "a dependence across time steps or batch rows (step must act on each [.., D] row alone)"
        raise ValueError(
            f"{name} declares a {structure!r} Jacobian but its step mixes units: off-structure entry {where} = "
            f"{leak:.3e} (must be 0 "
            f"for {structure!r}: each unit's next state may depend only on its own previous state"
            + ("" if per == 1 else ", its 2 components")
            + "). Declare the right structure or fix step."
        )
    if cell.jacobian is not None:
        blocks = full.reshape(batch * seq_len * D, per, batch * seq_len * D, per).diagonal(dim1=0, dim2=2)
        auto = blocks.permute(2, 0, 1).reshape(*shape[:3], per, per)
        auto = auto[..., 0, 0] if per == 1 else auto
        closed = cell.jacobian(h, u, *params)
        if not isinstance(closed, torch.Tensor) or closed.shape != auto.shape:
            got = tuple(closed.shape) if isinstance(closed, torch.Tensor) else type(closed).__name__
            raise ValueError(
                f"{name}.jacobian (structure {structure!r}) must return shape {tuple(auto.shape)}, got {got}"
            )
        diff = (closed - auto).abs()
        err = diff.max().item()
        if not err <= 1e-6:  # NaN fails too
            k = int(diff.flatten().argmax())
            unit = (k // (per * per)) % D
            raise ValueError(
                f"{name}.jacobian (structure {structure!r}) differs from autograd's d step / d h_prev by {err:.3e} "
                f"(unit {unit}: closed form {closed.flatten()[k].item():.6g}, autograd "
                f"{auto.flatten()[k].item():.6g}); "
                f"fix jacobian or drop it (jacobian = None uses autograd)"
            )


class ParaRNNMixer(nn.Module):
    """The token mixer of the paper's language model: short convolution, RNN cell, swish-gated RMSNorm (per head),
    output projection. Training solves the recurrence in parallel (Newton); decoding runs one cell step per token
    from the state kept in the cache."""

    supports_packed = True  # honours cu_seqlens (packed sequences, batch 1)

    def __init__(
        self,
        hidden_size: int,
        state_size: int | None = None,
        cell: str = "gru",
        num_heads: int = 1,
        use_short_conv: bool = True,
        conv_size: int = 4,
        mode: str = "auto",
        newton_tol: float | None = None,
        newton_max_iter: int = 10,
        newton_on_fail: str = "fallback",
        norm_eps: float = 1e-6,
        conv_init: str = "identity",
        recurrent_init: str = "xavier_clipped",
        recurrent_clip: float | None = None,
        layer_idx: int = 0,
    ):
        super().__init__()
        from .conv import ShortConvolution
        from .norm import GatedRMSNorm

        hidden = hidden_size
        state = hidden if state_size is None else state_size
        pararnn_shape("ParaRNNMixer", hidden, state, num_heads)
        check_cell_name("ParaRNNMixer", cell, registered=True)
        self.layer_idx, self.num_heads, self.state_size = layer_idx, num_heads, state
        self.configure_solver(mode, newton_tol, newton_max_iter, newton_on_fail)
        self.conv = ShortConvolution(hidden, conv_size, init=conv_init) if use_short_conv else None
        cell_class = CELLS[cell]
        if issubclass(cell_class, GatedDiagonalCell):
            self.cell = cell_class(hidden, state, recurrent_init=recurrent_init, recurrent_clip=recurrent_clip)
        else:  # a user cell: (input_size, state_size)
            self.cell = cell_class(hidden, state)
        # checked here rather than at the first forward: a check inside a gradient-checkpointed forward would
        # save tensors that the recomputation does not
        verify_cell(self.cell)
        self.g_proj = nn.Linear(hidden, state, bias=False)
        self.g_norm = GatedRMSNorm(state // num_heads, eps=norm_eps)
        self.o_proj = nn.Linear(state, hidden, bias=False)

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "ParaRNNMixer":
        """Build from a config with ParaRNNConfig's field names (``hidden_size``, ``state_size``, ``cell``, ...,
        ``newton_on_fail``, ``rms_norm_eps``)."""
        return cls(
            hidden_size=config.hidden_size,
            state_size=config.state_size,
            cell=config.cell,
            num_heads=config.num_heads,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            mode=config.mode,
            newton_tol=config.newton_tol,
            newton_max_iter=config.newton_max_iter,
            newton_on_fail=config.newton_on_fail,
            norm_eps=config.rms_norm_eps,
            conv_init=getattr(config, "conv_init", "normal"),  # configs saved before the field: their init
            recurrent_init=getattr(config, "recurrent_init", "xavier_clipped"),
            recurrent_clip=getattr(config, "recurrent_clip", None),
            layer_idx=layer_idx,
        )

    def configure_solver(self, mode: str, newton_tol: float | None, newton_max_iter: int, newton_on_fail: str) -> None:
        """Set how the recurrence is solved (checked here, where the values enter): ``mode`` ``"auto"``
        (:func:`resolve_mode`), ``"parallel"`` or ``"sequential"``, Newton ``tol`` (None: by dtype), ``max_iter`` and
        ``on_fail``. ``ParaRNNModel`` calls this from its config before every forward, so ``model.config.mode = ...``
        applies."""
        check_mode("ParaRNNMixer", mode)
        check_newton_options("ParaRNNMixer", newton_tol, newton_max_iter, newton_on_fail, prefix="newton_")
        self.mode, self.newton_tol = mode, newton_tol
        self.newton_max_iter, self.newton_on_fail = newton_max_iter, newton_on_fail

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]`` (same dtype; the cell runs in its
        parameters' dtype). ``attention_mask`` ``[B, >= T]`` (1 = token, last T columns used); ``cache``: a
        RecurrentCache (``state`` ``[B, D(, 2)]`` and ``conv`` tail under ``layer_idx``); ``cu_seqlens`` (kwargs)."""
        B, T, _ = hidden_states.shape
        x, idx = hidden_states, self.layer_idx
        cu_seqlens = kwargs.get("cu_seqlens")  # packed sequences (batch 1): no state or conv tap crosses a start
        if cu_seqlens is not None and cache is not None:
            raise ValueError("ParaRNNMixer: packed sequences (cu_seqlens) cannot be used with a cache")
        mask = attention_mask[:, -T:] if attention_mask is not None else None
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if self.conv is not None:
            x, tail = self.conv(x, cache.get(idx, "conv") if cache is not None else None, cu_seqlens=cu_seqlens)
            if cache is not None:
                cache.set(idx, "conv", tail)
        h0 = cache.get(idx, "state") if cache is not None else None
        # newton_info: the last parallel solve's NewtonInfo (iterations, fallback), None for sequential solves
        out, states, self.newton_info = self.cell(
            x,
            h0=h0,
            mask=mask,
            mode=self.mode,
            tol=self.newton_tol,
            max_iter=self.newton_max_iter,
            on_fail=self.newton_on_fail,
            return_info=True,
            cu_seqlens=cu_seqlens,
        )
        if cache is not None:
            cache.set(idx, "state", states[:, -1])
        H = self.num_heads
        gate = self.g_proj(hidden_states).reshape(B, T, H, -1)
        out = self.g_norm(out.to(hidden_states.dtype).reshape(B, T, H, -1), gate).reshape(B, T, self.state_size)
        return self.o_proj(out)
