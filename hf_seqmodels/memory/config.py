"""``MemoryBankConfig``: the shape of a hierarchical memory bank and how it is trained.

Size arithmetic (the paper's): a block of inner size ``s`` in a layer of width ``d`` holds ``3 * s * d``
parameters (SwiGLU gate, up and down). Level ``l`` (1-based) has ``branching ** l`` clusters, one block each, so

- bank parameters      = sum_l s_l * branching**l * 3 * d * n_memory_layers
- fetched per sequence = sum_l s_l * 3 * d * n_memory_layers   (one block per level on the sequence's path)

For the paper's 160M anchor (35 layers, d 512, blocks (256, 64, 16, 0), branching 16): fetched
(256+64+16)*3*512*35 = 18.06M, bank (256*16 + 64*256 + 16*4096)*3*512*35 = 4.62B. The generic
(context-independent) memory adds one more block per level (sum_l s_l * 3 * d per layer); it is left out of
``bank_parameters`` unless ``include_generic=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from hf_seqmodels.layers.checks import check_bool, check_int, check_number

CONFIG_NAME = "memory_config.json"
FORMAT_VERSION = 1


@dataclass
class MemoryBankConfig:
    """Configuration of a hierarchical FFN memory bank.

    - ``block_sizes``: inner (SwiGLU) size of one block per level, top level first, e.g. ``(64, 16, 4)``; 0 means no
      memory at that level. ``levels`` is ``len(block_sizes)`` (passing ``levels`` is a check).
    - ``branching``: clusters per node of the hierarchical index (level ``l`` has ``branching ** l`` clusters).
    - ``layers``: ``"all"`` or a list of decoder-layer indices that get a memory branch.
    - ``generic_memory_prob``: in training, the probability that a sample uses the generic (context-independent)
      memory instead of its fetched blocks (the paper: 1/17).
    - ``memory_lr`` / ``memory_weight_decay``: used by :func:`memory_parameter_groups` (paper: 1e-4 / 1e-3).
    - ``freeze_anchor``: attach freezes every anchor parameter (train the bank only) when True; co-train when False.
    - ``embedder``: name of the embedder the index must have been built with (``None``: take the index's).
    - ``init_std``: std of the gate/up block initialization (default ``d ** -0.5``); down blocks start at zero.
    """

    block_sizes: tuple = (64, 16, 4)
    branching: int = 16
    layers: object = "all"
    generic_memory_prob: float = 1.0 / 17.0
    memory_lr: float = 1e-4
    memory_weight_decay: float = 1e-3
    freeze_anchor: bool = True
    embedder: str | None = None
    init_std: float | None = None
    levels: int | None = None
    format_version: int = field(default=FORMAT_VERSION)

    def __post_init__(self):
        if not isinstance(self.block_sizes, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in self.block_sizes
        ):
            raise TypeError(f"MemoryBankConfig: `block_sizes` must be a sequence of ints, got {self.block_sizes!r}")
        self.block_sizes = tuple(int(s) for s in self.block_sizes)
        if not self.block_sizes or any(s < 0 for s in self.block_sizes) or sum(self.block_sizes) == 0:
            raise ValueError(
                "MemoryBankConfig: `block_sizes` must be non-negative with at least one level > 0, got "
                f"{self.block_sizes}"
            )
        if self.levels is not None and self.levels != len(self.block_sizes):
            raise ValueError(
                f"MemoryBankConfig: `levels`={self.levels} does not match the {len(self.block_sizes)} entries of "
                f"`block_sizes` {self.block_sizes}"
            )
        self.levels = len(self.block_sizes)
        check_int("MemoryBankConfig", "branching", self.branching, minimum=2)
        if self.layers != "all":
            if not isinstance(self.layers, (list, tuple, range)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layers
            ):
                raise TypeError(f"MemoryBankConfig: `layers` must be 'all' or a list of ints, got {self.layers!r}")
            self.layers = sorted(set(int(i) for i in self.layers))
            if not self.layers:
                raise ValueError("MemoryBankConfig: `layers` is empty")
            if self.layers[0] < 0:
                raise ValueError(f"MemoryBankConfig: `layers` must be layer indices >= 0, got {self.layers}")
        check_number(
            "MemoryBankConfig",
            "generic_memory_prob",
            self.generic_memory_prob,
            positive=False,
            minimum=0.0,
            maximum=1.0,
        )
        check_number("MemoryBankConfig", "memory_lr", self.memory_lr)
        check_number("MemoryBankConfig", "memory_weight_decay", self.memory_weight_decay, positive=False, minimum=0.0)
        check_number("MemoryBankConfig", "init_std", self.init_std, allow_none=True)
        check_bool("MemoryBankConfig", "freeze_anchor", self.freeze_anchor)
        if self.embedder is not None and not isinstance(self.embedder, str):
            raise TypeError(f"MemoryBankConfig: `embedder` must be a name (str) or None, got {self.embedder!r}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"MemoryBankConfig: unsupported format_version {self.format_version} (this code reads {FORMAT_VERSION})"
            )

    # -- sizes ---------------------------------------------------------------------------------------------------
    def clusters(self, level: int) -> int:
        """Number of clusters (blocks) at ``level`` (1-based)."""
        return self.branching**level

    @property
    def fetched_inner_size(self) -> int:
        """Inner size of the fetched memory FFN of one layer: ``sum(block_sizes)``."""
        return sum(self.block_sizes)

    def layer_indices(self, num_layers: int) -> list[int]:
        if self.layers == "all":
            return list(range(num_layers))
        bad = [i for i in self.layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"MemoryBankConfig: `layers` {bad} out of range for a model with {num_layers} layers")
        return list(self.layers)

    def _n_layers(self, num_layers):
        return len(self.layer_indices(num_layers)) if self.layers == "all" else len(self.layers)

    def bank_parameters(self, hidden_size: int, num_layers: int, include_generic: bool = False) -> int:
        per_layer = sum(s * self.clusters(l + 1) for l, s in enumerate(self.block_sizes))
        if include_generic:
            per_layer += self.fetched_inner_size
        return per_layer * 3 * hidden_size * self._n_layers(num_layers)

    def fetched_parameters(self, hidden_size: int, num_layers: int) -> int:
        return self.fetched_inner_size * 3 * hidden_size * self._n_layers(num_layers)

    def size_report(self, hidden_size: int, num_layers: int) -> dict:
        return {
            "bank_parameters": self.bank_parameters(hidden_size, num_layers),
            "fetched_parameters": self.fetched_parameters(hidden_size, num_layers),
            "generic_parameters": self.fetched_parameters(hidden_size, num_layers),
            "clusters_per_level": [self.clusters(l + 1) for l in range(self.levels)],
            "memory_layers": self._n_layers(num_layers),
        }

    # -- (de)serialization ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_sizes"] = list(self.block_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryBankConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MemoryBankConfig: unknown fields {unknown}")
        return cls(**d)

    def save_pretrained(self, directory) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory) -> "MemoryBankConfig":
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no memory bank config {CONFIG_NAME} in {directory}")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d)
