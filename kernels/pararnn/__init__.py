from .._dispatch import triton_available
from .newton import NewtonConvergenceError, NewtonInfo, newton_solve, sequential_solve

if triton_available():  # the fused kernels need triton (an optional dependency)
    from .fused_triton import fused_newton_gru, fused_newton_lstm
else:
    fused_newton_gru = fused_newton_lstm = None

__all__ = [
    "NewtonConvergenceError",
    "NewtonInfo",
    "newton_solve",
    "sequential_solve",
    "fused_newton_gru",
    "fused_newton_lstm",
]
