"""Evaluations: Zoology's multi-query associative recall (MQAR) and sliding-window perplexity."""
from .mqar import IGNORE_INDEX, MQAR_CONFIGS, make_mqar_config, mqar_data, mqar_splits, train_and_score
from .perplexity import perplexity

__all__ = [
    "IGNORE_INDEX", "MQAR_CONFIGS", "make_mqar_config", "mqar_data", "mqar_splits", "train_and_score", "perplexity",
]
