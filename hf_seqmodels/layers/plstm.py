"""pLSTM token mixer, one-dimensional (Poeppel et al., 2025, "pLSTM: parallelizable Linear Source Transition Mark
networks", arXiv 2506.11997; reference ml-jku/plstm ``torch/plstm_1d.py``), on the chunked kernel
:func:`hf_seqmodels.kernels.plstm.chunk_plstm`."""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from hf_seqmodels.kernels.plstm import chunk_plstm

from .checks import check_choice, check_int, check_number
from .conv import ShortConvolution
from .norm import GatedRMSNorm

#: P-mode: ``T = A / (PMODE_ALPHA + column sums of |A|)`` (the reference's ``_pmode_transition_normalization``)
PMODE_ALPHA = 0.5
#: initial diagonal of the transition logits: P-mode 10 (the reference's init, T_ii ~ 10 / 10.5), D-mode
#: atanh(0.96) ~ 2 (T_ii = tanh(2) ~ 0.96)
TRANSITION_DIAG_INIT = {"P": 10.0, "D": 2.0}
TRANSITION_MODES = ("P", "D")


def plstm_dims(where: str, hidden_size, num_heads, head_k_dim, head_v_dim, jt, jv, jo) -> None:
    """The one check of a pLSTM mixer's shape (this layer, ``PLSTMConfig``)."""
    for name, value in (
        ("hidden_size", hidden_size),
        ("num_heads", num_heads),
        ("head_k_dim", head_k_dim),
        ("head_v_dim", head_v_dim),
        ("transition_dim", jt),
        ("source_dim", jv),
        ("mark_dim", jo),
    ):
        check_int(where, name, value)


