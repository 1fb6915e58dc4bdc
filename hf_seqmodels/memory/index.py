"""The hierarchical memory index: embeddings -> hierarchical k-means -> per-level cluster paths.

``build_memory_index(texts, levels=3, branching=16, embedder=None, window=1024, seed=0)`` cuts every text into
windows of ``window`` characters, embeds them, and clusters hierarchically: the windows are split into
``branching`` clusters, each cluster again into ``branching`` sub-clusters, ``levels`` times. Level ``l``
(1-based) has ``branching ** l`` clusters; cluster ``c`` at level ``l`` has the children
``c * branching .. c * branching + branching - 1`` at level ``l + 1``.

k-means (per node): k-means++ seeding from a ``torch.Generator`` seeded with ``seed`` (deterministic), then Lloyd
iterations whose assignment step is **capacity-constrained** (the balancing rule): each child takes at most
``ceil(balance * n / k)`` points (``balance`` 1.5 by default); points are assigned in order of increasing distance
to their nearest centroid with room, so no cluster swallows the node. A child left empty is re-seeded with the point
farthest from its centroid in the largest child (a split). A node with fewer points than ``branching`` gives every
point its own child and marks the remaining children *invalid* (never routed to; their blocks stay untrained).

Routing (:meth:`MemoryIndex.route`) is greedy descent: at each level, the nearest valid child (squared Euclidean
distance on the L2-normalized embeddings) of the cluster chosen one level up. A text is routed on its first
``window`` characters. ``route`` returns a LongTensor ``[N, levels]`` of cluster ids (level ``l`` in
``[0, branching ** l)``); a row of ``-1`` denotes the generic memory.

Saved as ``memory_index.safetensors`` (centroids and validity per level) + ``memory_index.json`` (levels, branching,
window, seed, the embedder's spec: name and dimension). No pickle.
"""

from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .embedders import embedder_from_spec, resolve_embedder

INDEX_TENSORS = "memory_index.safetensors"
INDEX_JSON = "memory_index.json"
GENERIC = -1


