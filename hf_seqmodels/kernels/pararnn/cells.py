"""The built-in ParaRNN cells' maths in PyTorch, written once: ``ParaGRUCell``/``ParaLSTMCell`` (hf_seqmodels.layers)
and the fused solver's PyTorch backend (``fused_triton``) both call these. The Triton kernels carry their own
elementwise copy (``_gru_cell``/``_lstm_cell`` there), checked against these by the tests.

All functions are elementwise over leading dims. ``u`` ``[..., 3, D]``: the gate input projections (GRU rows z, r, c;
LSTM rows f, z, o). ``a``: the diagonal weights ``[3, D]`` (GRU: a_z, a_r, a_c) or ``[5, D]`` (LSTM: a_f, a_z, a_o,
peepholes p_f, p_o). State: ``[..., D]`` (GRU) or ``[..., D, 2]`` = (c, h) (LSTM). Any float dtype.
"""
from __future__ import annotations

import torch


def _gru_gates(h, u, a):
    z = torch.sigmoid(a[0] * h + u[..., 0, :])
    r = torch.sigmoid(a[1] * h + u[..., 1, :])
    c = torch.tanh(a[2] * (h * r) + u[..., 2, :])
    return z, r, c


def gru_step(h: torch.Tensor, u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """ParaGRU: ``z = sig(a_z*h + u_z)``, ``r = sig(a_r*h + u_r)``, ``c = tanh(a_c*(h*r) + u_c)``,
    ``h' = (1-z)*h + z*c``. ``h`` ``[..., D]`` -> ``[..., D]``."""
    z, _, c = _gru_gates(h, u, a)
    return (1 - z) * h + z * c


def gru_jacobian(h: torch.Tensor, u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``d gru_step / d h`` (diagonal): ``[..., D]``."""
    z, r, c = _gru_gates(h, u, a)
    dr = r * (1 - r) * a[1]
    return (1 - z) + (c - h) * z * (1 - z) * a[0] + z * (1 - c * c) * a[2] * (r + h * dr)


def _lstm_gates(s, u, a):
    sc, sh = s[..., 0], s[..., 1]
    f = torch.sigmoid(a[0] * sh + u[..., 0, :] + a[3] * sc)
    z = torch.tanh(a[1] * sh + u[..., 1, :])
    c = f * sc + (1 - f) * z
    o = torch.sigmoid(a[2] * sh + u[..., 2, :] + a[4] * c)
    return sc, f, z, c, o


def lstm_step(s: torch.Tensor, u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """ParaLSTM (coupled input-forget gate, peepholes): ``f = sig(a_f*h + u_f + p_f*c_prev)``,
    ``z = tanh(a_z*h + u_z)``, ``c = f*c_prev + (1-f)*z``, ``o = sig(a_o*h + u_o + p_o*c)``, ``h = o*tanh(c)``.
    ``s`` ``[..., D, 2]`` = (c, h) -> ``[..., D, 2]``."""
    _, _, _, c, o = _lstm_gates(s, u, a)
    return torch.stack([c, o * torch.tanh(c)], -1)


def lstm_jacobian(s: torch.Tensor, u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``d lstm_step / d s`` in 2x2 blocks ``[..., D, 2, 2]``, ``J[..., i, j] = d out_i / d s_j`` (0: c, 1: h)."""
    sc, f, z, c, o = _lstm_gates(s, u, a)
    df = f * (1 - f)
    j00 = f + (sc - z) * df * a[3]
    j01 = (sc - z) * df * a[0] + (1 - f) * (1 - z * z) * a[1]
    tc = torch.tanh(c)
    do, dtc = o * (1 - o) * tc, o * (1 - tc * tc)
    j10 = (do * a[4] + dtc) * j00
    j11 = do * (a[2] + a[4] * j01) + dtc * j01
    return torch.stack([torch.stack([j00, j01], -1), torch.stack([j10, j11], -1)], -2)


#: name -> (step, jacobian, structure, number of diagonal weight rows)
CELLS = {"gru": (gru_step, gru_jacobian, "diagonal", 3), "lstm": (lstm_step, lstm_jacobian, "block2", 5)}
