"""State tracking: the tasks on which nonlinear RNNs beat linear recurrences and shallow attention.

Every task is a finite automaton read left to right; the model sees the input tokens and must output the
automaton's state after every token (labels are aligned with the inputs: ``labels[:, t]`` is the state after
reading ``inputs[:, t]``, predicted at position ``t``, no shift; ``-100`` where a position has no label).

* ``parity``: random bits ``{0, 1}``; the label is the running parity ``x_1 xor ... xor x_t`` (2 classes).
* ``cycle`` (cycle navigation, Deletang et al., 2023): moves ``0`` stay, ``1`` right, ``2`` left, drawn uniformly, on a
  cycle of 5 positions starting at 0; the label is the position after the move (5 classes).
* ``modular`` (modular arithmetic without brackets, Deletang et al., 2023): numbers in ``{0..4}`` at even
  positions (tokens 0-4), operators ``+ - *`` at odd positions (tokens 5, 6, 7), drawn uniformly; the label, at
  every number, is the value mod 5 of the expression read so far, ``*`` binding tighter than ``+``/``-`` (5
  classes). Deletang et al. label only the whole expression; the last label here is that one.
* ``a5`` (the word problem of the alternating group A5, Merrill et al., 2024): tokens are the 60 even permutations
  of 5 elements, drawn uniformly; the label is the running product ``g_1 g_2 ... g_t`` (60 classes). A5 is not
  solvable: no constant-depth linear recurrence or transformer tracks it at all lengths.

:func:`train_and_evaluate` trains a model from scratch on fresh batches at one length (every prefix is labelled, so
all shorter lengths are trained too) and reports accuracy at the trained length and at longer ones (length
generalization), both over the last position (the automaton's final state, the papers' metric) and over every
labelled position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import warnings

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value}")


# ----------------------------------------------------------------------------------------------------------------
# Tasks


def parity_data(n: int, length: int, gen: torch.Generator):
    bits = torch.randint(2, (n, length), generator=gen)
    return bits, bits.cumsum(1) % 2


def cycle_data(n: int, length: int, gen: torch.Generator, cycle: int = 5):
    moves = torch.randint(3, (n, length), generator=gen)
    step = torch.tensor([0, 1, -1])[moves]
    return moves, step.cumsum(1) % cycle


def modular_data(n: int, length: int, gen: torch.Generator, modulus: int = 5):
    inputs = torch.empty(n, length, dtype=torch.long)
    numbers = torch.randint(modulus, (n, (length + 1) // 2), generator=gen)
    ops = torch.randint(3, (n, length // 2), generator=gen)  # 0 '+', 1 '-', 2 '*'
    inputs[:, 0::2] = numbers
    inputs[:, 1::2] = modulus + ops
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    # the prefix's value is total + term: the completed additive terms and the (signed) product being built
    total, term = torch.zeros(n, dtype=torch.long), numbers[:, 0].clone()
    labels[:, 0] = term % modulus
    for i in range(1, numbers.shape[1]):
        op, x = ops[:, i - 1], numbers[:, i]
        new_term = torch.where(op == 0, x, -x)
        total = torch.where(op == 2, total, (total + term) % modulus)
        term = torch.where(op == 2, (term * x) % modulus, new_term)
        labels[:, 2 * i] = (total + term) % modulus
    return inputs, labels


def _a5_tables():
    perms = [
        p
        for p in itertools.permutations(range(5))
        if sum(p[i] > p[j] for i in range(5) for j in range(i + 1, 5)) % 2 == 0
    ]
    index = {p: i for i, p in enumerate(perms)}
    # product[a, b] = a then b: (a b)(i) = b(a(i))
    product = torch.tensor([[index[tuple(q[p[i]] for i in range(5))] for q in perms] for p in perms])
    return perms, product


_A5_PERMS, _A5_PRODUCT = _a5_tables()


def a5_data(n: int, length: int, gen: torch.Generator):
    tokens = torch.randint(len(_A5_PERMS), (n, length), generator=gen)
    labels = torch.empty_like(tokens)
    state = tokens[:, 0]
    labels[:, 0] = state
    for t in range(1, length):
        state = _A5_PRODUCT[state, tokens[:, t]]
        labels[:, t] = state
    return tokens, labels


@dataclasses.dataclass(frozen=True)
class StateTrackingTask:
    name: str
    vocab_size: int  # input tokens
    num_classes: int
    generate: object  # (n, length, generator) -> (inputs, labels), int64 [n, length]

    def data(self, n: int, length: int, seed: int = 0):
        """``(inputs, labels)``, int64 ``[n, length]``; the same seed gives the same data."""
        _check_positive("n", n)
        _check_positive("length", length)
        return self.generate(n, length, torch.Generator().manual_seed(seed))


TASKS = {
    "parity": StateTrackingTask("parity", 2, 2, parity_data),
    "cycle": StateTrackingTask("cycle", 3, 5, cycle_data),
    "modular": StateTrackingTask("modular", 8, 5, modular_data),
    "a5": StateTrackingTask("a5", 60, 60, a5_data),
}


def get_task(name: str) -> StateTrackingTask:
    if name not in TASKS:
        raise ValueError(f"`task` must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


# ----------------------------------------------------------------------------------------------------------------
# Models


class DenseRNNClassifier(torch.nn.Module):
    """The upper bound of the ParaRNN paper: embedding, ``torch.nn.GRU`` / ``torch.nn.LSTM`` (dense recurrent
    weights), linear read-out. Returns logits ``[B, T, num_classes]``."""

    def __init__(self, kind: str, vocab_size: int, num_classes: int, d_model: int, layers: int):
        super().__init__()
        rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
        self.embed = torch.nn.Embedding(vocab_size, d_model)
        self.rnn = rnn(d_model, d_model, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(d_model, num_classes)

    def forward(self, input_ids):
        return self.head(self.rnn(self.embed(input_ids))[0])


DENSE = {"dense-gru": "gru", "dense-lstm": "lstm"}
MODELS = ("gla", "paragru", "paralstm", "plstm", "s4d", "aaren", "gam", "recurrent_depth", "llama", *DENSE)
#: config fields the named ParaRNN models get here unless overridden: recurrent weights U(-0.9, 0.9). A parity flip
#: needs some unit with ``|a| > 1``; from the LM init (every ``|a|`` below ~0.2 at d 64) Adam has to carry one there
#: at ~lr per step, and 1-layer ParaLSTM at length 32 often stalled on the way (BENCHMARKS.md, state tracking).
#: They train with Newton's solve (``mode="parallel"``): its iterations and fallbacks on the weights being learned are
#: part of what this evaluation reports (``mode="auto"`` would train with the step-by-step forward and the adjoint
#: backward on a CPU: the same outputs and gradients, and no Newton statistics).
PARARNN_STATE_TRACKING = {"recurrent_init": "uniform", "mode": "parallel"}


def _applied_overrides(config: str, config_overrides: dict) -> dict:
    """The config fields a named model gets: :data:`PARARNN_STATE_TRACKING` for the ParaRNN ones, then the caller's."""
    defaults = PARARNN_STATE_TRACKING if config in ("paragru", "paralstm") else {}
    return {**defaults, **config_overrides}


