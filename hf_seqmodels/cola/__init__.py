"""CoLa layer paths ("Skip a Layer or Loop it?", arXiv 2507.07996): run a pretrained decoder with its layers skipped
or repeated per input, and search such a path with Monte Carlo tree search.

Public API::

    from hf_seqmodels import with_layer_path, search_layer_path
    from hf_seqmodels.cola import answer_loglik_reward, answer_match_reward, answer_checker_reward

    with with_layer_path(model, [0, 1, 2, 2, 3, 5]):              # skip layer 4, run layer 2 twice
        out = model.generate(ids, max_new_tokens=20)               # one KV-cache slot per path position
    with with_layer_path(model, [[0, 1, 2, 3], [0, 0, 1, 3]]):     # one path per batch row (rows grouped by path)
        logits = model(ids, attention_mask=mask).logits
    result = search_layer_path(model, answer_loglik_reward(model, tok, prompt, answer), simulations=64, seed=0)
    result.path, result.reward, result.base_reward, result.evaluations

Modules: :mod:`.path` (running a path), :mod:`.search` (the tree search and the rewards).
"""

from .path import check_path, with_layer_path
from .search import (
    SearchResult,
    answer_checker_reward,
    answer_loglik_reward,
    answer_match_reward,
    search_layer_path,
)

__all__ = [
    "SearchResult",
    "answer_checker_reward",
    "answer_loglik_reward",
    "answer_match_reward",
    "check_path",
    "search_layer_path",
    "with_layer_path",
]
