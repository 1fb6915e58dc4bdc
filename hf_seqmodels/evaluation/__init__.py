"""Evaluations: Zoology's multi-query associative recall (MQAR), state tracking and strided-window perplexity."""

from .mqar import IGNORE_INDEX, MQAR_CONFIGS, make_mqar_config, mqar_data, mqar_splits, train_and_score
from .perplexity import describe_method, perplexity, perplexity_of_ids, text_ids

__all__ = [
    "IGNORE_INDEX",
    "MQAR_CONFIGS",
    "make_mqar_config",
    "mqar_data",
    "mqar_splits",
    "train_and_score",
    "perplexity",
    "perplexity_of_ids",
    "text_ids",
    "describe_method",
]