class _CausalLMClassifier(torch.nn.Module):
    """A causal LM of the package (or transformers' Llama) whose LM head scores the classes (its vocabulary covers
    the input tokens and the classes)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def make_model(
    config: str,
    task: StateTrackingTask,
    d_model: int = 64,
    layers: int = 1,
    heads: int = 1,
    seed: int = 0,
    **config_overrides,
):
    """A fresh model for ``task``: one of :data:`MODELS` or a config json (file or folder, its own sizes, used as
    it is). The named ParaRNN models get :data:`PARARNN_STATE_TRACKING` unless ``config_overrides`` say otherwise."""
    from transformers import AutoModelForCausalLM

    from .mqar import make_mqar_config

    torch.manual_seed(seed)
    if config in DENSE:
        if config_overrides:
            raise ValueError(f"{config} takes no config overrides, got {sorted(config_overrides)}")
        return DenseRNNClassifier(DENSE[config], task.vocab_size, task.num_classes, d_model, layers)
    vocab = max(task.vocab_size, task.num_classes)
    cfg = make_mqar_config(config, d_model, layers, vocab, heads)
    if cfg.vocab_size < vocab:
        raise ValueError(f"`config`: its vocab_size ({cfg.vocab_size}) is smaller than the task's {vocab} tokens")
    cfg.tie_word_embeddings = False  # input tokens and classes are different things
    for key, value in _applied_overrides(config, config_overrides).items():
        if not hasattr(cfg, key):
            raise ValueError(f"`{key}` is not a field of {type(cfg).__name__}")
        setattr(cfg, key, value)
    return _CausalLMClassifier(AutoModelForCausalLM.from_config(cfg))


def _newton_mixers(model):
    from hf_seqmodels.layers.pararnn import ParaRNNMixer

    return [m for m in model.modules() if isinstance(m, ParaRNNMixer)]


# ----------------------------------------------------------------------------------------------------------------
# Training and scoring


@torch.no_grad()
@contextlib.contextmanager
def _newton_scoring(mixers):
    """The scored lengths run the Newton solve (``mode="parallel"``), so that its iterations on the trained weights
    are measured per length; ``mode="auto"`` would take the step-by-step solve there (no gradients on a CPU), with
    the same outputs."""
    modes = [m.mode for m in mixers]
    for m in mixers:
        m.mode = "parallel"
    try:
        yield
    finally:
        for m, mode in zip(mixers, modes):
            m.mode = mode


def accuracy(model, inputs, labels, batch_size: int = 256, num_classes: int | None = None) -> tuple[float, float]:
    """(accuracy at the last labelled position, accuracy over all labelled positions)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    last_ok = all_ok = all_n = 0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x.to(device)).cpu()
        if num_classes is not None:
            logits = logits[..., :num_classes]
        pred = logits.argmax(-1)
        mask = y != IGNORE_INDEX
        all_ok += int(((pred == y) & mask).sum())
        all_n += int(mask.sum())
        last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # last labelled position of each row
        rows = torch.arange(len(y))
        last_ok += int((pred[rows, last] == y[rows, last]).sum())
    model.train()
    return last_ok / len(inputs), all_ok / all_n


