"""HMT's settings (what ``attach_hmt`` adds around a causal LM), checked on construction, saved as JSON."""

from __future__ import annotations

import dataclasses
import json
import os

HMT_CONFIG_NAME = "hmt_config.json"


@dataclasses.dataclass(frozen=True)
class HMTConfig:
    """Hierarchical Memory Transformer (He et al., NAACL 2025, arXiv 2405.06067) around a pretrained decoder.

    - ``segment_length``: text tokens per segment (the reference's ``block_size``; its ``--segment_length`` flag
      counts the two memory embeddings and the sensory tokens too: ours + ``num_sensory`` + 2).
    - ``num_sensory``: tokens of the previous segment repeated in front of each segment (reference
      ``--num_sensory``, its ``n_prepend``), ``0 <= num_sensory <= segment_length``.
    - ``memory_depth``: memory embeddings that recall attends over (reference ``--mem_recall_context``,
      ``ltm_context``).
    - ``recall``: stage 2 (memory recall on) or stage 1 (off: the previous memory embedding is the next segment's
      prompt, RMT-style; reference ``--hmt_stage_1`` / ``--hmt_stage_2``). Switch with :func:`set_hmt_stage`.
    - ``recall_hidden_size``: width of recall's query/key projections (reference ``--mem_recall_hidden_dim``);
      ``None``: the model's hidden size.
    - ``summary_length``: tokens of a segment the summary pass reads (the reference's ``sum_fraction`` 0.5 of the
      segment: ``round(segment_length * 0.5)``); ``None``: ``segment_length // 2`` (at least 1).
    - ``bptt_segments``: training backpropagates through the last ``bptt_segments`` segments of a sequence: the
      memory embeddings written before them are detached (``None``: through all).
    - ``freeze_base``: freeze the base model's own weights on attach (a PEFT model keeps its adapters trainable).
    """

    segment_length: int = 256
    num_sensory: int = 32
    memory_depth: int = 100
    recall: bool = True
    recall_hidden_size: int | None = None
    summary_length: int | None = None
    bptt_segments: int | None = 2
    freeze_base: bool = True

    def __post_init__(self):
        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"HMTConfig: `{name}` must be an integer >= {low}, got {v!r}")

        integer("segment_length", 1)
        integer("num_sensory", 0)
        integer("memory_depth", 1)
        if self.num_sensory > self.segment_length:
            raise ValueError(
                f"HMTConfig: `num_sensory` ({self.num_sensory}) must be at most `segment_length` "
                f"({self.segment_length}): the sensory tokens are the tail of the previous segment"
            )
        for name in ("recall_hidden_size", "bptt_segments"):
            if getattr(self, name) is not None:
                integer(name, 1)
        if self.summary_length is not None:
            integer("summary_length", 1)
            if self.summary_length > self.segment_length:
                raise ValueError(
                    f"HMTConfig: `summary_length` ({self.summary_length}) must be at most `segment_length` "
                    f"({self.segment_length})"
                )
        for name in ("recall", "freeze_base"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"HMTConfig: `{name}` must be True or False, got {getattr(self, name)!r}")

    @property
    def summary_tokens(self) -> int:
        return self.summary_length if self.summary_length is not None else max(1, self.segment_length // 2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HMTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"HMTConfig: unknown fields {unknown} (known: {sorted(names)})")
        return cls(**d)

    def save_pretrained(self, directory, **extra) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, HMT_CONFIG_NAME), "w") as f:
            json.dump({**self.to_dict(), **extra}, f, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory) -> tuple[HMTConfig, dict]:
        """(config, the extra entries saved beside it: ``hidden_size``, ``base_model_name_or_path``)."""
        path = os.path.join(directory, HMT_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_hmt: no {HMT_CONFIG_NAME} in {directory}")
        with open(path) as f:
            d = json.load(f)
        extra = {k: d.pop(k) for k in ("hidden_size", "base_model_name_or_path", "recall_width") if k in d}
        return cls.from_dict(d), extra
