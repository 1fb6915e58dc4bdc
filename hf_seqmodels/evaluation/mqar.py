"""Multi-query associative recall (MQAR), the recall benchmark of Zoology (Arora et al., 2023).

A sequence of length ``L`` over a vocabulary of ``V`` tokens starts with ``K`` distinct key-value pairs
``k1 v1 ... kK vK`` (keys from ``[1, V/2)``, values from ``[V/2, V)``, both drawn without replacement). Every key
then appears once more as a query, at position ``2K + 2*gap`` where the gaps are ``K`` distinct draws from
``{0, ..., (L-2K)//2 - 1}`` with probability ``∝ (gap+1) ** (power_a - 1)`` (Zoology's power law, ``power_a`` 0.01:
most queries sit close to the pairs). The other positions are filler (random tokens, as in Zoology's default).
The model must output the key's value right after reading the query: ``labels[i, p]`` is the target of the
prediction made AT position ``p`` (already shifted, unlike the ``labels`` argument of a Hugging Face model), the
value at each query position and ``-100`` elsewhere. Accuracy counts query positions only.
"""

from __future__ import annotations

import functools
import json
import math
import os

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
#: (L, K) pairs of Zoology's MQAR sweep
ZOOLOGY_PAIRS = {64: 4, 128: 8, 256: 16, 512: 64}
_ROWS_PER_BLOCK = 2048  # bounds the [rows, V/2] scratch used to draw distinct keys


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a positive integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def _distinct(num_rows, low, high, k, gen):
    """``num_rows`` rows of ``k`` distinct integers from ``[low, high)``, in random order."""
    out = []
    for start in range(0, num_rows, _ROWS_PER_BLOCK):
        n = min(_ROWS_PER_BLOCK, num_rows - start)
        out.append(torch.rand(n, high - low, generator=gen).topk(k, dim=1).indices + low)
    return torch.cat(out)


def query_gap_probs(space: int, power_a: float = 0.01) -> torch.Tensor:
    """Zoology's power law over the ``space`` query slots: ``p(gap) ∝ (gap+1) ** (power_a - 1)``, gap = 0..space-1."""
    _check_positive("space", space)
    if not power_a > 0:
        raise ValueError(f"`power_a` must be > 0, got {power_a}")
    p = torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return p / p.sum()


