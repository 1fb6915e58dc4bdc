"""Mamba-2 (SSD, Dao & Gu, 2024) token mixer on the shared gated-linear-attention kernels.

Per token, with ``d_inner = expand * hidden_size``, ``H = d_inner / head_dim`` heads, ``G = n_groups`` groups and
``N = d_state``::

    z, xBC, dt_raw = split(in_proj(u), [d_inner, d_inner + 2*G*N, H])
    x, B, C        = split(silu(causal_depthwise_conv(xBC) + conv_bias), [d_inner, G*N, G*N])
    dt             = clamp(softplus(dt_raw + dt_bias), *time_step_limit)           # [H]
    A              = -exp(A_log)                                                    # [H], negative
    S_t[h]         = exp(dt_t[h] * A[h]) * S_{t-1}[h] + B_t[grp(h)]^T (dt_t[h] * x_t[h])   # [N, head_dim]
    y_t[h]         = C_t[grp(h)] S_t[h] + D[h] * x_t[h]
    out            = out_proj(norm.weight * group_rmsnorm(y * silu(z)))             # norm per group of d_inner/G

(``grp(h) = h // (H / G)``: heads are split into G consecutive blocks sharing B and C.) This is gated linear
attention with one gate value per head shared by all key dimensions, so the shared kernels' scalar-gate path
(``g`` ``[B, T, H]``) computes it::

    q = C, k = B (expanded from groups to heads), v = dt * x, g = dt * A (one per head), scale = 1

``chunk_gla`` runs training and prefill (also a chunk of tokens after a cached state), ``fused_recurrent_gla`` a
single decoding step. The SSM runs in fp32 (fp64 when the input is fp64), as transformers does.

Parameters carry transformers' ``Mamba2Mixer`` names, shapes and semantics (``in_proj``, ``conv1d``, ``dt_bias``,
``A_log``, ``D``, ``norm.weight``, ``out_proj``), so a state dict copies across 1:1 in both directions.

Padding: ``attention_mask`` is the 2-D mask of the current tokens (1 = real). Padded positions get a zero input,
a zero conv input, and ``g = 0``, ``v = 0`` so they leave the recurrent state untouched: with left or right padding
a row computes exactly what it computes alone, and the cached state (``ssm_state`` and the ``conv`` tail) is the
row's state after its last real token.

Cache entries under ``layer_idx``: ``"conv"`` ``[B, conv_dim, d_conv - 1]`` (the last conv inputs) and
``"ssm_state"`` ``[B, H, d_state, head_dim]`` fp32 (the GLA layout ``[B, H, K, V]``; transformers keeps the
transpose ``[B, H, head_dim, d_state]``).

No weight decay: ``A_log``, ``D`` and ``dt_bias`` carry the attribute ``_no_weight_decay = True`` (the mamba_ssm
convention), and their names are listed in the class attribute ``no_weight_decay_params``, for optimizers that
build parameter groups (the attribute does not survive code that replaces Parameter objects, the names do).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels import chunk_gla, context_parallel, fused_recurrent_gla

from .checks import check_int, check_number


class Mamba2GatedRMSNorm(nn.Module):
    """``weight * rmsnorm(x * silu(z))`` with the mean square taken per group of ``group_size`` channels, in fp32
    (transformers' ``MambaRMSNormGated``, gate applied before normalizing)."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size, self.variance_epsilon = group_size, eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x, gate ``[..., hidden_size]`` -> ``[..., hidden_size]`` in fp32 (fp64 for fp64 input)."""
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        h = x.to(dt) * F.silu(gate.to(dt))
        hg = h.unflatten(-1, (-1, self.group_size))
        hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hg.flatten(-2)


def _positive_int(name, value):
    check_int("Mamba2Mixer", name, value)


class Mamba2Mixer(nn.Module):
    """Mamba-2 token mixer (see the module docstring for the equations and the kernel mapping).

    Arguments follow transformers' ``Mamba2Config``: ``d_state`` = ``state_size``, ``d_conv`` = ``conv_kernel``,
    ``n_groups``, ``head_dim``, ``expand``, ``conv_bias`` = ``use_conv_bias``, ``proj_bias`` = ``use_bias``,
    ``norm_eps`` = ``layer_norm_epsilon``, ``dt_min``/``dt_max``/``dt_init_floor`` = ``time_step_min``/``_max``/
    ``_floor``, ``time_step_limit``. ``chunk_size`` is kept for config parity only: the shared kernel picks its
    own tiling (the result does not depend on it).
    """

    no_weight_decay_params = ("A_log", "D", "dt_bias")

    def __init__(
        self,
        hidden_size: int,
        d_state: int = 128,
        expand: int = 2,
        head_dim: int = 64,
        n_groups: int = 1,
        d_conv: int = 4,
        chunk_size: int = 256,
        norm_eps: float = 1e-5,
        conv_bias: bool = True,
        proj_bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        time_step_limit: tuple[float, float] = (0.0, float("inf")),
        layer_idx: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("hidden_size", hidden_size),
            ("d_state", d_state),
            ("head_dim", head_dim),
            ("n_groups", n_groups),
            ("d_conv", d_conv),
            ("chunk_size", chunk_size),
        ):
            _positive_int(name, value)
        check_number("Mamba2Mixer", "expand", expand)
        d_inner = int(expand * hidden_size)
        if d_inner != expand * hidden_size or d_inner % head_dim:
            raise ValueError(
                f"Mamba2Mixer: `head_dim`={head_dim} must divide d_inner = expand*hidden_size = "
                f"{expand}*{hidden_size} (an integer)"
            )
        num_heads = d_inner // head_dim
        if num_heads % n_groups:
            raise ValueError(
                f"Mamba2Mixer: `n_groups`={n_groups} must divide the number of heads {num_heads} "
                f"(= expand*hidden_size/head_dim)"
            )
        if not (0 < dt_min <= dt_max):
            raise ValueError(
                f"Mamba2Mixer: `dt_min`/`dt_max` must satisfy 0 < dt_min <= dt_max, got {dt_min}, {dt_max}"
            )
        if not dt_init_floor > 0:
            raise ValueError(f"Mamba2Mixer: `dt_init_floor` must be > 0, got {dt_init_floor}")
        if len(tuple(time_step_limit)) != 2 or not (0.0 <= time_step_limit[0] < time_step_limit[1]):
            raise ValueError(
                f"Mamba2Mixer: `time_step_limit` must be (low, high) with 0 <= low < high, got {time_step_limit}"
            )
        if not norm_eps > 0:
            raise ValueError(f"Mamba2Mixer: `norm_eps` must be > 0, got {norm_eps}")

        self.hidden_size, self.d_state, self.expand, self.head_dim = hidden_size, d_state, expand, head_dim
        self.n_groups, self.d_conv, self.chunk_size, self.layer_idx = n_groups, d_conv, chunk_size, layer_idx
        self.d_inner, self.num_heads = d_inner, num_heads
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.time_step_limit = (float(time_step_limit[0]), float(time_step_limit[1]))
        self.conv_dim = d_inner + 2 * n_groups * d_state

        self.in_proj = nn.Linear(hidden_size, d_inner + self.conv_dim + num_heads, bias=proj_bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.D = nn.Parameter(torch.empty(num_heads))
        self.norm = Mamba2GatedRMSNorm(d_inner, group_size=d_inner // n_groups, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, hidden_size, bias=proj_bias)
        self.init_extra_weights()

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "Mamba2Mixer":
        """Build from a transformers ``Mamba2Config`` (or any config with its field names)."""
        return cls(
            config.hidden_size,
            d_state=config.state_size,
            expand=config.expand,
            head_dim=config.head_dim,
            n_groups=config.n_groups,
            d_conv=config.conv_kernel,
            chunk_size=config.chunk_size,
            norm_eps=config.layer_norm_epsilon,
            conv_bias=config.use_conv_bias,
            proj_bias=config.use_bias,
            dt_min=config.time_step_min,
            dt_max=config.time_step_max,
            dt_init_floor=config.time_step_floor,
            time_step_limit=tuple(config.time_step_limit),
            layer_idx=layer_idx,
        )

    def init_extra_weights(self, config=None):
        """transformers' Mamba-2 init: ``A = 1..H`` (``A_log = log A``), ``D = 1``, ``dt_bias = softplus^-1(dt)``
        with ``dt`` log-uniform in ``[dt_min, dt_max]`` floored at ``dt_init_floor``, norm weight 1, conv weight
        Kaiming-uniform and conv bias 0 (transformers' ``Mamba2PreTrainedModel._init_weights`` re-does the conv
        after the generic per-module init; a model's ``_init_weights`` visits this module after its children, so
        this overrides the generic normal(initializer_range) conv init too). ``in_proj``/``out_proj`` are left to
        the model's generic Linear init. Uses ``transformers.initialization``, which skips tensors loaded from a
        checkpoint; works on the meta device."""
        init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        if self.conv1d.bias is not None:
            init.zeros_(self.conv1d.bias)
        dev = self.A_log.device
        init.copy_(self.A_log, torch.log(torch.arange(1, self.num_heads + 1, device=dev, dtype=torch.float32)))
        init.ones_(self.D)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(self.num_heads, device=dev) * (hi - lo) + lo).clamp(min=self.dt_init_floor)
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        init.ones_(self.norm.weight)
        for name in self.no_weight_decay_params:
            getattr(self, name)._no_weight_decay = True

    def _conv(self, xBC, tail, last_real):
        """Causal depthwise conv + SiLU over ``xBC`` [B, T, conv_dim] after ``tail`` [B, conv_dim, d_conv-1].
        Returns the output and the new tail: the ``d_conv - 1`` inputs ending at each row's last real token."""
        width = self.d_conv - 1
        x = xBC.transpose(1, 2)
        if tail is None and width and context_parallel.active():  # the sequence split over ranks: a halo
            if x.shape[-1] < width:
                raise ValueError(
                    f"Mamba2Mixer under context_parallel: this rank's slice has {x.shape[-1]} positions, fewer than "
                    f"the convolution's {width} earlier taps (d_conv - 1); give every rank >= {width} positions"
                )
            tail = context_parallel.exchange_halo(x[..., x.shape[-1] - width :])
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], width)
        xp = torch.cat([tail.to(x.dtype), x], dim=-1)
        w = self.conv1d.weight
        y = F.conv1d(
            xp, w.to(x.dtype), None if self.conv1d.bias is None else self.conv1d.bias.to(x.dtype), groups=self.conv_dim
        )
        if last_real is None:
            new_tail = xp[..., xp.shape[-1] - width :]
        else:  # xp index of the first tail element: (last real token + 1) in x coordinates, 0 when none
            idx = (last_real[:, None, None] + torch.arange(width, device=x.device)).expand(-1, x.shape[1], -1)
            new_tail = xp.gather(-1, idx)
        return F.silu(y).transpose(1, 2), new_tail

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` (any float dtype; the SSM runs in fp32, fp64 for fp64 input) ->
        ``[B, T, hidden_size]`` in the input dtype. ``attention_mask`` ``[B, >= T]`` (1 = token, last T columns
        used); ``cache``: a RecurrentCache (``conv`` and ``ssm_state`` under ``layer_idx``)."""
        Bsz, T, _ = hidden_states.shape
        H, P, N, G = self.num_heads, self.head_dim, self.d_state, self.n_groups
        mask = None
        u = hidden_states
        if attention_mask is not None:
            mask = attention_mask[:, -T:].to(u.dtype)
            u = u * mask[..., None]
        zxbcdt = self.in_proj(u)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, H], dim=-1)

        idx = self.layer_idx
        last_real = None
        if mask is not None:
            xBC = xBC * mask[..., None]
            if cache is not None:
                pos = torch.arange(1, T + 1, device=mask.device, dtype=torch.long)
                last_real = (pos * (mask > 0)).amax(-1)
        tail = cache.get(idx, "conv") if cache is not None else None
        xBC, new_tail = self._conv(xBC, tail, last_real)
        if cache is not None:
            cache.set(idx, "conv", new_tail)

        cdt = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        x, Bm, Cm = xBC.to(cdt).split([self.d_inner, G * N, G * N], dim=-1)
        dt = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt)).clamp(*self.time_step_limit)  # [B, T, H]
        A = -torch.exp(self.A_log.to(cdt))
        g = dt * A
        x = x.reshape(Bsz, T, H, P)
        v = x * dt[..., None]
        if mask is not None:
            keep = mask.to(cdt)[..., None]
            g = g * keep
            v = v * keep[..., None]
        rep = H // G
        k = Bm.reshape(Bsz, T, G, N).repeat_interleave(rep, dim=2)
        q = Cm.reshape(Bsz, T, G, N).repeat_interleave(rep, dim=2)

        state = cache.get(idx, "ssm_state") if cache is not None else None
        op = fused_recurrent_gla if (state is not None and T == 1) else chunk_gla
        y, final = op(q, k, v, g, scale=1.0, initial_state=state, output_final_state=cache is not None)
        if cache is not None:
            cache.set(idx, "ssm_state", final)
        y = y + self.D.to(cdt)[:, None] * x
        y = self.norm(y.reshape(Bsz, T, self.d_inner), z)
        return self.out_proj(y.to(hidden_states.dtype))
