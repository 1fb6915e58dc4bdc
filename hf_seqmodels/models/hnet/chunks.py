"""How a saved H-Net chunks a text, per stage, as text, a PNG and an HTML page (``hf-seqmodels hnet-chunks``).

Stage 0 chunks the bytes; stage ``s + 1`` chunks the chunks of stage ``s``, and its boundaries are mapped back onto
the bytes where those chunks begin, so every stage is drawn over the same text. Boundaries are drawn per character:
a character whose UTF-8 bytes straddle a boundary (one that falls on a continuation byte) starts its chunk at the
character's first byte and is marked (underlined in the PNG, dotted outline in the HTML, counted in the text output).
The tokenizer's special tokens (the BOS in front) are run through the model but not drawn.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

#: chunk colours, cycled (adjacent chunks always differ); light enough for black text
PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9", "#ccebc5"]
_VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


@dataclass
class StageChunks:
    """One stage's chunking of the text, per character."""

    stage: int
    starts: list[bool]  # per character: it begins a chunk
    straddled: list[bool]  # per character: a boundary fell inside its bytes (moved to its first byte)
    fraction: float  # the model's boundary fraction for this stage (over every input token, BOS included)
    target: float | None  # 1/N for a learned stage, None for the fixed word router
    learned: bool = True
    chunk_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        ids, current = [], -1
        for s in self.starts:
            current += bool(s) or current < 0
            ids.append(current)
        self.chunk_ids = ids

    @property
    def num_chunks(self) -> int:
        return (self.chunk_ids[-1] + 1) if self.chunk_ids else 0