def mqar_data(
    num_examples: int,
    seq_len: int,
    num_pairs: int,
    vocab_size: int = 8192,
    seed: int = 0,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``, int64 ``[num_examples, seq_len]``; the same seed gives the same data."""
    for name, value in (
        ("num_examples", num_examples),
        ("seq_len", seq_len),
        ("num_pairs", num_pairs),
        ("vocab_size", vocab_size),
    ):
        _check_positive(name, value)
    if 4 * num_pairs > seq_len:
        raise ValueError(
            f"`seq_len` ({seq_len}) must be at least 4 * num_pairs ({4 * num_pairs}): room for the "
            "pairs and one query slot per pair"
        )
    half = vocab_size // 2
    if half - 1 < num_pairs:
        raise ValueError(f"`vocab_size` ({vocab_size}) too small for {num_pairs} distinct keys from [1, {half})")
    gen = torch.Generator().manual_seed(seed)
    N, L, K = num_examples, seq_len, num_pairs
    keys = _distinct(N, 1, half, K, gen)
    values = _distinct(N, half, vocab_size, K, gen)
    context = 2 * K
    space = (L - context) // 2
    probs = query_gap_probs(space, power_a).float().expand(N, space)
    gaps = torch.multinomial(probs, K, replacement=False, generator=gen)  # sequential weighted draws, as np.choice
    query_pos = context + 2 * gaps

    inputs = torch.zeros(N, L, dtype=torch.long)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((N, L), IGNORE_INDEX, dtype=torch.long)
    labels.scatter_(1, query_pos, values)
    if random_non_queries:
        filler = torch.randint(vocab_size, (N, L), generator=gen)
        free = torch.ones(N, L, dtype=torch.bool)
        free[:, :context] = False
        free.scatter_(1, query_pos, False)
        inputs = torch.where(free, filler, inputs)
    return inputs, labels


@functools.lru_cache(maxsize=4)
def mqar_splits(
    num_train, num_test, seq_len, num_pairs, vocab_size=8192, seed=0, power_a=0.01, random_non_queries=True
):
    """``((train_inputs, train_labels), (test_inputs, test_labels))`` from independent seeds (cached: a sweep
    over learning rates and models reuses them; callers must not modify them in place)."""
    kw = dict(
        seq_len=seq_len,
        num_pairs=num_pairs,
        vocab_size=vocab_size,
        power_a=power_a,
        random_non_queries=random_non_queries,
    )
    return mqar_data(num_train, seed=2 * seed, **kw), mqar_data(num_test, seed=2 * seed + 1, **kw)


# ----------------------------------------------------------------------------------------------------------------
# Models


def _shared_fields(d_model, layers, vocab_size) -> dict:
    """What every row's config shares: width, depth, vocabulary, tied embeddings (see :data:`MQAR_CONFIGS`), no
    special tokens."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=layers,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )


def _gla_config(d_model, layers, vocab_size, heads=1):
    from hf_seqmodels.models.gla import GLAConfig

    # short convolutions as in Zoology's GLA baseline (they let one layer see the previous token)
    return GLAConfig(**_shared_fields(d_model, layers, vocab_size), num_heads=heads, use_short_conv=True)


def _pararnn_config(cell):
    def factory(d_model, layers, vocab_size, heads=1):
        from hf_seqmodels.models.pararnn import ParaRNNConfig

        # the paper's LM block: short convolution, cell, gated RMSNorm, projection, MLP
        fields = _shared_fields(d_model, layers, vocab_size)
        return ParaRNNConfig(cell=cell, **fields, num_heads=heads, use_short_conv=True)

    return factory


def _plstm_config(d_model, layers, vocab_size, heads=1):
    from hf_seqmodels.models.plstm import PLSTMConfig

    # GLA's setting: short convolutions on q, k, v; the head widths of a GLA head at this width (expand_k 0.5)
    return PLSTMConfig(
        **_shared_fields(d_model, layers, vocab_size),
        num_heads=heads,
        head_k_dim=max(1, d_model // (2 * heads)),
        head_v_dim=max(1, d_model // heads),
        use_short_conv=True,
    )


def _s4d_config(d_model, layers, vocab_size, heads=1):
    from hf_seqmodels.models.s4d import S4DConfig

    # the reference's S4D-Lin layer (d_state 64); ``heads`` does not apply (one state space per channel)
    return S4DConfig(**_shared_fields(d_model, layers, vocab_size))


def _aaren_config(d_model, layers, vocab_size, heads=1):
    from hf_seqmodels.models.aaren import AarenConfig

    return AarenConfig(**_shared_fields(d_model, layers, vocab_size), num_heads=heads)


def _gam_config(d_model, layers, vocab_size, heads=1):
    from hf_seqmodels.models.gam import GAMConfig

    # GAM has no heads; its MLP is the reference's 4x GELU FFN
    return GAMConfig(**_shared_fields(d_model, layers, vocab_size))


def _recurrent_depth_config(d_model, layers, vocab_size, heads=1):
    from hf_seqmodels.models.causal_lm import SeqModelConfig
    from hf_seqmodels.models.recurrent_depth import RecurrentDepthConfig

    # ``layers`` blocks in the recurrent core between a one-block prelude and a one-block coda (Huginn's layout at
    # 1 + 4 x 32 + 1 would be prelude 2, core 4, coda 2), 4 core steps on average, gradients through the last 2
    return RecurrentDepthConfig(
        vocab_size=vocab_size,
        n_embd=d_model,
        n_heads=heads,
        intermediate_size=SeqModelConfig(hidden_size=d_model).intermediate_size,
        n_layers_in_prelude=1,
        n_layers_in_recurrent_block=layers,
        n_layers_in_coda=1,
        mean_recurrence=4,
        mean_backprop_depth=2,
        tie_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )


def _llama_config(d_model, layers, vocab_size, heads=1):
    from transformers import LlamaConfig

    from hf_seqmodels.models.causal_lm import SeqModelConfig

    # the MLP width of our models, so that only the token mixer differs
    mlp = SeqModelConfig(hidden_size=d_model).intermediate_size
    return LlamaConfig(
        **_shared_fields(d_model, layers, vocab_size),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=mlp,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )


#: config name -> factory(d_model, layers, vocab_size, heads) returning a config for AutoModelForCausalLM. All tie the
#: input and output embeddings, as Zoology's models do: untied, the output layer must learn every one of the V/2
#: values on its own, and at a CPU budget (600 steps, d 64, L 64) a Llama scored 0.002 untied against 0.17 tied.
MQAR_CONFIGS = {
    "gla": _gla_config,
    "paragru": _pararnn_config("gru"),
    "paralstm": _pararnn_config("lstm"),
    "plstm": _plstm_config,
    "s4d": _s4d_config,
    "llama": _llama_config,  # softmax attention, the baseline
    "aaren": _aaren_config,
    "gam": _gam_config,
    "recurrent_depth": _recurrent_depth_config,
}


def make_mqar_config(name_or_path: str, d_model: int = 64, layers: int = 2, vocab_size: int = 8192, heads: int = 1):
    """A config from :data:`MQAR_CONFIGS`, or from a ``config.json`` (file or folder) whose fields are used as they
    are (its own width, depth and vocabulary)."""
    if name_or_path in MQAR_CONFIGS:
        for name, value in (("d_model", d_model), ("layers", layers), ("vocab_size", vocab_size), ("heads", heads)):
            _check_positive(name, value)
        return MQAR_CONFIGS[name_or_path](d_model, layers, vocab_size, heads)
    if not os.path.exists(name_or_path):
        raise ValueError(
            f"`config` must be one of {sorted(MQAR_CONFIGS)} or a path to a config json, got {name_or_path!r}"
        )
    from transformers import AutoConfig

    import hf_seqmodels  # noqa: F401  (registers our model types with AutoConfig)

    if os.path.isdir(name_or_path):
        return AutoConfig.from_pretrained(name_or_path)
    with open(name_or_path) as f:
        fields = json.load(f)
    if "model_type" not in fields:
        raise ValueError(f"`config`: {name_or_path} has no `model_type` field")
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _query_logits(model, input_ids, labels):
    """Logits at the labelled positions only (the LM head over a vocabulary of 8192 at every position would
    dominate the cost), and their targets."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    mask = labels != IGNORE_INDEX
    return model.get_output_embeddings()(hidden[mask]), labels[mask]


@torch.no_grad()
def score(model, inputs, labels, batch_size=256, device="cpu") -> float:
    """Accuracy of ``model`` at the query positions of an MQAR set."""
    model.eval()
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        logits, target = _query_logits(model, x, y)
        correct += int((logits.argmax(-1) == target).sum())
        total += target.numel()
    return correct / total


def train_and_score(
    config_or_model,
    L: int,
    K: int,
    num_train: int,
    num_test: int,
    lr: float,
    epochs: int,
    batch_size: int,
    device="cpu",
    progress: bool = True,
    *,
    seed: int = 0,
    weight_decay: float = 0.1,
    power_a: float = 0.01,
    history: list | None = None,
) -> float:
    """Train a causal LM on MQAR(L, K) and return its test accuracy over the query positions.

    ``config_or_model`` is a config (the model is built with ``AutoModelForCausalLM.from_config``; the seed fixes its
    init) or a model, trained in place. The vocabulary is the model's ``vocab_size``. AdamW with cosine decay to 0
    after a short linear warm-up; cross-entropy at the query positions. ``history``, when given, receives the training
    loss of every step.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, PretrainedConfig

    import hf_seqmodels  # noqa: F401  (registers our architectures with the Auto classes)

    for name, value in (
        ("L", L),
        ("K", K),
        ("num_train", num_train),
        ("num_test", num_test),
        ("epochs", epochs),
        ("batch_size", batch_size),
    ):
        _check_positive(name, value)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"`lr` must be a positive number, got {type(lr).__name__} {lr!r}")
    if not lr > 0:
        raise ValueError(f"`lr` must be a positive number, got {lr!r}")
    device = torch.device(device)
    if isinstance(config_or_model, PretrainedConfig):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config_or_model)
    elif isinstance(config_or_model, torch.nn.Module):
        model = config_or_model
    else:
        raise TypeError(
            f"`config_or_model` must be a transformers config or a model, got {type(config_or_model).__name__}"
        )
    model.to(device)
    vocab = model.config.vocab_size
    (x_train, y_train), (x_test, y_test) = mqar_splits(num_train, num_test, L, K, vocab, seed, power_a)

    steps_per_epoch = math.ceil(num_train / batch_size)
    total = steps_per_epoch * epochs
    warmup = max(1, min(100, total // 10))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_factor(step):  # linear warm-up, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc=f"mqar L{L} K{K} lr {lr:.2g}", disable=not progress, leave=False)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(num_train, generator=gen)
        for start in range(0, num_train, batch_size):
            idx = order[start : start + batch_size]
            logits, target = _query_logits(model, x_train[idx].to(device), y_train[idx].to(device))
            loss = F.cross_entropy(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if history is not None:
                history.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return score(model, x_test, y_test, batch_size=max(batch_size, 256), device=device)