def plstm_transition(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Stabilised transition matrices ``[..., JT, JT]`` (new channel i, old channel j) from the transition logits.

    * ``"P"`` (propagation): logits ``[..., JT, JT]``; ``T[i, j] = A[i, j] / (alpha + sum_i' |A[i', j]|)``, so the
      transitions out of every incoming channel sum to less than one in absolute value (the paper's P-mode
      condition; ``||T||_1 < 1``, no product of them grows) while T stays dense and of either sign.
    * ``"D"`` (diffusion): logits ``[..., JT]``; ``T = diag(tanh(a))``. D-mode reduces the line graph to a multitree
      and bounds each remaining transition by one (``tanh``, as the reference); on a 1-D chain of ``JT`` channels
      the multitree is one predecessor per channel, the diagonal.
    """
    if mode == "P":
        return logits / (PMODE_ALPHA + logits.abs().sum(-2, keepdim=True))
    return torch.diag_embed(torch.tanh(logits))


class PLSTM(nn.Module):
    """pLSTM-1D per head: a state of ``JT`` fast-weight matrices ``C_t [JT, K, V]`` mixed by a dense transition,

    ``C_t = T_t C_{t-1} + S_t (k_t v_t^T)``,  ``o_t = scale (M_t q_t^T C_{t-1} + (q_t . k_t) D_t v_t)``,

    with data-dependent gates from ``x_t``: source ``S_t [JT, JV]``, mark ``M_t [JO, JT]``, direct ``D_t [JO, JV]``
    (sigmoid) and transition ``T_t [JT, JT]`` stabilised in P- or D-mode (:func:`plstm_transition`); values carry
    ``JV`` channels (``v_t [JV, V]``), the output ``JO`` (``[JO, V]``); keys and queries one (the reference's
    ``JK = JQ = 1``). Then a swish-gated RMSNorm per head over ``JO * V`` and the output projection, and optional
    short convolutions on q, k, v, as in GLA.

    Against the reference's 1-D layer (``pLSTM1DLayer``): the same recurrence and output (``QK_scale = K^-1/2``);
    sigmoid gates as its default ``logsigmoid`` activation, biases started at 0 instead of -5; its transitions are
    bounded by an orthogonal x tanh-eigenvalue x orthogonal product (``LongRangeTransitionLayer``), not offered here:
    P- and D-mode are the bounds of the reference's DAG layer (``pLSTMGraphLayer``) applied to the ``JT`` channels.
    Not carried over: its passthrough branch and the convolution in front of the gates; the multi-head RMSNorm is
    GLA's swish-gated one.

    Left padding: pass the 2-D attention mask; padded positions get zero keys (so add nothing to the state, which is
    zero before the first token) and each row computes exactly what it would alone.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 4,
        head_k_dim: int = 16,
        head_v_dim: int = 16,
        transition_dim: int = 4,
        source_dim: int = 1,
        mark_dim: int = 1,
        transition_mode: str = "P",
        use_short_conv: bool = False,
        conv_size: int = 4,
        chunk_size: int = 32,
        norm_eps: float = 1e-6,
        layer_idx: int = 0,
    ):
        super().__init__()
        where = "PLSTM"
        plstm_dims(where, hidden_size, num_heads, head_k_dim, head_v_dim, transition_dim, source_dim, mark_dim)
        check_choice(where, "transition_mode", transition_mode, TRANSITION_MODES)
        check_int(where, "chunk_size", chunk_size)
        check_number(where, "norm_eps", norm_eps)
        if use_short_conv:
            check_int(where, "conv_size", conv_size)
        H, K, V, JT, JV, JO = num_heads, head_k_dim, head_v_dim, transition_dim, source_dim, mark_dim
        self.num_heads, self.head_k_dim, self.head_v_dim = H, K, V
        self.jt, self.jv, self.jo = JT, JV, JO
        self.transition_mode, self.chunk_size, self.layer_idx = transition_mode, chunk_size, layer_idx
        jtt = JT * JT if transition_mode == "P" else JT
        self.gate_sizes = [JT * JV, jtt, JO * JT, JO * JV]  # source, transition, mark, direct logits per head
        self.q_proj = nn.Linear(hidden_size, H * K, bias=False)
        self.k_proj = nn.Linear(hidden_size, H * K, bias=False)
        self.v_proj = nn.Linear(hidden_size, H * JV * V, bias=False)
        self.gate_proj = nn.Linear(hidden_size, H * sum(self.gate_sizes), bias=True)
        self.g_proj = nn.Linear(hidden_size, H * JO * V, bias=False)
        self.use_short_conv = use_short_conv
        if use_short_conv:
            self.q_conv = ShortConvolution(H * K, conv_size)
            self.k_conv = ShortConvolution(H * K, conv_size)
            self.v_conv = ShortConvolution(H * JV * V, conv_size)
        self.g_norm = GatedRMSNorm(JO * V, eps=norm_eps)
        self.o_proj = nn.Linear(H * JO * V, hidden_size, bias=False)
        self.init_extra_weights()

    def init_extra_weights(self, config=None) -> None:
        """Gate biases (the models' ``_init_weights`` zeroes biases first, then calls this): 0 for source, mark,
        direct (sigmoid 1/2); the transition logits' diagonal at :data:`TRANSITION_DIAG_INIT` (a slowly decaying
        identity), off-diagonal 0."""
        bias = torch.zeros(self.num_heads, sum(self.gate_sizes))
        a, n = self.gate_sizes[0], self.gate_sizes[1]
        diag = bias[:, a : a + n]
        if self.transition_mode == "P":
            diag = diag.view(self.num_heads, self.jt, self.jt).diagonal(dim1=-2, dim2=-1)
        diag.fill_(TRANSITION_DIAG_INIT[self.transition_mode])
        init.copy_(self.gate_proj.bias, bias.flatten())

    @classmethod
    def from_config(cls, config, layer_idx: int = 0) -> "PLSTM":
        """Build from a config with PLSTMConfig's field names."""
        return cls(
            hidden_size=config.hidden_size,
            num_heads=config.num_heads,
            head_k_dim=config.head_k_dim,
            head_v_dim=config.head_v_dim,
            transition_dim=config.transition_dim,
            source_dim=config.source_dim,
            mark_dim=config.mark_dim,
            transition_mode=config.transition_mode,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            chunk_size=config.chunk_size,
            norm_eps=config.rms_norm_eps,
            layer_idx=layer_idx,
        )

    def gates(self, x: torch.Tensor):
        """``x [B, T, hidden]`` -> source, transition, mark, direct (shapes as :func:`chunk_plstm` takes them),
        in float32 at least."""
        B, T, _ = x.shape
        H, JT, JV, JO = self.num_heads, self.jt, self.jv, self.jo
        logits = self.gate_proj(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).view(B, T, H, -1)
        s, a, m, d = logits.split(self.gate_sizes, dim=-1)
        a = a.reshape(B, T, H, JT, JT) if self.transition_mode == "P" else a
        return (
            torch.sigmoid(s).reshape(B, T, H, JT, JV),
            plstm_transition(a, self.transition_mode),
            torch.sigmoid(m).reshape(B, T, H, JO, JT),
            torch.sigmoid(d).reshape(B, T, H, JO, JV),
        )

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        """hidden_states ``[B, T, hidden_size]`` -> ``[B, T, hidden_size]``, same dtype. ``attention_mask``
        ``[B, >= T]`` (1 = token; its last T columns are used); ``cache``: a RecurrentCache (state
        ``[B, H, JT, K, V]`` fp32 and conv tails under ``layer_idx``)."""
        if kwargs.get("cu_seqlens") is not None:
            raise ValueError("PLSTM: packed sequences (cu_seqlens) are not supported; pass padded batches")
        B, T, _ = hidden_states.shape
        x = hidden_states
        if attention_mask is not None:
            x = x * attention_mask[:, -T:, None].to(x.dtype)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        idx = self.layer_idx
        if self.use_short_conv:
            tails = [cache.get(idx, n) if cache is not None else None for n in ("conv_q", "conv_k", "conv_v")]
            q, tq = self.q_conv(q, tails[0])
            k, tk = self.k_conv(k, tails[1])
            v, tv = self.v_conv(v, tails[2])
            if cache is not None:
                cache.set(idx, "conv_q", tq), cache.set(idx, "conv_k", tk), cache.set(idx, "conv_v", tv)
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        s, t, m, d = self.gates(x)
        q, k = q.reshape(B, T, H, K), k.reshape(B, T, H, K)
        v = v.reshape(B, T, H, self.jv, V)
        state = cache.get(idx, "state") if cache is not None else None
        o, final = chunk_plstm(
            q, k, v, s, t, m, d, initial_state=state, output_final_state=cache is not None, chunk_size=self.chunk_size
        )
        if cache is not None:
            cache.set(idx, "state", final)
        gate = self.g_proj(hidden_states).reshape(B, T, H, self.jo * V)
        o = self.g_norm(o.reshape(B, T, H, self.jo * V), gate).reshape(B, T, H * self.jo * V)
        return self.o_proj(o)
