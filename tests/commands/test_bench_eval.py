"""The benchmark command, the MQAR generator and trainer, and sliding-window perplexity."""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

import hf_seqmodels  # noqa: F401
from hf_seqmodels.commands import bench
from hf_seqmodels.commands import eval as eval_cli
from hf_seqmodels.evaluation.mqar import (
    IGNORE_INDEX,
    make_mqar_config,
    mqar_data,
    query_gap_probs,
    train_and_score,
)
from hf_seqmodels.evaluation.perplexity import perplexity, perplexity_of_ids

# ---------------------------------------------------------------------------------------------------------------- MQAR


@pytest.mark.parametrize("L,K,V", [(64, 4, 8192), (128, 8, 512), (16, 4, 12), (33, 8, 40)])
def test_mqar_structure(L, K, V, fresh_seed):
    N = 200
    x, y = mqar_data(N, L, K, V, seed=fresh_seed)
    assert x.shape == y.shape == (N, L) and x.dtype == y.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < V
    keys, values = x[:, 0 : 2 * K : 2], x[:, 1 : 2 * K : 2]
    assert bool(((keys >= 1) & (keys < V // 2)).all())
    assert bool(((values >= V // 2) & (values < V)).all())
    for i in range(N):
        assert len(set(keys[i].tolist())) == K and len(set(values[i].tolist())) == K
        pos = (y[i] != IGNORE_INDEX).nonzero().flatten()
        assert len(pos) == K
        # queries only after the pairs, at even offsets from them
        assert bool((pos >= 2 * K).all()) and bool(((pos - 2 * K) % 2 == 0).all()) and int(pos.max()) < L
        pair_of = dict(zip(keys[i].tolist(), values[i].tolist()))
        queried = x[i, pos].tolist()
        assert sorted(queried) == sorted(pair_of)  # every key queried exactly once
        for p, k in zip(pos.tolist(), queried):
            assert y[i, p].item() == pair_of[k]
    assert bool((y[:, : 2 * K] == IGNORE_INDEX).all())


def test_mqar_deterministic_and_seeded():
    a = mqar_data(50, 64, 4, 8192, seed=3)
    b = mqar_data(50, 64, 4, 8192, seed=3)
    c = mqar_data(50, 64, 4, 8192, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mqar_no_random_filler_is_zero():
    x, y = mqar_data(20, 32, 3, 100, seed=0, random_non_queries=False)
    filler = torch.ones_like(x, dtype=torch.bool)
    filler[:, :6] = False
    filler[y != IGNORE_INDEX] = False
    assert bool((x[filler] == 0).all())


def test_mqar_power_law_placement():
    space = 30
    p = query_gap_probs(space, 0.01)
    assert p.shape == (space,) and math.isclose(float(p.sum()), 1.0, rel_tol=1e-9)
    assert bool((p[1:] < p[:-1]).all())  # decreasing: queries favour slots near the pairs
    assert math.isclose(float(p[1] / p[0]), 2**-0.99, rel_tol=1e-9)
    # empirical gap histogram (K=1: a single draw per row, so no without-replacement effects)
    N, K = 20000, 1
    L = 2 * K + 2 * space
    _, y = mqar_data(N, L, K, 64, seed=1)
    gaps = ((y != IGNORE_INDEX).nonzero()[:, 1] - 2 * K) // 2
    freq = torch.bincount(gaps, minlength=space).double() / N
    assert torch.allclose(freq, p, atol=0.015)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_examples=0, seq_len=64, num_pairs=4), "num_examples"),
        (dict(num_examples=2, seq_len=15, num_pairs=4), "seq_len"),
        (dict(num_examples=2, seq_len=64, num_pairs=4, vocab_size=8), "vocab_size"),
    ],
)
def test_mqar_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mqar_data(**kwargs)


def test_mqar_config_names_and_errors(tmp_path):
    gla = make_mqar_config("gla", 64, 2, 300)
    llama = make_mqar_config("llama", 64, 2, 300)
    assert gla.vocab_size == llama.vocab_size == 300 and gla.hidden_size == llama.hidden_size == 64
    assert gla.intermediate_size == llama.intermediate_size
    assert gla.tie_word_embeddings and llama.tie_word_embeddings  # as in Zoology
    gla.to_json_file(tmp_path / "config.json")
    loaded = make_mqar_config(str(tmp_path / "config.json"))
    assert type(loaded) is type(gla) and loaded.hidden_size == 64
    with pytest.raises(ValueError, match="config"):
        make_mqar_config("no-such-model")
    with pytest.raises(ValueError, match="d_model"):
        make_mqar_config("gla", 0)


@pytest.mark.parametrize("name,cell", [("paragru", "gru"), ("paralstm", "lstm")])
def test_mqar_pararnn_configs(name, cell):
    config = make_mqar_config(name, 64, 2, 300)
    assert config.cell == cell and config.hidden_size == 64 and config.num_hidden_layers == 2
    assert config.tie_word_embeddings
    assert config.intermediate_size == make_mqar_config("llama", 64, 2, 300).intermediate_size
    history = []
    acc = train_and_score(
        make_mqar_config(name, 16, 1, 32), 16, 2, 32, 16, 1e-3, 1, 16, progress=False, history=history
    )
    assert 0.0 <= acc <= 1.0 and len(history) == 2 and all(math.isfinite(h) for h in history)


def test_train_and_score_learns():
    """An easy MQAR (L=16, K=2, 16 tokens) is learned by a 2-layer Llama in a few hundred steps. Copying either
    value of the context, without recall, scores 0.5; a model that recalls scores near 1."""
    config = make_mqar_config("llama", 64, 2, 16)
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and far faster on a busy machine
    try:
        acc = train_and_score(config, 16, 2, 4096, 512, 3e-3, 5, 32, progress=False, seed=0, history=history)
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= acc <= 1.0
    assert sum(history[-20:]) / 20 < 0.2 * sum(history[:20]) / 20
    assert acc > 0.9  # seeds 0-3 all score >= 0.999 here


def test_train_and_score_gla_runs_and_bad_args():
    history = []
    acc = train_and_score(
        make_mqar_config("gla", 32, 1, 32), 16, 2, 64, 32, 1e-3, 1, 32, progress=False, history=history
    )
    assert 0.0 <= acc <= 1.0 and len(history) == 2 and all(math.isfinite(h) for h in history)
    with pytest.raises(ValueError, match="lr"):
        train_and_score(make_mqar_config("gla", 32, 1, 32), 16, 2, 64, 32, -1.0, 1, 32, progress=False)
    with pytest.raises(TypeError, match="config_or_model"):
        train_and_score("gla", 16, 2, 64, 32, 1e-3, 1, 32, progress=False)


# ---------------------------------------------------------------------------------------------------------- perplexity


class _CharTokenizer:
    """Bytes as tokens, like a tokenizer's __call__ (input_ids only); a BOS (0) unless add_special_tokens=False."""

    def __call__(self, text, return_tensors="pt", add_special_tokens=True):
        return {"input_ids": torch.tensor([[0] * add_special_tokens + list(text.encode())])}


def _tiny_model():
    from transformers import AutoModelForCausalLM

    config = make_mqar_config("gla", 32, 1, 256)
    return AutoModelForCausalLM.from_config(config).eval()


def test_perplexity_single_window_is_exp_mean_nll():
    model, tok = _tiny_model(), _CharTokenizer()
    text = "The quick brown fox jumps over the lazy dog."
    ids = torch.tensor(list(text.encode()))
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0].double()
    nll = F.cross_entropy(logits[:-1], ids[1:])
    assert math.isclose(perplexity(model, tok, text, context=64, progress=False), math.exp(nll.item()), rel_tol=1e-5)


def test_perplexity_sliding_windows_and_max_tokens():
    model, tok = _tiny_model(), _CharTokenizer()
    text = "abcdefghij klmnopqrstuvwxyz 0123456789 "
    n = 30
    ids = torch.tensor(list(text.encode()))[:n]
    got = perplexity(model, tok, text, context=12, stride=5, max_tokens=n, progress=False)
    # by hand: windows [0,12), [5,17), [10,22)...; token j is scored once, in the first window that contains it,
    # from its own prefix inside that window
    nll, scored_to = 0.0, 1
    for begin in range(0, n - 1, 5):
        end = min(begin + 12, n)
        for j in range(scored_to, end):
            with torch.no_grad():
                logits = model(input_ids=ids[None, begin:j], use_cache=False).logits[0, -1]
            nll -= F.log_softmax(logits.double(), -1)[ids[j]].item()
        scored_to = max(scored_to, end)
        if end == n:
            break
    assert math.isclose(got, math.exp(nll / (n - 1)), rel_tol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tok, text, context=16, stride=17, progress=False)
    with pytest.raises(ValueError, match="context"):
        perplexity(model, tok, text, context=1, progress=False)


@pytest.mark.parametrize("context,stride", [(12, 5), (8, 8), (7, 3), (5, 5), (9, 1), (6, 4)])
def test_perplexity_of_ids_by_its_definition(context, stride):
    """Token j is scored once, from its prefix in the first window [b, b + context) (b a multiple of the stride) that
    holds j and j - 1; with stride == context the first token of every block is not scored (it used to crash)."""
    model = _tiny_model()
    n = 31
    ids = torch.randint(0, 64, (n,))
    got = perplexity_of_ids(model, ids, context=context, stride=stride, batch_size=3, progress=False)
    nll, count = 0.0, 0
    for j in range(1, n):
        begins = [b for b in range(0, n, stride) if b <= j - 1 and j < b + context]
        if not begins:
            continue
        with torch.no_grad():
            logits = model(input_ids=ids[None, begins[0] : j], use_cache=False).logits[0, -1]
        nll -= F.log_softmax(logits.double(), -1)[ids[j]].item()
        count += 1
    assert count == (n - 1 if stride < context else n - 1 - (n - 1) // context)
    assert math.isclose(got, math.exp(nll / count), rel_tol=1e-5)


def test_perplexity_with_stride_equal_to_context_is_the_block_perplexity():
    model = _tiny_model()
    blocks = torch.randint(0, 64, (4, 9))
    with torch.no_grad():
        logits = model(input_ids=blocks, use_cache=False).logits.double()
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), blocks[:, 1:].flatten())
    got = perplexity_of_ids(model, blocks.flatten(), context=9, stride=9, progress=False)
    assert math.isclose(got, math.exp(nll.item()), rel_tol=1e-5)


# ------------------------------------------------------------------------------------------------------------ commands


def _run(module, argv):
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_bench_quick_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        _run(
            bench,
            [
                "bench",
                "--quick",
                "--seq-lens",
                "64,128",
                "--heads",
                "2",
                "--head-dim",
                "16",
                "--max-seconds",
                "120",
                "--out",
                str(out),
                "--no-progress",
            ],
        )
        == 0
    )
    data = json.loads((out / "bench_gla.json").read_text())
    assert (out / "bench_gla.png").stat().st_size > 1000
    methods = {r["method"] for r in data["results"]}
    assert methods == {"gla", "sdpa", "loop"}
    assert len(data["results"]) == 2 * 2 * 3  # modes x lengths x methods
    assert all(r["median_s"] > 0 for r in data["results"])
    printed = capsys.readouterr().out
    assert "gla vs sdpa" in printed and "gla vs loop" in printed


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bench_pararnn_sections(cell, tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        _run(
            bench,
            [
                "bench",
                "--section",
                f"para{cell}",
                "--seq-lens",
                "8,33",
                "--hidden-size",
                "16",
                "--repeats",
                "1",
                "--max-seconds",
                "120",
                "--out",
                str(out),
                "--no-progress",
            ],
        )
        == 0
    )
    data = json.loads((out / f"bench_para{cell}.json").read_text())
    ours, parallel = f"para{cell}-auto", f"para{cell}-parallel"
    sequential, peer = f"para{cell}-sequential", f"torch.nn.{cell.upper()}"
    assert {r["method"] for r in data["results"]} == {ours, parallel, sequential, peer}
    assert len(data["results"]) == 2 * 2 * 4 and all(r["median_s"] > 0 for r in data["results"])
    assert data["meta"]["hidden_size"] == 16
    printed = capsys.readouterr().out
    assert all(f"{ours} vs {other}" in printed for other in (parallel, sequential, peer))


