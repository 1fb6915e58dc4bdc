"""Every difference between supported transformers versions (5.17 .. newest 5.x) lives here.

5.24 renamed the cache argument and output field ``past_key_values`` to ``cache``.
"""

from __future__ import annotations

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


def disable_transformers_progress_bars() -> None:
    """Silence the progress bars transformers and huggingface_hub draw while loading and saving (``--no-progress``):
    their own switches, plus the GGUF de-quantization loop, which uses tqdm directly (5.17 .. 5.25)."""
    import functools

    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no gguf support in this transformers: nothing to silence
        return
    if hasattr(gguf_utils, "tqdm") and not isinstance(gguf_utils.tqdm, functools.partial):
        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