def chunk_text(model, tokenizer, text: str, device: str = "cpu") -> tuple[list[str], list[StageChunks], int]:
    """(characters, per-stage chunks, number of text bytes) of ``text`` under ``model``'s boundaries."""
    import torch

    if not text:
        raise ValueError("`text` is empty: give some text to chunk")
    data = text.encode("utf-8")
    ids = list(tokenizer(text)["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    positions = [i for i, t in enumerate(ids) if t not in special]  # input positions of the text's bytes
    if [ids[i] for i in positions] != list(data):
        raise ValueError(
            f"the tokenizer of {type(tokenizer).__name__} does not encode the text as its UTF-8 bytes; "
            "hnet-chunks needs a byte tokenizer (ByteTokenizer)"
        )
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    T = len(ids)
    # where each stage's sequence elements begin, as input positions: stage 0 = every token, stage s+1 = the chunk
    # starts of stage s. Inner sequences are right-aligned (padding first): their real entries are in order.
    seq_pos = list(range(T))
    per_stage_bytes = []
    for s, b in enumerate(out.boundary_masks):
        b = b[0].tolist()
        mask = out.stage_masks[s]
        real = [True] * len(b) if mask is None else mask[0].tolist()
        b = [bi for bi, r in zip(b, real) if r]
        if len(b) != len(seq_pos):
            raise RuntimeError(f"stage {s}: {len(b)} boundary flags for {len(seq_pos)} sequence elements")
        starts = [p for p, bi in zip(seq_pos, b) if bi]
        at = set(starts)
        per_stage_bytes.append([positions[j] in at for j in range(len(data))])
        seq_pos = starts

    # characters and their byte spans
    chars, first_byte = list(text), []
    offset = 0
    for c in chars:
        first_byte.append(offset)
        offset += len(c.encode("utf-8"))
    first_byte.append(offset)
    config = model.config
    fractions = out.boundary_fractions.tolist()
    stages = []
    for s, bb in enumerate(per_stage_bytes):
        starts, straddled = [], []
        for k in range(len(chars)):
            span = bb[first_byte[k] : first_byte[k + 1]]
            starts.append(k == 0 or any(span))
            straddled.append(any(span[1:]))
        learned = not (s == 0 and getattr(config, "boundary_router", "learned") == "word")
        target = 1.0 / config.compression_ratio[s] if learned else None
        stages.append(StageChunks(s, starts, straddled, fractions[s], target, learned))
    return chars, stages, len(data)


def chunk_strings(chars: list[str], stage: StageChunks) -> list[str]:
    pieces: list[list[str]] = []
    for c, start in zip(chars, stage.starts):
        if start or not pieces:
            pieces.append([])
        pieces[-1].append(c)
    return ["".join(p) for p in pieces]


def format_chunks(chars: list[str], stage: StageChunks) -> str:
    """``|Hello,| world|`` (newlines, tabs and carriage returns escaped)."""
    body = "|".join("".join(_ESCAPES.get(c, c) for c in piece) for piece in chunk_strings(chars, stage))
    return f"|{body}|"


def describe_stage(stage: StageChunks, n_bytes: int) -> str:
    target = "fixed word-boundary router" if not stage.learned else f"target 1/N = {stage.target:.3f}"
    unit = "bytes" if stage.stage == 0 else f"stage-{stage.stage - 1} chunks"
    return (
        f"stage {stage.stage}: {stage.num_chunks} chunks over {n_bytes} bytes, boundary fraction "
        f"{stage.fraction:.3f} of its {unit} ({target})"
    )


def write_png(
    path: str, chars: list[str], stages: list[StageChunks], n_bytes: int, title: str, width: int = 80
) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    # break the text into display lines: at newlines (drawn as a visible mark) and every `width` characters
    lines, cur = [], []
    for k, c in enumerate(chars):
        cur.append(k)
        if c == "\n" or len(cur) == width:
            lines.append(cur)
            cur = []
    if cur:
        lines.append(cur)
    cols = max(len(line) for line in lines)
    cw, ch, gap = 0.14, 0.32, 0.45  # inches: cell width, cell height, space for a stage's heading
    height = 0.45 + len(stages) * (gap + len(lines) * ch) + 0.1
    fig = plt.figure(figsize=(max(4.0, cols * cw + 0.4), height))
    ax = fig.add_axes([0, 0, 1, 1])
    W, H = fig.get_size_inches()
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.axis("off")
    ax.text(0.2, 0.28, title, fontsize=9, fontweight="bold", va="center")
    y = 0.45
    for stage in stages:
        ax.text(0.2, y + gap * 0.55, describe_stage(stage, n_bytes), fontsize=8, va="center")
        y += gap
        for line in lines:
            for col, k in enumerate(line):
                x = 0.2 + col * cw
                colour = PALETTE[stage.chunk_ids[k] % len(PALETTE)]
                ax.add_patch(Rectangle((x, y + 0.03), cw, ch - 0.06, facecolor=colour, edgecolor="none"))
                if stage.starts[k]:
                    ax.plot([x, x], [y + 0.03, y + ch - 0.03], color="#333333", lw=0.8)
                if stage.straddled[k]:
                    ax.plot([x + 0.01, x + cw - 0.01], [y + ch - 0.05] * 2, color="#d62728", lw=1.5)
                c = chars[k]
                ax.text(
                    x + cw / 2,
                    y + ch / 2,
                    _VISIBLE.get(c, c),
                    fontsize=8,
                    family="DejaVu Sans Mono",
                    ha="center",
                    va="center",
                    color="#777777" if c in _VISIBLE else "black",
                )
            y += ch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs a font lacks (e.g. CJK) are drawn as boxes, not worth a warning
        fig.savefig(path, dpi=150)
    plt.close(fig)


def write_html(path: str, chars: list[str], stages: list[StageChunks], n_bytes: int, title: str) -> None:
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>H-Net chunks</title><style>",
        "body{font-family:sans-serif;margin:1.5em} pre{font-family:'DejaVu Sans Mono',monospace;font-size:14px;"
        "line-height:1.9;white-space:pre-wrap} .c{border-left:1px solid #333;padding:2px 0}"
        " .s{outline:1px dotted #d62728} h2{font-size:15px;margin:1.2em 0 0.2em}",
        "</style></head><body>",
        f"<h1 style='font-size:17px'>{html.escape(title)}</h1>",
    ]
    for stage in stages:
        parts.append(f"<h2>{html.escape(describe_stage(stage, n_bytes))}</h2><pre>")
        pieces, start = [], 0
        for k in range(1, len(chars) + 1):
            if k == len(chars) or stage.starts[k]:
                pieces.append((start, k))
                start = k
        for j, (a, b) in enumerate(pieces):
            inner = "".join(
                f"<span class='s' title='a chunk boundary fell inside this character'>{html.escape(chars[k])}</span>"
                if stage.straddled[k]
                else html.escape(chars[k])
                for k in range(a, b)
            )
            n = sum(len(c.encode("utf-8")) for c in chars[a:b])
            parts.append(
                f"<span class='c' style='background:{PALETTE[j % len(PALETTE)]}' "
                f"title='chunk {j}, {n} bytes'>{inner}</span>"
            )
        parts.append("</pre>")
    parts.append("</body></html>\n")
    Path(path).write_text("".join(parts), encoding="utf-8")
