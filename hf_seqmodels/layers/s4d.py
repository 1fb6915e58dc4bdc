"""S4D, the diagonal structured state-space layer (Gu et al., 2022, arXiv 2206.11893), as a token mixer on the shared
linear scans; the HiPPO-LegS initialisation of LSSL / S4 (arXiv 2110.13985, 2111.00396) is an option.

Per channel ``h`` (``H = hidden_size`` channels, ``d_state / 2`` complex states ``n`` each; the other half of the
``d_state`` real-system states are the complex conjugates, hence the ``2 Re`` below)::

    A[h, n]  = -exp(log_A_real[h, n]) + i A_imag[h, n]                     (continuous, Re A < 0)
    dt[h]    = exp(log_dt[h])
    Ab       = exp(dt A),  Bb = (exp(dt A) - 1) / A                          (zero-order hold, B = 1)
    x_t[h,n] = Ab[h,n] x_{t-1}[h,n] + Bb[h,n] u_t[h]                          (complex state)
    y_t[h]   = 2 Re sum_n C[h,n] x_t[h,n] + D[h] u_t[h]
    out_t    = GLU(output_linear(GELU(y_t)))                                 (Linear(H, 2H) = the reference's Conv1d)

which is the reference's causal convolution with ``K_l = 2 Re sum_n C_n Bb_n Ab_n^l`` (state-spaces/s4
``models/s4/s4d.py``), computed here as a recurrence. Initialisation: ``log_dt`` uniform in ``[log dt_min, log
dt_max]``, ``C`` standard complex normal, ``D`` standard normal; ``A`` by ``ssm_init``:

- ``"lin"`` (S4D-Lin): ``A_n = -1/2 + i pi n``.
- ``"legs"`` (S4D-LegS): the ``d_state / 2`` eigenvalues with negative imaginary part of the normal part of the
  HiPPO-LegS matrix (its normal-plus-low-rank form ``A = (-I/2 + S) - P P^T``, ``S`` skew-symmetric), i.e.
  ``-1/2 + i w_n``; ``B`` is LegS's ``B`` in that eigenbasis with its imaginary part clipped to [-2, 2], as s4's
  ``init="legs"``. Only ``C B`` enters the layer, so ``B`` is folded into ``C`` at initialisation.

The complex multiply by ``Ab`` is a 2x2 rotation-scaling block ``[[Re, -Im], [Im, Re]]`` on ``(Re x, Im x)``, so
the state runs on the shared 2x2 block-diagonal scan (``block2_scan``, ParaLSTM's). The other choice, real and
imaginary parts as separate channels of the diagonal scan (``linear_scan``), cannot work: its ``a_t`` is real and
per channel, while a complex multiply mixes the two parts at every step. The block scan runs the exact recurrence in
fp32 (fp64 for fp64 input) with its explicit backward, in ``O(log T)`` parallel steps on the GPU; it holds one 2x2
map per (token, channel, state), so training memory grows as ``B T H d_state`` (the reference's FFT convolution
needs ``B H T`` but no state, and no decoding path of its own).

Padding: ``attention_mask`` (1 = token, anywhere in the row) makes padded positions identity steps (``Ab = 1``,
no input), so each row computes exactly what it computes alone and a cached state is the one after its last real
token. Decoding keeps one fixed-size state per layer: ``"state"`` ``[B, H * d_state / 2, 2]`` (real, imaginary) in
fp32 under ``layer_idx``.

Optimisation: the reference trains ``log_dt``, ``log_A_real`` and ``A_imag`` at ``lr <= 1e-3`` with no weight
decay; they carry the reference's ``_optim`` attribute and are named in ``ssm_params`` (attributes do not survive
code that replaces Parameter objects, names do); :func:`hf_seqmodels.training.s4d_parameter_groups` builds the groups.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels import block2_scan

from .checks import check_choice, check_int, check_number

S4D_INITS = ("lin", "legs")


def s4d_dims(where: str, hidden_size, d_state, ssm_init, dt_min, dt_max) -> None:
    """The one check of an S4D mixer's settings (this layer, ``S4DConfig``)."""
    check_int(where, "hidden_size", hidden_size)
    check_int(where, "d_state", d_state, minimum=2)
    if d_state % 2:
        raise ValueError(f"{where}.d_state must be even (d_state / 2 complex-conjugate pairs), got {d_state}")
    check_choice(where, "ssm_init", ssm_init, S4D_INITS)
    check_number(where, "dt_min", dt_min)
    check_number(where, "dt_max", dt_max)
    if not dt_min <= dt_max:
        raise ValueError(f"{where}: dt_min must be <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


def hippo_legs_diagonal(d_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-LegS: ``(A, B)``, each ``d_state / 2`` complex (fp64). ``A`` are the eigenvalues with negative imaginary
    part of the normal part ``A_LegS + P P^T = -I/2 + S`` of the HiPPO-LegS matrix (``A_nk = -sqrt((2n+1)(2k+1))``
    below the diagonal, ``-(n+1)`` on it; ``P_n = sqrt(n + 1/2)``), in increasing imaginary part; ``B = V^* B_LegS``
    in its eigenbasis ``V`` (``B_LegS,n = sqrt(2n+1)``), imaginary part clipped to [-2, 2], as s4's ``hippo.nplr``."""
    n = torch.arange(d_state, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    S = torch.tril(-0.5 * r[:, None] * r[None, :], diagonal=-1)
    S = S - S.T  # the skew-symmetric part of A_LegS + P P^T (its diagonal is -1/2)
    w, V = torch.linalg.eigh(-1j * S.to(torch.complex128))  # S = V diag(i w) V^*
    keep = torch.argsort(w)[: d_state // 2]  # the negative half of each +-w pair
    A = torch.complex(torch.full_like(w[keep], -0.5), w[keep])
    B = V[:, keep].conj().T @ r.to(torch.complex128)
    return A, torch.complex(B.real, B.imag.clamp(-2.0, 2.0))


def complex_expm1(re: torch.Tensor, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(z) - 1`` for ``z = re + i im``, without the cancellation of ``exp(z) - 1`` at small ``|z|``."""
    return torch.expm1(re) * torch.cos(im) - 2 * torch.sin(im / 2) ** 2, torch.exp(re) * torch.sin(im)


class S4D(nn.Module):
    """Diagonal state-space token mixer (S4D): ``hidden_size`` channels in and out; see the module docstring."""

    supports_packed = True  # honours cu_seqlens (packed sequences, batch 1)
    #: the parameters the reference trains at ``lr <= 1e-3`` without weight decay
    ssm_params = ("log_dt", "log_A_real", "A_imag")

    def __init__(
        self,
        hidden_size: int,
        d_state: int = 64,
        ssm_init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        layer_idx: int = 0,
    ):
        super().__init__()
        s4d_dims("S4D", hidden_size, d_state, ssm_init, dt_min, dt_max)
        self.hidden_size, self.d_state, self.ssm_init, self.layer_idx = hidden_size, d_state, ssm_init, layer_idx
        self.dt_min, self.dt_max = dt_min, dt_max
        H, N2 = hidden_size, d_state // 2
        self.log_dt = nn.Parameter(torch.empty(H))
        self.log_A_real = nn.Parameter(torch.empty(H, N2))
        self.A_imag = nn.Parameter(torch.empty(H, N2))
        self.C = nn.Parameter(torch.empty(H, N2, 2))  # (real, imaginary), as the reference's view_as_real
        self.D = nn.Parameter(torch.empty(H))
        self.output_linear = nn.Linear(H, 2 * H)  # the reference's Conv1d(H, 2H, kernel_size=1), then GLU
        self.init_extra_weights()

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "S4D":
        """Build from a config with S4DConfig's field names (``hidden_size``, ``d_state``, ``ssm_init``,
        ``dt_min``, ``dt_max``)."""
        return cls(
            config.hidden_size,
            d_state=config.d_state,
            ssm_init=config.ssm_init,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            layer_idx=layer_idx,
        )

    def init_extra_weights(self, config=None):
        """The reference's init of ``log_dt``, ``A``, ``C`` and ``D`` (module docstring); ``output_linear`` is left
        to the model's generic Linear init. ``transformers.initialization`` skips tensors loaded from a checkpoint."""
        H, N2 = self.hidden_size, self.d_state // 2
        dev = self.log_dt.device
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        init.copy_(self.log_dt, torch.rand(H, device=dev) * (hi - lo) + lo)
        C = torch.randn(H, N2, dtype=torch.complex64, device=dev)
        if self.ssm_init == "lin":
            imag = math.pi * torch.arange(N2, dtype=torch.float32, device=dev)
        else:
            A, B = hippo_legs_diagonal(self.d_state)
            imag = A.imag.to(device=dev, dtype=torch.float32)
            C = C * B.to(device=dev, dtype=torch.complex64)
        init.copy_(self.log_A_real, torch.full((H, N2), math.log(0.5), device=dev))
        init.copy_(self.A_imag, imag.expand(H, N2))
        init.copy_(self.C, torch.view_as_real(C))
        init.normal_(self.D)
        for name in self.ssm_params:
            getattr(self, name)._optim = {"weight_decay": 0.0}

    def discretize(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-order hold: the per-step maps ``[H * d_state / 2, 2, 2]`` (``Ab`` as a rotation-scaling block) and
        ``Bb`` ``[H, d_state / 2, 2]`` (real, imaginary), in ``dtype``."""
        dt = torch.exp(self.log_dt.to(dtype))[:, None]
        a_re, a_im = -torch.exp(self.log_A_real.to(dtype)), self.A_imag.to(dtype)
        m_re, m_im = complex_expm1(dt * a_re, dt * a_im)  # exp(dt A) - 1
        den = a_re**2 + a_im**2  # |A|^2 > 0: Re A < 0
        Bb = torch.stack(((m_re * a_re + m_im * a_im) / den, (m_im * a_re - m_re * a_im) / den), -1)
        p_re, p_im = m_re + 1, m_im  # exp(dt A)
        Ab = torch.stack((torch.stack((p_re, -p_im), -1), torch.stack((p_im, p_re), -1)), -2)
        return Ab.reshape(-1, 2, 2), Bb

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` (any float dtype; the state space runs in fp32, fp64 for fp64
        input) -> ``[B, T, hidden_size]`` in the input dtype. ``attention_mask`` ``[B, >= T]`` (1 = token; its last
        T columns are used); ``cache``: a RecurrentCache (``"state"`` under ``layer_idx``)."""
        Bsz, T, H = hidden_states.shape
        if H != self.hidden_size:
            raise ValueError(f"S4D: hidden_states must be [B, T, {self.hidden_size}], got {tuple(hidden_states.shape)}")
        cu_seqlens = kwargs.get("cu_seqlens")  # packed sequences (batch 1): the state restarts at each start
        if cu_seqlens is not None and cache is not None:
            raise ValueError("S4D: packed sequences (cu_seqlens) cannot be used with a cache")
        cdt = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        u = hidden_states.to(cdt)
        Ab, Bb = self.discretize(cdt)
        D2 = Ab.shape[0]
        A_t = Ab.expand(Bsz, T, D2, 2, 2)
        if attention_mask is not None:
            keep = attention_mask[:, -T:].to(torch.bool)
            u = u * keep[..., None].to(cdt)
            A_t = torch.where(keep[:, :, None, None, None], A_t, torch.eye(2, dtype=cdt, device=u.device))
        b = (Bb * u[..., None, None]).reshape(Bsz, T, D2, 2)  # [B, T, H, N/2, 2] -> [B, T, H*N/2, 2]
        state = cache.get(self.layer_idx, "state") if cache is not None else None
        x = block2_scan(A_t, b, initial_state=state, cu_seqlens=cu_seqlens)
        if cache is not None:
            cache.set(self.layer_idx, "state", x[:, -1])
        C = self.C.to(cdt)
        x = x.reshape(Bsz, T, H, self.d_state // 2, 2)
        y = 2 * (x[..., 0] * C[..., 0] - x[..., 1] * C[..., 1]).sum(-1) + self.D.to(cdt) * u
        y = F.gelu(y).to(hidden_states.dtype)
        return F.glu(self.output_linear(y), dim=-1)
