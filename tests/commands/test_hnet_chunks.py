"""``hf-seqmodels hnet-chunks`` on tiny saved H-Nets (1 and 2 stages), and its per-character boundary mapping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hf_seqmodels import ByteTokenizer, HNetConfig, HNetForCausalLM
from hf_seqmodels.commands.main import main
from hf_seqmodels.models.hnet.chunks import chunk_strings, chunk_text

TEXT = "Hello, world! Byte-level models chunk text: café, naïve, 日本語."

TINY = dict(
    d_model=[32, 48],
    arch_layout=["m1", ["T1"], "m1"],
    d_intermediate=[0, 64],
    ssm_cfg={"d_state": 8, "head_dim": 16},
    attn_cfg={"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [15, -1]},
)
TINY_2STAGE = dict(
    d_model=[32, 48, 64],
    arch_layout=["m1", ["m1", ["T1"], "m1"], "m1"],
    d_intermediate=[0, 0, 64],
    ssm_cfg={"d_state": 8, "head_dim": 16},
    attn_cfg={"num_heads": [2, 2, 2], "rotary_emb_dim": [8, 8, 8], "window_size": [15, 15, -1]},
)


def _save(tmp_path, name, with_tokenizer=True, **cfg):
    model = HNetForCausalLM(HNetConfig(**cfg)).eval()
    folder = tmp_path / name
    model.save_pretrained(folder)
    if with_tokenizer:
        ByteTokenizer().save_pretrained(folder)
    return folder


def _chunk_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("name,cfg,stages,with_tok", [("one", TINY, 1, True), ("two", TINY_2STAGE, 2, False)])
def test_hnet_chunks_cli(tmp_path, capsys, one_thread, name, cfg, stages, with_tok):
    folder = _save(tmp_path, name, with_tokenizer=with_tok, **cfg)
    png, page = tmp_path / "out" / "chunks.png", tmp_path / "chunks.html"
    assert main(["hnet-chunks", "--model", str(folder), "--text", TEXT, "--out", str(png), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert page.read_text(encoding="utf-8").count("class='c'") > 0
    lines = _chunk_lines(out)
    assert len(lines) == stages
    pieces = [line[1:-1].split("|") for line in lines]
    for p in pieces:
        assert "".join(p) == TEXT  # every stage's chunks tile the text
    for outer, inner in zip(pieces, pieces[1:]):  # an inner chunk is a run of consecutive outer chunks
        bounds = lambda ps: {sum(len(x) for x in ps[:i]) for i in range(len(ps))}  # noqa: E731
        assert bounds(inner) <= bounds(outer)
    assert out.count("boundary fraction") == stages


def test_hnet_chunks_maps_boundaries_onto_characters():
    """A boundary on a continuation byte moves to its character's first byte and is reported; stage 1 maps back."""
    text = "aé日b"  # bytes: a | c3 a9 | e6 97 a5 | b ; with BOS in front: 8 tokens
    tokenizer = ByteTokenizer()
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == 8
    # stage 0 boundaries at: BOS, 'a', the 2nd byte of 'é' (straddles), the 1st byte of '日' (4 chunks)
    b0 = torch.tensor([[1, 1, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    # stage 1 over those 4 chunks: the BOS chunk and the one starting inside 'é'
    b1 = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)

    class Fake:
        config = SimpleNamespace(compression_ratio=[3.0, 2.0], boundary_router="learned")

        def eval(self):
            return self

        def __call__(self, input_ids, use_cache):
            assert input_ids.tolist() == [ids]
            return SimpleNamespace(
                boundary_masks=(b0, b1), stage_masks=(None, None), boundary_fractions=torch.tensor([4 / 8, 2 / 4])
            )

    chars, stages, n_bytes = chunk_text(Fake(), tokenizer, text)
    assert n_bytes == 7 and chars == list(text)
    assert chunk_strings(chars, stages[0]) == ["a", "é", "日b"]
    assert stages[0].straddled == [False, True, False, False]
    assert chunk_strings(chars, stages[1]) == ["a", "é日b"]  # 'é' chunk starts at a continuation byte -> straddled
    assert stages[1].straddled == [False, True, False, False]
    assert stages[1].target == pytest.approx(0.5)


def test_hnet_chunks_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["hnet-chunks", "--model", str(tmp_path / "missing"), "--text", "hi"])
    assert err.value.code == 2 and "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["hnet-chunks", "--model", str(tmp_path), "--text", ""])
    assert err.value.code == 2 and "--text is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["hnet-chunks", "--model", str(tmp_path), "--text", "hi"])
    assert err.value.code == 2 and "config.json" in capsys.readouterr().err
