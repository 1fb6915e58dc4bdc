"""Every difference between supported transformers versions (5.17 .. newest 5.x) lives here.

5.24 renamed the cache argument and output field ``past_key_values`` to ``cache``.
"""

from __future__ import annotations

import contextlib

from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

#: the name transformers uses for the cache, as a forward argument and as an output field
CACHE_KWARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
#: every name the cache goes by in a forward's keywords, across the supported versions
CACHE_NAMES = ("cache", "past_key_values")


def pop_cache(cache, kwargs: dict):
    """The cache passed under either name (users and generate() of any supported version)."""
    for name in CACHE_NAMES:
        value = kwargs.pop(name, None)
        if cache is None:
            cache = value
    return cache


def model_output(last_hidden_state, cache=None, hidden_states=None) -> BaseModelOutputWithPast:
    return BaseModelOutputWithPast(
        last_hidden_state=last_hidden_state, hidden_states=hidden_states, **{CACHE_KWARG: cache}
    )


def causal_lm_output(loss, logits, cache=None, hidden_states=None) -> CausalLMOutputWithPast:
    return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden_states, **{CACHE_KWARG: cache})


def output_cache(output):
    return getattr(output, CACHE_KWARG)


@contextlib.contextmanager
def transformers_progress_bars(show: bool):
    """Inside, the progress bars transformers and huggingface_hub draw while loading and saving follow ``show``
    (``--no-progress``: off); restored on exit. Their own switches, plus the GGUF de-quantization loop, which uses
    tqdm directly (5.17 .. 5.25)."""
    import functools

    import huggingface_hub.utils
    import transformers.utils.logging as hf_logging

    if show:
        yield
        return
    hf_was, hub_was = hf_logging.is_progress_bar_enabled(), not huggingface_hub.utils.are_progress_bars_disabled()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no gguf support in this transformers: nothing more to silence
        gguf_utils = None
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if hub_was:
            huggingface_hub.utils.enable_progress_bars()
        if hf_was:
            hf_logging.enable_progress_bar()
