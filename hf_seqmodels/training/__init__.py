"""Training helpers around the models: optimizer parameter groups and ``Trainer`` callbacks (one module per
architecture or method; :mod:`.hnet`: H-Net's per-stage learning rates and compression logging)."""

from .hnet import HNetCompressionCallback, hnet_parameter_groups

__all__ = ["HNetCompressionCallback", "hnet_parameter_groups"]