def _kmeans_pp(x, k, gen):
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    cent = [x[first]]
    d2 = ((x - cent[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=gen))
        cent.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    return torch.stack(cent)


def _capacity_assign(dist, capacity):
    """Assign each row of ``dist [n, k]`` to a column, at most ``capacity`` rows per column, greedily by distance."""
    n, k = dist.shape
    order = torch.argsort(dist.reshape(-1), stable=True)
    assign = torch.full((n,), -1, dtype=torch.long)
    counts = [0] * k
    remaining = n
    rows, cols = (order // k).tolist(), (order % k).tolist()
    a = assign.tolist()
    for r, c in zip(rows, cols):
        if a[r] >= 0 or counts[c] >= capacity:
            continue
        a[r] = c
        counts[c] += 1
        remaining -= 1
        if remaining == 0:
            break
    return torch.tensor(a, dtype=torch.long)


def kmeans(x, k, gen, iters=20, balance=1.5):
    """Balanced k-means of ``x [n, dim]`` into ``k`` clusters (n >= k). Returns ``(centroids [k, dim], assign [n])``."""
    n = x.shape[0]
    capacity = max(1, math.ceil(balance * n / k))
    cent = _kmeans_pp(x, k, gen)
    assign = None
    for _ in range(iters):
        dist = torch.cdist(x, cent) ** 2
        new = _capacity_assign(dist, capacity)
        counts = torch.bincount(new, minlength=k)
        for c in torch.nonzero(counts == 0).flatten().tolist():  # split the largest cluster
            big = int(torch.argmax(counts))
            members = torch.nonzero(new == big).flatten()
            far = members[torch.argmax(((x[members] - cent[big]) ** 2).sum(1))]
            new[far] = c
            counts = torch.bincount(new, minlength=k)
        for c in range(k):
            cent[c] = x[new == c].mean(0)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
    return cent, assign


class MemoryIndex:
    """Centroids of a hierarchical k-means, per level, and the embedder that produced the space."""

    def __init__(self, centroids, valid, branching, embedder_spec, window=1024, seed=0, embedder=None):
        self.centroids = [c.float().contiguous() for c in centroids]  # level l: [branching**l, dim]
        self.valid = [v.bool().contiguous() for v in valid]
        self.branching = int(branching)
        self.levels = len(self.centroids)
        self.embedder_spec = dict(embedder_spec)
        self.window = window
        self.seed = seed
        self._embedder = embedder
        for l, (c, v) in enumerate(zip(self.centroids, self.valid)):
            if c.shape != (self.branching ** (l + 1), self.dim) or v.shape != (c.shape[0],):
                raise ValueError(
                    f"MemoryIndex: level {l + 1} centroids must be [{self.branching ** (l + 1)}, {self.dim}], got "
                    f"{tuple(c.shape)} (valid {tuple(v.shape)})"
                )

    @property
    def dim(self) -> int:
        return int(self.embedder_spec["dim"])

    @property
    def embedder_name(self) -> str:
        return self.embedder_spec["name"]

    def embedder(self, model=None, tokenizer=None):
        if self._embedder is None:
            self._embedder = embedder_from_spec(self.embedder_spec, model=model, tokenizer=tokenizer)
        return self._embedder

    def set_embedder(self, embedder) -> None:
        if embedder.name != self.embedder_name or embedder.dim != self.dim:
            raise ValueError(
                f"MemoryIndex: built with embedder {self.embedder_name!r} (dim {self.dim}), got {embedder.name!r} "
                f"(dim {embedder.dim})"
            )
        self._embedder = embedder

    # -- routing ------------------------------------------------------------------------------------------------
    def route_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        if emb.dim() != 2 or emb.shape[1] != self.dim:
            raise ValueError(
                f"MemoryIndex.route: embeddings must be [N, {self.dim}] (embedder {self.embedder_name!r}), got "
                f"{tuple(emb.shape)}"
            )
        emb = emb.float().cpu()
        N, k = emb.shape[0], self.branching
        paths = torch.empty(N, self.levels, dtype=torch.long)
        parent = torch.zeros(N, dtype=torch.long)
        for l in range(self.levels):
            children = (parent * k).unsqueeze(1) + torch.arange(k) if l > 0 else torch.arange(k).expand(N, k)
            d2 = ((self.centroids[l][children] - emb.unsqueeze(1)) ** 2).sum(-1)
            d2 = d2.masked_fill(~self.valid[l][children], float("inf"))
            parent = children.gather(1, d2.argmin(1, keepdim=True)).squeeze(1)
            paths[:, l] = parent
        return paths

    def embed(self, texts, progress=False, model=None, tokenizer=None):
        texts = [t[: self.window] if self.window else t for t in texts]
        return self.embedder(model, tokenizer).embed(texts, progress=progress)

    def route(self, texts_or_embeddings, progress=False) -> torch.Tensor:
        """Cluster path ``[N, levels]`` of each text (its first ``window`` characters) or embedding row."""
        if isinstance(texts_or_embeddings, str):
            texts_or_embeddings = [texts_or_embeddings]
        if isinstance(texts_or_embeddings, torch.Tensor):
            return self.route_embeddings(texts_or_embeddings)
        return self.route_embeddings(self.embed(list(texts_or_embeddings), progress=progress))

    # -- save / load ----------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format_version": 1,
            "levels": self.levels,
            "branching": self.branching,
            "window": self.window,
            "seed": self.seed,
            "embedder": self.embedder_spec,
        }

    def save_pretrained(self, directory) -> None:
        os.makedirs(directory, exist_ok=True)
        tensors = {}
        for l in range(self.levels):
            tensors[f"centroids.level{l + 1}"] = self.centroids[l]
            tensors[f"valid.level{l + 1}"] = self.valid[l].to(torch.uint8)
        save_file(tensors, os.path.join(directory, INDEX_TENSORS), metadata={"format": "pt"})
        with open(os.path.join(directory, INDEX_JSON), "w") as f:
            json.dump(self.to_json(), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory) -> "MemoryIndex":
        jpath, tpath = os.path.join(directory, INDEX_JSON), os.path.join(directory, INDEX_TENSORS)
        for p in (jpath, tpath):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"memory index file {os.path.basename(p)} missing in {directory}")
        try:
            with open(jpath) as f:
                meta = json.load(f)
            tensors = load_file(tpath)
        except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt index
            raise ValueError(f"memory index in {directory} is corrupt: {type(e).__name__}: {e}") from None
        try:
            levels = meta["levels"]
            cents = [tensors[f"centroids.level{l + 1}"] for l in range(levels)]
            valid = [tensors[f"valid.level{l + 1}"] for l in range(levels)]
            return cls(cents, valid, meta["branching"], meta["embedder"], meta.get("window"), meta.get("seed"))
        except KeyError as e:
            raise ValueError(f"memory index in {directory} lacks {e}") from None


