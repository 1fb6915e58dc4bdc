"""Training helpers around the models: optimizer parameter groups and ``Trainer`` callbacks (one module per
architecture or method; :mod:`.hnet`: H-Net's per-stage learning rates and compression logging; :mod:`.s4d`: S4D's
state-space parameters at a lower learning rate)."""

from .hnet import HNetCompressionCallback, hnet_parameter_groups
from .s4d import s4d_parameter_groups

__all__ = ["HNetCompressionCallback", "hnet_parameter_groups", "s4d_parameter_groups"]