@contextlib.contextmanager
def _fallbacks_counted_not_warned():
    """Newton's warning on each solve that falls back would print once per distinct residual (hundreds of lines in
    a run); :func:`train_and_evaluate` counts the fallbacks instead (``result["newton"]`` and the learning curve)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*: no convergence after \d+ Newton iterations", category=RuntimeWarning
        )
        yield


@_fallbacks_counted_not_warned()
def train_and_evaluate(
    task: str,
    config: str = "paragru",
    *,
    train_length: int = 32,
    test_lengths: tuple[int, ...] | None = None,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-6,
    warmup: float = 0.1,
    d_model: int = 64,
    layers: int = 1,
    heads: int = 1,
    num_test: int = 512,
    eval_every: int = 0,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
    recurrence_steps: tuple[int, ...] | None = None,
    **config_overrides,
) -> dict:
    """Train ``config`` from scratch on ``task`` at ``train_length`` and score it at ``test_lengths``
    (default: the trained length, 2x and 4x).

    AdamW (``weight_decay``), linear warm-up over the first ``warmup`` fraction of ``steps`` then cosine decay to 0,
    a fresh batch every step, cross-entropy at every labelled position. ``config_overrides`` set config fields of
    the package's models (e.g. ``recurrent_init="xlstm"`` for ParaRNN instead of :data:`PARARNN_STATE_TRACKING`).
    Returns a dict with the accuracies per length, the learning curve (every ``eval_every`` steps, 0: none:
    held-out final-state accuracy at the trained length, the window's mean training loss and, for ParaRNN models,
    Newton statistics of the window's training solves), the final training loss and, for ParaRNN models, Newton
    statistics over all of training and of the scoring at each length (parallel solves, mean and max iterations per
    solve, solves that fell back to the sequential one). ``recurrence_steps`` (recurrent-depth models only): also
    score every length at each of these test-time core steps (``accuracy[length]["by_steps"]``), trained depth or
    not.
    """
    from tqdm.auto import tqdm

    import hf_seqmodels  # noqa: F401  (registers the architectures with the Auto classes)

    st = get_task(task)
    for name, value in (
        ("train_length", train_length),
        ("steps", steps),
        ("batch_size", batch_size),
        ("d_model", d_model),
        ("layers", layers),
        ("heads", heads),
        ("num_test", num_test),
    ):
        _check_positive(name, value)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a positive number, got {lr!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"`warmup` must be in [0, 1), got {warmup}")
    test_lengths = tuple(test_lengths) if test_lengths else (train_length, 2 * train_length, 4 * train_length)
    for length in test_lengths:
        _check_positive("test_lengths", length)

    model = make_model(config, st, d_model, layers, heads, seed, **config_overrides).to(device)
    lm_config = getattr(getattr(model, "model", None), "config", None)
    if recurrence_steps is not None:
        if not hasattr(lm_config, "mean_recurrence"):
            raise ValueError(f"`recurrence_steps` needs a recurrent-depth model (`config`), got {config!r}")
        for s in recurrence_steps:
            _check_positive("recurrence_steps", s)
    overrides = _applied_overrides(config, config_overrides)  # for the record
    newton_log = []  # NewtonInfo of every parallel solve, appended by a hook on each ParaRNN mixer
    hooks = [
        m.register_forward_hook(lambda mod, args, out: newton_log.append(mod.newton_info))
        for m in _newton_mixers(model)
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = int(warmup * steps)

    def lr_factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    def newton_summary(infos):
        infos = [i for i in infos if i is not None]  # None: a sequential solve (length 1)
        if not infos:
            return None
        its = [i.iterations for i in infos]
        return {
            "solves": len(infos),
            "fallbacks": sum(int(i.fallback) for i in infos),
            "mean_iterations": sum(its) / len(its),
            "max_iterations": max(its),
        }

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(2 * seed + 1)
    held_out = st.data(num_test, train_length, seed=10_000 + seed)
    curve, train_newton, losses, window, newton_window = [], [], [], 0, 0
    bar = tqdm(range(steps), desc=f"{task} {config} L{train_length} lr {lr:.2g}", disable=not progress, leave=False)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in bar:
        x, y = (t.to(device) for t in st.generate(batch_size, train_length, gen))
        logits = model(x)[..., : st.num_classes]
        loss = F.cross_entropy(logits.reshape(-1, st.num_classes).float(), y.reshape(-1), ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        train_newton.extend(newton_log)
        newton_log.clear()
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            point = {
                "step": step + 1,
                "accuracy": accuracy(model, *held_out, num_classes=st.num_classes)[0],
                "loss": sum(losses[window:]) / len(losses[window:]),
            }
            newton_log.clear()  # the scoring's solves are not training's
            if hooks:
                point["newton"] = newton_summary(train_newton[newton_window:])
            curve.append(point)
            window, newton_window = len(losses), len(train_newton)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    result = {
        "task": task,
        "config": config,
        "train_length": train_length,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "d_model": d_model,
        "layers": layers,
        "seed": seed,
        "final_loss": loss.item(),
        "overrides": overrides,
        "accuracy": {},
        "curve": curve,
    }
    for length in test_lengths:
        with _newton_scoring(_newton_mixers(model)):
            last, every = accuracy(
                model, *st.data(num_test, length, seed=20_000 + 97 * seed + length), num_classes=st.num_classes
            )
        result["accuracy"][str(length)] = {"last": last, "all": every}
        if recurrence_steps:
            trained, by_steps = lm_config.mean_recurrence, {}
            try:
                for s in recurrence_steps:  # eval runs mean_recurrence core steps
                    lm_config.mean_recurrence = s
                    data = st.data(num_test, length, seed=20_000 + 97 * seed + length)
                    by_steps[str(s)] = accuracy(model, *data, num_classes=st.num_classes)[0]
            finally:
                lm_config.mean_recurrence = trained
            result["accuracy"][str(length)]["by_steps"] = by_steps
        if hooks:
            result["accuracy"][str(length)]["newton"] = newton_summary(newton_log)
            newton_log.clear()
    for h in hooks:
        h.remove()
    if hooks:
        result["newton"] = newton_summary(train_newton) or {
            "solves": 0,
            "fallbacks": 0,
            "mean_iterations": None,
            "max_iterations": None,
        }
    return result


def sweep(task: str, configs, lrs, seeds=(0,), out: str | None = None, **kwargs) -> list[dict]:
    """:func:`train_and_evaluate` for every config x learning rate x seed; written to ``out`` (JSON) as it goes."""
    import json

    results = []
    for config, lr, seed in itertools.product(configs, lrs, seeds):
        results.append(train_and_evaluate(task, config, lr=lr, seed=seed, **kwargs))
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(results, f, indent=1)
    return results