def build_memory_index(
    texts,
    levels=3,
    branching=16,
    embedder=None,
    window=1024,
    seed=0,
    model=None,
    tokenizer=None,
    iters=20,
    balance=1.5,
    progress=True,
    embed_dim=256,
) -> MemoryIndex:
    """Embed the texts' windows and cluster them hierarchically; see the module docstring.

    ``embedder``: None (anchor mean-pooling when ``model`` and ``tokenizer`` are given, else the hashed byte-n-gram
    embedder of ``embed_dim`` dimensions), a name (``"hashed-ngram"``, ``"anchor"``, ``"all-MiniLM-L6-v2"``), an
    embedder object, or precomputed embeddings (a tensor ``[N, dim]``; then pass an embedder object too, or the
    index can only route embeddings).
    """
    if levels < 1 or branching < 2:
        raise ValueError(f"build_memory_index: need levels >= 1 and branching >= 2, got {levels}, {branching}")
    emb_obj = resolve_embedder(embedder, model=model, tokenizer=tokenizer, dim=embed_dim)
    if isinstance(texts, str):
        texts = [texts]
    windows = []
    for t in texts:
        if window:
            windows.extend(t[i : i + window] for i in range(0, max(len(t), 1), window))
        else:
            windows.append(t)
    if not windows:
        raise ValueError("build_memory_index: no texts")
    x = emb_obj.embed(windows, progress=progress).float()
    # Identical windows are clustered once: the balancing cap would otherwise split copies of one point over
    # clusters with the same centroid, and routing (nearest centroid) would never reach all but one of them.
    x = torch.unique(x, dim=0)
    gen = torch.Generator().manual_seed(seed)
    centroids, valid = [], []
    members = [torch.arange(x.shape[0])]  # members of each node of the previous level
    parent_cent = x.mean(0, keepdim=True)
    for l in range(levels):
        n_nodes = branching**l
        cent = torch.empty(n_nodes * branching, x.shape[1])
        val = torch.zeros(n_nodes * branching, dtype=torch.bool)
        child_members = []
        for node in tqdm(range(n_nodes), desc=f"clustering level {l + 1}/{levels}", disable=not progress, leave=False):
            idx = members[node]
            lo = node * branching
            cent[lo : lo + branching] = parent_cent[node]
            if len(idx) >= branching:
                c, a = kmeans(x[idx], branching, gen, iters=iters, balance=balance)
                cent[lo : lo + branching] = c
                val[lo : lo + branching] = True
                child_members.extend(idx[a == j] for j in range(branching))
            else:
                cent[lo : lo + len(idx)] = x[idx]
                val[lo : lo + len(idx)] = True
                child_members.extend([idx[j : j + 1] for j in range(len(idx))] + [idx[:0]] * (branching - len(idx)))
        centroids.append(cent)
        valid.append(val)
        members, parent_cent = child_members, cent
    return MemoryIndex(centroids, valid, branching, emb_obj.spec(), window=window, seed=seed, embedder=emb_obj)
