"""Monte Carlo tree search for a layer path that raises a reward (CoLa, arXiv 2507.07996).

The tree's root is the model's own path ``[0, 1, ..., L-1]``. An action edits the current path at a position ``s``
(a position in the path, not a layer index): **skip** removes the ``k`` entries ``path[s:s+k]``, **repeat** runs them
twice (``path[:s+k] + path[s:s+k] + path[s+k:]``). As in the paper, ``k`` is 1 to 4 at the root (``root_block``) and
1 below it. An action is allowed only if the new path's length stays within ``[min_length, max_length]``; by default
``[ceil(L/2), L + ceil(L/2)]`` (our choice, an argument: it keeps the search among paths that still carry most of
the model). Several action sequences can reach one path: a node's children are keyed by the path they reach and the
reward of a path is computed once (``SearchResult.evaluations`` counts the reward calls).

One simulation: from the root, descend to the child with the highest UCB1 score ``q + c sqrt(ln N / n)``
(``c = exploration``) while the node has no untried action left; expand one untried action (in an order shuffled by
``seed``); evaluate the new path's reward; update every node on the way back. As suits a search for one best path
(single-player MCTS), ``q`` is the best score found below the child (not the mean), rescaled to ``[0, 1]`` by the
lowest and highest scores seen so far (log-likelihoods and accuracies share one exploration constant). With
``widening`` set, a node already descends once it has ``widening * sqrt(visits)`` children (progressive widening:
deeper trees for a small budget when the root has many actions, e.g. ~8 L of them). The score is
``reward - length_penalty * len(path) / L``. The result is the best-scoring path evaluated (ties: the shorter, then
the one found first).

Rewards (:func:`answer_loglik_reward`, the default of ``hf-seqmodels cola-search``: the log-likelihood of a reference
answer given the prompt; :func:`answer_match_reward`: 1.0 when greedy decoding reproduces the answer, else 0.0, from
one teacher-forced forward; :func:`answer_checker_reward`: 1.0 when a user's checker accepts the greedy generation)
are functions ``path -> float``; any such function can be searched.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .path import decoder_layers, with_layer_path


@dataclass
class SearchResult:
    path: list[int]  # the best path found
    reward: float  # its reward
    base_reward: float  # the reward of the model's own path
    evaluations: int  # reward calls (distinct paths evaluated)
    layer_runs: int  # decoder layers run by those calls (one full forward = L)
    seconds: float
    rewards: dict = field(default_factory=dict)  # every evaluated path (a tuple) -> its reward


class _Node:
    __slots__ = ("path", "actions", "children", "visits", "best")

    def __init__(self, path, actions):
        self.path, self.actions, self.children = path, actions, {}
        self.visits, self.best = 0, -math.inf


def _actions(path: tuple, block: int, lo: int, hi: int) -> list[tuple]:
    """The distinct paths one action reaches from ``path`` (skip or repeat ``1..block`` contiguous entries)."""
    out, n = {}, len(path)
    for k in range(1, block + 1):
        for s in range(0, n - k + 1):
            for new in (path[:s] + path[s + k :], path[: s + k] + path[s : s + k] + path[s + k :]):
                if lo <= len(new) <= hi and new != path:
                    out.setdefault(new, None)
    return list(out)


def search_layer_path(
    model_or_num_layers,
    reward: Callable[[list[int]], float],
    *,
    simulations: int = 64,
    seed: int = 0,
    min_length: int | None = None,
    max_length: int | None = None,
    root_block: int = 4,
    exploration: float = 0.5,
    widening: float | None = None,
    length_penalty: float = 0.0,
    progress: bool = True,
    desc: str = "cola search",
) -> SearchResult:
    """MCTS over layer paths of a model (or of ``num_layers`` layers) for the highest ``reward(path)``; see the
    module's doc. ``simulations`` tree descents, each evaluating at most one new path."""
    if isinstance(model_or_num_layers, int) and not isinstance(model_or_num_layers, bool):
        L = model_or_num_layers
        if L < 1:
            raise ValueError(f"search_layer_path: num_layers must be >= 1, got {L}")
    else:
        L = len(decoder_layers(model_or_num_layers, "search_layer_path"))
    lo = math.ceil(L / 2) if min_length is None else min_length
    hi = L + math.ceil(L / 2) if max_length is None else max_length
    for name, value, low in (("simulations", simulations, 0), ("min_length", lo, 1), ("root_block", root_block, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"search_layer_path: {name} must be an int >= {low}, got {value!r}")
    if isinstance(hi, bool) or not isinstance(hi, int) or not lo <= L <= hi:
        raise ValueError(
            f"search_layer_path: need min_length <= num_layers <= max_length, got min_length={lo}, num_layers={L}, "
            f"max_length={hi!r}"
        )
    if not callable(reward):
        raise ValueError(f"search_layer_path: reward must be a function path -> float, got {type(reward).__name__}")
    rng = random.Random(seed)
    rewards: dict[tuple, float] = {}
    layer_runs = 0
    t0 = time.perf_counter()

    def evaluate(path: tuple) -> float:
        nonlocal layer_runs
        if path not in rewards:
            value = float(reward(list(path)))
            if math.isnan(value):
                raise ValueError(f"search_layer_path: reward returned NaN for path {list(path)}")
            rewards[path] = value
            layer_runs += len(path)
        return rewards[path] - length_penalty * len(path) / L

    def node(path: tuple, depth: int) -> _Node:
        actions = _actions(path, root_block if depth == 0 else 1, lo, hi)
        rng.shuffle(actions)
        return _Node(path, actions)

    root_path = tuple(range(L))
    root = node(root_path, 0)
    scores = [evaluate(root_path)]
    root.visits, root.best = 1, scores[0]
    for _ in tqdm(range(simulations), desc=desc, disable=not progress, leave=False):
        chain, cur, depth = [root], root, 0
        while cur.children and (not cur.actions or (widening and len(cur.children) >= widening * cur.visits**0.5)):
            lo_s, hi_s = min(scores), max(scores)
            span = hi_s - lo_s or 1.0
            log_n = math.log(cur.visits)
            cur = max(
                cur.children.values(),
                key=lambda c: (c.best - lo_s) / span + exploration * math.sqrt(log_n / c.visits),
            )
            chain.append(cur)
            depth += 1
        if cur.actions:
            new = cur.actions.pop()
            child = cur.children[new] = node(new, depth + 1)
            chain.append(child)
            value = evaluate(new)
            scores.append(value)
        else:  # a leaf with no allowed action: its own value again
            value = evaluate(cur.path)
        for n in chain:
            n.visits += 1
            n.best = max(n.best, value)
    best = min(rewards, key=lambda p: (-(rewards[p] - length_penalty * len(p) / L), len(p)))
    return SearchResult(
        path=list(best),
        reward=rewards[best],
        base_reward=rewards[root_path],
        evaluations=len(rewards),
        layer_runs=layer_runs,
        seconds=time.perf_counter() - t0,
        rewards=rewards,
    )


def _prompt_and_answer(tokenizer, prompt: str, answer: str, device):
    p = tokenizer(prompt, return_tensors="pt").input_ids[0]
    a = tokenizer(answer, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if len(p) == 0 or len(a) == 0:
        which = "prompt" if len(p) == 0 else "answer"
        raise ValueError(f"cola reward: the {which} tokenizes to no tokens")
    return torch.cat([p, a]).unsqueeze(0).to(device), len(p)


def _answer_logits(model, path, ids, n_prompt):
    with torch.no_grad(), with_layer_path(model, path):
        logits = model(input_ids=ids, use_cache=False).logits[0, n_prompt - 1 : -1].double()
    return logits, ids[0, n_prompt:]


def answer_loglik_reward(model, tokenizer, prompt: str, answer: str) -> Callable[[list[int]], float]:
    """``path -> log p(answer | prompt)`` (nats, summed over the answer's tokens) under the path."""
    ids, n = _prompt_and_answer(tokenizer, prompt, answer, model.device)

    def reward(path):
        logits, target = _answer_logits(model, path, ids, n)
        return torch.log_softmax(logits, -1).gather(-1, target[:, None]).sum().item()

    return reward


def answer_match_reward(model, tokenizer, prompt: str, answer: str) -> Callable[[list[int]], float]:
    """``path -> 1.0`` when greedy decoding from the prompt starts with the answer's tokens (every answer token is
    the argmax given the ones before it: one teacher-forced forward), else ``0.0``."""
    ids, n = _prompt_and_answer(tokenizer, prompt, answer, model.device)

    def reward(path):
        logits, target = _answer_logits(model, path, ids, n)
        return float(bool((logits.argmax(-1) == target).all()))

    return reward


def answer_checker_reward(
    model, tokenizer, prompt: str, checker: Callable[[str], bool], max_new_tokens: int = 16
) -> Callable[[list[int]], float]:
    """``path -> 1.0`` when ``checker(text)`` accepts the greedy continuation (``max_new_tokens``) under the path."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)

    def reward(path):
        with torch.no_grad(), with_layer_path(model, path):
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
            )
        return float(bool(checker(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))))

    return reward
