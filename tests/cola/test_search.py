"""CoLa's tree search: it finds a planted path on a toy reward, deterministically with the seed, within the length
bounds; the rewards built on a model; the ``cola-search`` command on a tiny model folder."""

import json

import pytest
import torch
from test_layer_paths import tiny_llama

from hf_seqmodels import search_layer_path, with_layer_path
from hf_seqmodels.cola import answer_checker_reward, answer_loglik_reward, answer_match_reward

PLANTED = [0, 1, 2, 3, 2, 3, 4, 5, 7]  # from [0..7]: repeat layers 2-3 (a root action), then skip layer 6
PLANTED_PARENT = [0, 1, 2, 3, 2, 3, 4, 5, 6, 7]


def toy_reward(path):
    """A planted best path two actions deep (1.0), its parent on the way (0.5); elsewhere a mild preference for
    paths of the model's length (at most 0)."""
    if path == PLANTED:
        return 1.0
    if path == PLANTED_PARENT:
        return 0.5
    return -0.1 * abs(len(path) - 8)


def test_search_finds_planted_path_deterministically():
    calls = []

    def reward(path):
        calls.append(list(path))
        return toy_reward(path)

    found = search_layer_path(8, reward, simulations=150, seed=3, progress=False)
    assert found.path == PLANTED and found.reward == 1.0 and found.base_reward == 0.0
    assert found.evaluations == len(calls) == len({tuple(c) for c in calls})  # each path evaluated once
    assert found.layer_runs == sum(len(c) for c in calls)
    again = search_layer_path(8, toy_reward, simulations=150, seed=3, progress=False)
    assert list(again.rewards) == [tuple(c) for c in calls]  # the same paths in the same order
    other = search_layer_path(8, toy_reward, simulations=150, seed=4, progress=False)
    assert list(other.rewards) != list(again.rewards)


def test_search_bounds_and_actions():
    found = search_layer_path(8, toy_reward, simulations=200, seed=0, min_length=7, max_length=8, progress=False)
    assert all(7 <= len(p) <= 8 for p in found.rewards)  # the planted path (9 layers) is out of bounds
    assert found.reward == 0.0 and len(found.path) == 8
    assert len(found.rewards) > 20  # the search did run
    # one simulation from the root: one of the root's actions (skip or repeat 1-4 contiguous layers) is evaluated
    one = search_layer_path(8, toy_reward, simulations=1, seed=0, progress=False)
    (child,) = [p for p in one.rewards if p != tuple(range(8))]
    assert 1 <= abs(len(child) - 8) <= 4
    one = search_layer_path(8, toy_reward, simulations=1, seed=0, root_block=1, progress=False)
    assert [abs(len(p) - 8) for p in one.rewards] == [0, 1]
    deep = search_layer_path(6, toy_reward, simulations=60, seed=1, progress=False)
    assert all(3 <= len(p) <= 9 for p in deep.rewards)  # defaults: [ceil(L/2), L + ceil(L/2)]
    assert {len(p) for p in deep.rewards} == set(range(3, 10))
    for name, kwargs in (
        ("min_length", dict(min_length=0)),
        ("max_length", dict(max_length=7)),
        ("simulations", dict(simulations=-1)),
        ("root_block", dict(root_block=0)),
    ):
        with pytest.raises(ValueError, match=name):
            search_layer_path(8, toy_reward, progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"model \(Linear\) is not a supported decoder"):
        search_layer_path(torch.nn.Linear(2, 2), toy_reward)


class CharTokenizer:
    """One token per character, id = ord(c) - 32: a bijection between the 96 ids and chr(32)..chr(127), so any
    generated token decodes to a text that encodes back to it."""

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        class Out:
            input_ids = torch.tensor([[ord(c) - 32 for c in text]])

        return Out

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i + 32) for i in ids.tolist())


def test_rewards_follow_the_path():
    model = tiny_llama(layers=3, eos_token_id=None)  # no early stop: always 3 answer tokens
    tok = CharTokenizer()
    path = [0, 2, 2]
    with torch.no_grad(), with_layer_path(model, path):
        ids = tok("hello").input_ids
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
        logits = model(torch.cat([ids, greedy[:, 5:]], 1)).logits[0].log_softmax(-1)
    answer = tok.decode(greedy[0, 5:])
    want = sum(logits[4 + i, greedy[0, 5 + i]].item() for i in range(3))
    assert answer_loglik_reward(model, tok, "hello", answer)(path) == pytest.approx(want, abs=1e-9)
    assert answer_match_reward(model, tok, "hello", answer)(path) == 1.0
    assert answer_checker_reward(model, tok, "hello", lambda text: text == answer, max_new_tokens=3)(path) == 1.0
    wrong = "".join(chr((ord(c) - 32 + 1) % 90 + 32) for c in answer)
    assert answer_match_reward(model, tok, "hello", wrong)(path) == 0.0


def test_command_line(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_seqmodels.commands.main import main

    text = " ".join(f"word{i % 37} and the {i % 11} of" for i in range(300))
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    model = tiny_llama(layers=3, dtype=torch.float32, vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    rows = [("word1 and the", "1 of"), ("word2 and", "the 2"), ("the 3 of", "word4")]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    out = tmp_path / "paths.json"
    argv = ["cola-search", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--simulations", "6", "--seed", "1", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["num_layers"] == 3 and len(result["items"]) == 3
    for item, (p, a) in zip(result["items"], rows):
        assert (item["prompt"], item["answer"]) == (p, a)
        assert item["reward"] >= item["base_reward"] and 2 <= item["length"] <= 5
        want = answer_loglik_reward(model, tokenizer, p, a)(item["path"])
        assert item["reward"] == pytest.approx(want, abs=1e-4)
    assert "3 items" in capsys.readouterr().out
    data.write_text('{"prompt": "x"}\n')
    with pytest.raises(SystemExit):
        main([*argv, "--no-progress"])
    assert "--data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--simulations", "-2"])
    assert "--simulations must be >= 0" in capsys.readouterr().err
    from hf_seqmodels import GLAConfig, GLAForCausalLM

    GLAForCausalLM(GLAConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_heads=2)).save_pretrained(
        tmp_path / "gla"
    )
    tokenizer.save_pretrained(tmp_path / "gla")
    data.write_text('{"prompt": "x", "answer": "y"}\n')
    with pytest.raises(SystemExit):
        main(["cola-search", "--model", str(tmp_path / "gla"), "--data", str(data), "--out", str(out)])
    assert "--model" in (err := capsys.readouterr().err) and "not a supported decoder family" in err
