"""The README's code runs as written: every ```python block is executed (in a fresh namespace, in a temporary
folder), except those marked on the line above with ``<!-- readme-test: skip: REASON -->`` (a Hub download, a GPU,
minutes of CPU); those are still compiled and checked for names used but never defined. The ``hf-seqmodels`` lines of
the bash blocks name only commands and flags that exist."""

from __future__ import annotations

import argparse
import ast
import builtins
import re
import shlex
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:?\s*(.*?)\s*-->")


def _blocks(language: str):
    """(heading, index under it, code, skip reason or None) of every fenced block in ``language``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    out, heading, count, i = [], "top", {}, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.strip().startswith("```"):
            lang = line.strip()[3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
            if lang == language:
                skip = SKIP.search(lines[i - 1]) if i else None
                count[heading] = count.get(heading, 0) + 1
                out.append(
                    (
                        heading,
                        count[heading],
                        "\n".join(lines[i + 1 : end]) + "\n",
                        skip.group(1) or "marked skip" if skip else None,
                    )
                )
            i = end
        i += 1
    return out


PYTHON_BLOCKS = _blocks("python")


def _ids(blocks):
    return [f"{re.sub(r'[^a-z0-9]+', '-', h.lower()).strip('-')}-{n}" for h, n, *_ in blocks]


def _undefined_names(code: str) -> set[str]:
    """Names loaded but never bound anywhere in the block (flow-insensitive: a cheap pyflakes)."""
    tree = ast.parse(code)
    bound, loaded = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def test_the_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 6
    assert sum(skip is None for *_, skip in PYTHON_BLOCKS) >= 5, "most README snippets must run"


@pytest.mark.parametrize("heading, n, code, skip", PYTHON_BLOCKS, ids=_ids(PYTHON_BLOCKS))
def test_readme_python_block_defines_what_it_uses(heading, n, code, skip):
    compile(code, f"README.md [{heading} #{n}]", "exec")
    missing = _undefined_names(code)
    assert not missing, f"README block {heading!r} #{n} uses names it never defines or imports: {sorted(missing)}"


#: what each README block left defined when it ran, (heading, n) -> namespace (the snippets' objects, for the checks
#: that follow the runs)
_NAMESPACES: dict = {}


@pytest.mark.parametrize("heading, n, code, skip", PYTHON_BLOCKS, ids=_ids(PYTHON_BLOCKS))
def test_readme_python_block_runs(heading, n, code, skip, tmp_path, monkeypatch, one_thread):
    if skip:
        pytest.skip(f"README block {heading!r} #{n}: {skip}")
    _NAMESPACES[heading, n] = _run_block(heading, n, code, tmp_path, monkeypatch)


def _run_block(heading, n, code, folder, monkeypatch) -> dict:
    monkeypatch.chdir(folder)  # the snippets save folders such as my-gla/: here, not in the checkout
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    namespace = {"__name__": f"readme_block_{n}"}
    from hf_seqmodels.layers.pararnn import BUILTIN_CELLS, CELLS

    # the snippets register cells (register_cell) as a fresh session would: from the built-in registry, restored
    # afterwards for the tests that follow (examples/ registers a cell of the same name)
    registered = dict(CELLS)
    for name in [n for n in CELLS if n not in BUILTIN_CELLS]:
        del CELLS[name]
    try:
        exec(compile(code, f"README.md [{heading} #{n}]", "exec"), namespace)  # noqa: S102
    finally:
        CELLS.clear()
        CELLS.update(registered)
    return namespace


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def test_readme_models_and_tokenizers_agree_on_special_tokens(tmp_path, monkeypatch, one_thread):
    """A snippet that builds a model (or a config) and a tokenizer gives both the same bos/eos/pad ids: the memory
    quick start once paired a GLAConfig (bos 1, eos 2) with the ByteTokenizer (bos 254, eos 255), and its generate()
    never stopped at <eos>. Every model's config and generation config is compared with every tokenizer."""
    from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    pairs = 0
    for i, (heading, n, code, skip) in enumerate(PYTHON_BLOCKS):
        if skip:
            continue
        if (heading, n) not in _NAMESPACES:  # (this test run alone)
            (tmp_path / str(i)).mkdir()
            _NAMESPACES[heading, n] = _run_block(heading, n, code, tmp_path / str(i), monkeypatch)
        configs, tokenizers = {}, {}
        for name, value in _NAMESPACES[heading, n].items():
            if isinstance(value, PreTrainedTokenizerBase):
                tokenizers[name] = value
            elif isinstance(value, (PretrainedConfig, GenerationConfig)):
                configs[name] = value
            elif isinstance(value, PreTrainedModel):
                configs[f"{name}.config"], configs[f"{name}.generation_config"] = value.config, value.generation_config
        for cname, config in configs.items():
            for tname, tokenizer in tokenizers.items():
                want = {k: getattr(tokenizer, k) for k in SPECIAL_IDS}
                got = {k: getattr(config, k, None) for k in SPECIAL_IDS}
                assert got == want, f"README block {heading!r} #{n}: {cname} has {got}, the tokenizer {tname} {want}"
                pairs += 1
    assert pairs >= 4, "the H-Net and memory quick starts each pair a model with a tokenizer"


def _subcommands():
    from hf_seqmodels.commands.main import build_parser

    def walk(parser, path):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, (*path, name))

    return dict(walk(build_parser(), ()))


def test_readme_command_lines_name_real_commands_and_flags():
    parsers = _subcommands()
    checked = 0
    for heading, n, code, _ in _blocks("bash"):
        text = code.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("hf-seqmodels"):
                continue
            words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))[1:]
            path = ()
            while words and (*path, words[0]) in parsers:
                path, words = (*path, words[0]), words[1:]
            assert path or words and words[0].startswith("--"), (
                f"README ({heading}): {line!r} names no hf-seqmodels command"
            )
            known = set(parsers[path]._option_string_actions)
            flags = {w.split("=")[0] for w in words if w.startswith("--")}
            assert flags <= known, f"README ({heading}): {line!r} uses unknown flags {sorted(flags - known)}"
            checked += 1
    assert checked >= 6


def test_readme_linearize_block_runs_on_a_tiny_llama(tmp_path, monkeypatch, one_thread):
    """The skipped linearize block, with a tiny Llama folder for the Hub id and short runs for its step counts: its
    calls and names are those of the real API (the README once called attention_transfer on a Liger model)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    ((heading, n, code, skip),) = [b for b in PYTHON_BLOCKS if "hf_seqmodels.linearize(" in b[2]]
    assert skip, "the linearize block runs as is: this test can go"
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=0,
        )
    ).save_pretrained(folder)
    vocab = {chr(i): i for i in range(32, 128)}
    vocab["[UNK]"] = 0
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)
    (tmp_path / "train.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    small = code
    for old, new in (
        ('"HuggingFaceTB/SmolLM2-135M"', repr(str(folder))),
        ("steps=200", "steps=2"),
        ("seq_len=512", "seq_len=16"),
    ):
        assert old in small, f"the README linearize block no longer holds {old!r}: update this test"
        small = small.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_linearize"}
    exec(compile(small, f"README.md [{heading} #{n}, tiny]", "exec"), namespace)  # noqa: S102
    assert type(namespace["model"]).__name__ == "LizardForCausalLM"
    assert (tmp_path / namespace["out"] / "model.safetensors").is_file()
