from .newton import NewtonConvergenceError, NewtonInfo, newton_solve, sequential_solve

__all__ = ["NewtonConvergenceError", "NewtonInfo", "newton_solve", "sequential_solve"]