def test_bench_skips_slow_methods(tmp_path, capsys):
    out = tmp_path / "bench"
    _run(
        bench,
        [
            "bench",
            "--seq-lens",
            "32,64",
            "--modes",
            "fwd",
            "--repeats",
            "1",
            "--max-seconds",
            "1e-9",
            "--heads",
            "1",
            "--head-dim",
            "8",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    data = json.loads((out / "bench_gla.json").read_text())
    assert all(r["skipped"] == ">1e-09 s" for r in data["results"])
    assert "skipped (>1e-09 s)" in capsys.readouterr().out


def test_bench_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--section"):
        _run(bench, ["bench", "--section", "nope", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--modes"):
        _run(bench, ["bench", "--modes", "bwd", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        _run(bench, ["bench", "--seq-lens", "0,5"])


def test_eval_mqar_command(tmp_path, capsys):
    out = tmp_path / "mqar.json"
    _run(
        eval_cli,
        [
            "eval",
            "mqar",
            "--config",
            "gla",
            "--d-model",
            "32",
            "--layers",
            "1",
            "--vocab-size",
            "64",
            "--lens",
            "16",
            "--pairs",
            "2",
            "--lrs",
            "1e-3,3e-3",
            "--num-train",
            "64",
            "--num-test",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 1 and rows[0]["L"] == 16 and rows[0]["K"] == 2 and set(rows[0]["by_lr"]) == {"0.001", "0.003"}
    assert rows[0]["accuracy"] == max(rows[0]["by_lr"].values())
    assert "| gla | 32 | 16 | 2 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--pairs"):
        _run(eval_cli, ["eval", "mqar", "--lens", "100", "--num-train", "8"])


def test_eval_ppl_command(tmp_path, capsys):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = _tiny_model()
    model.save_pretrained(tmp_path / "m")
    vocab = {chr(i): i for i in range(32, 128)}
    vocab["[UNK]"] = 0
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text("hello world, this is a test of perplexity. " * 3)
    _run(
        eval_cli,
        [
            "eval",
            "ppl",
            "--model",
            str(tmp_path / "m"),
            "--text",
            str(tmp_path / "t.txt"),
            "--context",
            "32",
            "--no-progress",
        ],
    )
    line = capsys.readouterr().out
    value = float(line.split()[1])
    assert 1.0 < value < 1000
    # --stride equal to --context (allowed by its help; it used to crash): non-overlapping blocks, the same figure as
    # the Python function on the same token ids
    _run(
        eval_cli,
        [
            "eval",
            "ppl",
            "--model",
            str(tmp_path / "m"),
            "--text",
            str(tmp_path / "t.txt"),
            "--context",
            "16",
            "--stride",
            "16",
            "--max-tokens",
            "100",
            "--no-progress",
        ],
    )
    value = float(capsys.readouterr().out.split()[1])
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "m")
    ids = torch.tensor(tok((tmp_path / "t.txt").read_text(), add_special_tokens=False)["input_ids"][:100])
    assert math.isclose(value, perplexity_of_ids(model, ids, context=16, stride=16, progress=False), rel_tol=1e-3)
    with pytest.raises(SystemExit):  # checked by argparse: "--text must be a readable file"
        _run(eval_cli, ["eval", "ppl", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "missing.txt")])


def test_command_line_reports_bad_input_without_a_traceback(capsys):
    from hf_seqmodels.commands.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "mqar", "--config", "no-such-model"])
    assert exit_info.value.code == 2
    assert "hf-seqmodels eval mqar: error: `config` must be one of" in capsys.readouterr().err
