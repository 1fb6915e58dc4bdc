from .ops import block2_scan, linear_scan

__all__ = ["block2_scan", "linear_scan"]
