"""Triton path of the gathered per-sample SwiGLU FFN.

Forward: one fused kernel computes ``g = x w_gate^T``, ``u = x w_up^T`` and ``h = silu(g) * u`` tile by tile for
every sample (grid: T tiles x S tiles x batch), then a strided batched-matmul kernel computes ``y = h w_down``.
Backward: the same strided batched-matmul kernel serves all six matmuls (transposes are strides, no copies); the
elementwise SwiGLU derivative runs in PyTorch. Everything accumulates in fp32; fp64 is served by the PyTorch path.
Tiles are powers of two between 16 and 64 (one configuration per shape class, no autotuning: first calls compile
in seconds).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import check_triton_dtypes, dot_dtype, dot_precision, patch_interpreter, pow2_block
from .torch_ffn import memory_ffn_backward


@triton.jit
def _gate_up_kernel(
    x_ptr,
    wg_ptr,
    wu_ptr,
    g_ptr,
    u_ptr,
    h_ptr,
    T,
    S,
    D,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rt = pid_t * BT + tl.arange(0, BT)
    rs = pid_s * BS + tl.arange(0, BS)
    rk = tl.arange(0, BK)
    x_base = x_ptr + b * T * D
    w_off = b * S * D
    acc_g = tl.zeros((BT, BS), dtype=tl.float32)
    acc_u = tl.zeros((BT, BS), dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + rk
        xt = tl.load(x_base + rt[:, None] * D + kk[None, :], mask=(rt[:, None] < T) & (kk[None, :] < D), other=0.0)
        wmask = (rs[None, :] < S) & (kk[:, None] < D)
        woff = w_off + rs[None, :] * D + kk[:, None]  # [BK, BS]: the transposed weight tile
        wg = tl.load(wg_ptr + woff, mask=wmask, other=0.0)
        wu = tl.load(wu_ptr + woff, mask=wmask, other=0.0)
        xt = xt.to(DOT)
        acc_g += tl.dot(xt, wg.to(DOT), input_precision=PREC)
        acc_u += tl.dot(xt, wu.to(DOT), input_precision=PREC)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    out = b * T * S + rt[:, None] * S + rs[None, :]
    omask = (rt[:, None] < T) & (rs[None, :] < S)
    tl.store(g_ptr + out, acc_g, mask=omask)
    tl.store(u_ptr + out, acc_u, mask=omask)
    tl.store(h_ptr + out, h, mask=omask)


@triton.jit
def _bmm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    sab,
    sam,
    sak,
    sbb,
    sbk,
    sbn,
    scb,
    scm,
    scn,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    """c[z] = a[z] @ b[z] for strided a [Z, M, K], b [Z, K, N]; c is fp32."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    z = tl.program_id(2).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(
            a_ptr + z * sab + rm[:, None] * sam + kk[None, :] * sak,
            mask=(rm[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )
        bt = tl.load(
            b_ptr + z * sbb + kk[:, None] * sbk + rn[None, :] * sbn,
            mask=(kk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc += tl.dot(a.to(DOT), bt.to(DOT), input_precision=PREC)
    tl.store(c_ptr + z * scb + rm[:, None] * scm + rn[None, :] * scn, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def bmm_config(M, N, K, dtype):
    """Launch configuration of :func:`_bmm_kernel` (one per shape class; shared with the compile check)."""
    return dict(
        BM=pow2_block(M, 16, 64),
        BN=pow2_block(N, 16, 64),
        BK=pow2_block(K, 16, 32),
        DOT=dot_dtype(dtype),
        PREC=dot_precision(dtype),
        num_warps=4,
    )


def gate_up_config(T, S, D, dtype):
    """Launch configuration of :func:`_gate_up_kernel`. Two accumulators per tile: with fp32 inputs (tf32x3 splits
    every operand) a 64x64 tile spills on sm_80 even with 8 warps (255 registers + stack), so fp32 takes 64x32
    tiles (179 registers, no spills); half inputs keep 64x64."""
    hi = 32 if dtype == torch.float32 else 64
    return dict(
        BT=pow2_block(T, 16, 64),
        BS=pow2_block(S, 16, hi),
        BK=pow2_block(D, 16, 32),
        DOT=dot_dtype(dtype),
        PREC=dot_precision(dtype),
        num_warps=4,
    )


def triton_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matmul ``a [Z, M, K] @ b [Z, K, N]`` (any strides, same dtype) -> fp32 ``[Z, M, N]``."""
    Z, M, K = a.shape
    N = b.shape[2]
    c = torch.empty(Z, M, N, device=a.device, dtype=torch.float32)
    cfg = bmm_config(M, N, K, a.dtype)
    grid = (triton.cdiv(M, cfg["BM"]), triton.cdiv(N, cfg["BN"]), Z)
    _bmm_kernel[grid](a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride(), **cfg)
    return c


def _gate_up(x, w_gate, w_up):
    B, T, D = x.shape
    S = w_gate.shape[1]
    g = torch.empty(B, T, S, device=x.device, dtype=torch.float32)
    u, h = torch.empty_like(g), torch.empty_like(g)
    cfg = gate_up_config(T, S, D, x.dtype)
    grid = (triton.cdiv(T, cfg["BT"]), triton.cdiv(S, cfg["BS"]), B)
    _gate_up_kernel[grid](x, w_gate, w_up, g, u, h, T, S, D, **cfg)
    return g, u, h


class MemoryFFNTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        patch_interpreter()
        g, u, h = _gate_up(x, w_gate, w_up)
        y = triton_bmm(h.to(w_down.dtype) if w_down.dtype != torch.float32 else h, w_down)
        ctx.save_for_backward(x, w_gate, w_up, w_down, g, u)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, w_gate, w_up, w_down, g, u = ctx.saved_tensors
        f32 = [t.float() for t in (x, w_gate, w_up, w_down, dy)]
        grads = memory_ffn_backward(*f32, g, u, bmm=triton_bmm)
        return tuple(gr.to(t.dtype) for gr, t in zip(grads, (x, w_gate, w_up, w_down)))


def memory_ffn_triton(x, w_gate, w_up, w_down):
    check_triton_dtypes("memory_ffn", x, w_gate, w_up, w_down)
    return MemoryFFNTriton.apply(x, w_gate, w_up, w_down)
