from .._dispatch import triton_available
from . import cells
from .newton import (
    ON_FAIL,
    NewtonConvergenceError,
    NewtonInfo,
    adjoint_solve,
    check_newton_options,
    check_on_fail,
    newton_solve,
    sequential_solve,
)

if triton_available():  # the fused kernels need triton (an optional dependency)
    from .fused_triton import fused_newton_gru, fused_newton_lstm
else:
    fused_newton_gru = fused_newton_lstm = None

__all__ = [
    "ON_FAIL",
    "adjoint_solve",
    "cells",
    "check_newton_options",
    "check_on_fail",
    "NewtonConvergenceError",
    "NewtonInfo",
    "newton_solve",
    "sequential_solve",
    "fused_newton_gru",
    "fused_newton_lstm",
]
