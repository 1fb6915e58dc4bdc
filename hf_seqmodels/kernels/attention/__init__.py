from .ops import check_window, sliding_window_attention, sliding_window_decode
from .ring import ring_buffer_init, ring_buffer_ordered, ring_buffer_write

__all__ = [
    "check_window",
    "sliding_window_attention",
    "sliding_window_decode",
    "ring_buffer_init",
    "ring_buffer_ordered",
    "ring_buffer_write",
]
