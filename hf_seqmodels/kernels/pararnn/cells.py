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


def _scan_setup(u, h0, mask, params, state_shape):
    """Time-major copies for a step loop: u ``[T, B, 3, D]``, mask ``[T, B, 1]`` (or None), the first state, an
    empty output ``[T, B, ...]``, in the dtype the step-by-step solve would compute in."""
    B, T, _, D = u.shape
    dtype = u.dtype
    for t in (h0, *params):
        dtype = dtype if t is None else torch.promote_types(dtype, t.dtype)
    ut = u.to(dtype).transpose(0, 1).contiguous()
    mt = None if mask is None else mask.to(dtype).transpose(0, 1).unsqueeze(-1).contiguous()
    h = u.new_zeros(B, *state_shape, dtype=dtype) if h0 is None else h0.to(dtype)
    return ut, mt, h, u.new_empty(T, B, *state_shape, dtype=dtype)


@torch.no_grad()
def gru_scan(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None, mask: torch.Tensor | None = None):
    """ParaGRU's states over a whole sequence, step by step, without autograd: the fast path of a solve that needs
    no gradient (fewer, fused ops per step than :func:`gru_step` through the generic loop). ``u`` ``[B, T, 3, D]``,
    ``h0`` ``[B, D]`` (None: zeros), ``mask`` ``[B, T]`` (1 = token, 0 = padding: the state carries over) ->
    ``[B, T, D]``."""
    ut, mt, h, out = _scan_setup(u, h0, mask, (a,), (u.shape[-1],))
    # per-step tensors indexed once up front: at batch 1 the indexing, not the maths, is most of a step's cost
    a_z, a_r, a_c = a.to(h.dtype).unbind(0)
    masks = [None] * ut.shape[0] if mt is None else mt.unbind(0)
    for t, (u_z, u_r, u_c) in enumerate(zip(*ut.unbind(2))):
        z = torch.sigmoid(torch.addcmul(u_z, a_z, h))
        r = torch.sigmoid(torch.addcmul(u_r, a_r, h))
        c = torch.tanh(torch.addcmul(u_c, a_c, h * r))
        h = torch.lerp(h, c, z if masks[t] is None else z * masks[t])  # (1 - z) h + z c
        out[t] = h
    return out.transpose(0, 1)


@torch.no_grad()
def lstm_scan(u: torch.Tensor, a: torch.Tensor, s0: torch.Tensor | None = None, mask: torch.Tensor | None = None):
    """ParaLSTM's states over a whole sequence, step by step, without autograd (as :func:`gru_scan`): ``u``
    ``[B, T, 3, D]``, ``s0`` ``[B, D, 2]`` = (c, h) (None: zeros), ``mask`` ``[B, T]`` -> ``[B, T, D, 2]``."""
    ut, mt, s, _ = _scan_setup(u, s0, mask, (a,), (u.shape[-1], 2))
    out = s.new_empty(ut.shape[0], s.shape[0], 2, s.shape[1])  # (c, h) as rows: one contiguous write per step
    c, h = s[..., 0], s[..., 1]
    a_f, a_z, a_o, p_f, p_o = a.to(s.dtype).unbind(0)
    masks = [None] * ut.shape[0] if mt is None else mt.unbind(0)
    for t, (u_f, u_z, u_o) in enumerate(zip(*ut.unbind(2))):
        f = torch.sigmoid(torch.addcmul(torch.addcmul(u_f, a_f, h), p_f, c))
        z = torch.tanh(torch.addcmul(u_z, a_z, h))
        c_new = torch.lerp(z, c, f)  # f c + (1 - f) z
        o = torch.sigmoid(torch.addcmul(torch.addcmul(u_o, a_o, h), p_o, c_new))
        h_new = o * torch.tanh(c_new)
        if masks[t] is not None:
            c_new, h_new = torch.lerp(c, c_new, masks[t]), torch.lerp(h, h_new, masks[t])
        c, h = c_new, h_new
        torch.stack((c, h), 1, out=out[t])
    return out.permute(1, 0, 3, 2)


#: name -> (step, jacobian, structure, number of diagonal weight rows)
CELLS = {"gru": (gru_step, gru_jacobian, "diagonal", 3), "lstm": (lstm_step, lstm_jacobian, "block2", 5)}
