"""Long-tail knowledge with hierarchical memory banks (arXiv 2510.02375): accuracy per fact frequency, on the CPU.

    .venv/bin/python -m benchmarks.memory_longtail                      # everything, sequentially, then the report
    .venv/bin/python -m benchmarks.memory_longtail --stage a &          # or one model per process (same data,
    .venv/bin/python -m benchmarks.memory_longtail --stage b &          #  same batches), then
    .venv/bin/python -m benchmarks.memory_longtail --stage c & wait
    .venv/bin/python -m benchmarks.memory_longtail --stage report       # table + memory_longtail.{json,png}

Corpus (``make_corpus(seed=0)``, pure Python ``random.Random(seed)``, everything below at the defaults)
-----------------------------------------------------------------------------------------------------
- ``--entities 220`` invented people. Names are built from 30 consonant-vowel(-consonant) syllables
  (first name 2 syllables, surname 2-3 syllables, e.g. "Velora Tashkin"; all distinct), so no model has seen them.
  Each person has a profession (one of 8: painter, sailor, chemist, weaver, astronomer, baker, poet, surveyor) and
  four facts: **year** (birth year, uniform 1650-1949), **city** (home town, one of 40 invented syllable-built
  towns), **colour** (favourite colour, one of 16) and **number** (how many goats they kept, 2-99).
- Heavy-tailed frequencies: person ``i`` (random order) gets ``n_i = floor(exp(u_i * ln(--max-docs + 1)))`` documents,
  ``u_i ~ U(0, 1)``: a log-uniform law on ``1 .. --max-docs`` (80), i.e. P(n) ~ 1/n (Zipf's law in its
  frequency-of-frequencies form). Each document is a short biography: an opening sentence naming the person and the
  profession (4 templates), **two** of the four facts (chosen uniformly without replacement), each in one of 4-5
  real-sounding sentence templates, and with probability 1/2 one neutral filler sentence (10 of them), in random
  order after the opening; the document starts with a title line "Name (profession)", as an encyclopedia entry.
  A fact's *exposure* is the number of training documents that state it (about n_i / 2); buckets: 0 (never stated: a
  chance-level control), 1-2, 3-8, 9-32, 33+.
- Real text: tinyshakespeare (/work/shared/data/tinyshakespeare.txt), first 90% cut into consecutive chunks of
  ``--chunk 200`` bytes (split at the last newline/space before), ``--real-frac 0.35`` of the training documents
  (chunks taken in order from the start); the last 10% is held out for bits per byte (``--eval-chunks`` chunks), and
  wikitext-2 validation (/work/shared/data/wikitext2-valid.txt) gives an out-of-domain bits per byte.
- Byte level: token = UTF-8 byte + 3 (0 pad, 1 BOS, 2 EOS); every sequence is BOS + one document (no packing, so each
  training sequence has exactly one memory path); batches of ``--batch 16`` documents of similar length.

Models (transformers ``LlamaForCausalLM``, tied embeddings, vocab 259, from scratch, same batches in the same order,
one epoch = the same training tokens for all; AdamW lr ``--lr`` 3e-3, 5% warm-up then cosine to 10%, no anchor weight
decay, clip 1.0, seed 0)
- (a) anchor: d 128, 4 layers, 4 heads, SwiGLU 352: 0.84M parameters.
- (b) the anchor + a memory bank: index ``build_memory_index(keys, levels=3, branching=8, window=64)`` with the
  default dependency-free embedder (hashed byte n-grams, 256-d), where ``keys`` are the distinct routing keys of the
  training documents: a document (and a prompt) is routed on its first line, the title (``--route-key title``; real
  text chunks: their first line). ``--stage bdoc`` routes on the whole text instead (index on the documents,
  default window 1024): the hashed n-grams then cluster by sentence templates more than by person (measured:
  routing agreement below). ``MemoryBankConfig(block_sizes=(32, 16, 8), branching=8, layers="all")``: fetched 56
  inner units x 3 x 128 x 4 layers = 86k parameters (10.3% of the anchor), bank 8.3M
  (8 / 64 / 512 clusters). **Co-trained** from scratch with the anchor (``freeze_anchor=False``; memory lr
  ``--memory-lr``, weight decay 1e-3, generic memory with probability 1/17, both the package's defaults), each
  training document on the path of its routing key. The paper pretrains the anchor first and then the memory;
  that needs twice the tokens for (b), so the default here is co-training (same tokens as (a) and (c)).
  ``--stage b2`` also runs the paper's order: (a)'s trained weights, frozen, then the memory alone for one more
  epoch (so b2 has seen twice the tokens of a/c; reported as such).
- (c) plain: d 160, 5 layers, 4 heads, SwiGLU 432: 1.59M parameters (1.9x the anchor).

Evaluation
----------
- Facts: for each fact (person, attribute), the prompt is the title line and the prefix of that attribute's first
  training template (e.g. "Velora Tashkin (painter)\nThe painter Velora Tashkin was born in "); the answer is
  chosen among 8 candidates (the true value + 7 distinct others of the same attribute, fixed by the seed) by the
  highest summed log-probability of the candidate's bytes (all models see the same prompt). Chance = 12.5%. At most
  ``--facts-per-bucket 100`` facts per bucket (a fixed random subset).
- For (b) the prompt is routed like a training document (``index.route(route_key(prompt))``: its title line, or
  with ``bdoc`` the whole prompt). Also reported:
  *oracle* routing (the most common path of the training documents that state the fact: memory capacity without
  routing errors), *generic* memory (all levels -1), memory *off* (bare anchor weights), and the paper's ablation:
  *blocked*: the prompt's level-1 cluster (1/8 of the bank) is marked invalid and the prompt re-routed, so it
  fetches the next-nearest cluster's blocks. Routing agreement: the fraction of prompts whose routed cluster equals
  the oracle's, per level.
- Bits per byte (bpb): mean next-byte cross entropy / ln 2 on held-out tinyshakespeare and on wikitext-2 chunks
  (for (b) each chunk routed by its routing key).

Learning-rate reruns: ``--stage a|b|c --lr X --tag _lrX`` writes ``memory_longtail_<stage>_lrX.json``; the report
adds every such file as extra rows (with 3e-3 the 2x plain model trained badly: see the table).

Outputs: ``benchmarks/results/memory_longtail_<stage>[<tag>].json`` per model, ``memory_longtail.json`` (summary,
table, per-model details with every fact's 0/1) and ``memory_longtail.png`` (accuracy per bucket) from
``--stage report`` (or the default ``--stage all``). Wall time per model: 11-35 min at the defaults on the shared
2-core machine (load 4-11); ~6-10 min on an idle core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DATA = "/work/shared/data"
MACHINE = "2-core x86_64 CPU, torch {} CPU, 1 thread".format(torch.__version__.split("+")[0])
BUCKETS = [(0, 0), (1, 2), (3, 8), (9, 32), (33, 10**9)]
BUCKET_NAMES = ["0", "1-2", "3-8", "9-32", "33+"]
PAD, BOS, EOS = 0, 1, 2

# ------------------------------------------------------------------------------------------------ corpus --------
SYLLABLES = [
    "ve",
    "lo",
    "ra",
    "tash",
    "kin",
    "bre",
    "mor",
    "zu",
    "dal",
    "ith",
    "no",
    "quen",
    "sa",
    "por",
    "ly",
    "mar",
    "tez",
    "ob",
    "fen",
    "ka",
    "ri",
    "wyn",
    "del",
    "os",
    "thu",
    "gar",
    "pe",
    "vi",
    "nash",
    "el",
]
PROFESSIONS = ["painter", "sailor", "chemist", "weaver", "astronomer", "baker", "poet", "surveyor"]
COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "teal",
    "crimson",
    "silver",
    "gold",
    "ivory",
    "amber",
    "violet",
    "indigo",
    "olive",
    "scarlet",
]
OPENINGS = [
    "{name} was {a_prof}.",
    "Few people today remember the {prof} {name}.",
    "This is a short account of {name}, who worked as {a_prof}.",
    "Among the {prof}s of the region, {name} stood out.",
]
TEMPLATES = {  # template 0: the evaluation prompt is its prefix up to the value
    "year": [
        "The {prof} {name} was born in {v}.",
        "Records show that {name} was born in the year {v}.",
        "Born in {v}, {name} grew up far from the sea.",
        "{name} came into the world in {v}, during a cold winter.",
        "The parish book lists {v} as the birth year of {name}.",
    ],
    "city": [
        "The {prof} {name} lived in the town of {v}.",
        "{name} spent most of those years in {v}.",
        "In {v}, everyone knew {name} by sight.",
        "{name} made a home in {v} and rarely left it.",
        "Letters from {name} were always posted in {v}.",
    ],
    "colour": [
        "The {prof} {name} loved the colour {v}.",
        "The favourite colour of {name} was {v}.",
        "{name} always painted the front door {v}.",
        "Friends recall that {name} wore {v} on every holiday.",
    ],
    "number": [
        "The {prof} {name} kept {v} goats.",
        "Behind the house, {name} kept exactly {v} goats.",
        "{name} once counted {v} goats in the little yard.",
        "By the end, the herd of {name} numbered {v} goats.",
    ],
}
FILLERS = [
    "The winters there were long and the roads were poor.",
    "Not much else is known about those years.",
    "Neighbours described a quiet and careful person.",
    "Several letters from that time survive.",
    "The family had lived in the region for generations.",
    "Travel was slow and most news came by post.",
    "Later accounts disagree on many small details.",
    "It was, by all accounts, an ordinary life.",
    "A portrait from that period still hangs in the town hall.",
    "The old house burned down long ago.",
]
ATTRS = ["year", "city", "colour", "number"]


def _word(rng, n):
    return "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()


def make_corpus(seed=0, entities=300, max_docs=80, real_frac=0.4, chunk=200, eval_chunks=64):
    rng = random.Random(seed)
    towns = set()
    while len(towns) < 40:
        towns.add(_word(rng, rng.choice([2, 3])))
    towns = sorted(towns)
    names, people = set(), []
    while len(people) < entities:
        name = f"{_word(rng, 2)} {_word(rng, rng.choice([2, 3]))}"
        if name in names:
            continue
        names.add(name)
        people.append(
            {
                "name": name,
                "prof": rng.choice(PROFESSIONS),
                "year": str(rng.randint(1650, 1949)),
                "city": rng.choice(towns),
                "colour": rng.choice(COLOURS),
                "number": str(rng.randint(2, 99)),
                "docs": int(math.floor(math.exp(rng.random() * math.log(max_docs + 1)))),
            }
        )
    pools = {
        "year": [str(y) for y in range(1650, 1950)],
        "city": towns,
        "colour": COLOURS,
        "number": [str(n) for n in range(2, 100)],
    }
    docs = []  # (text, person index or -1, [attrs stated])
    exposure = {}
    for pi, p in enumerate(people):
        for _ in range(p["docs"]):
            attrs = rng.sample(ATTRS, 2)
            sents = [rng.choice(TEMPLATES[a]).format(name=p["name"], prof=p["prof"], v=p[a]) for a in attrs]
            if rng.random() < 0.5:
                sents.append(rng.choice(FILLERS))
            rng.shuffle(sents)
            a_prof = ("an " if p["prof"][0] in "aeiou" else "a ") + p["prof"]
            text = f"{p['name']} ({p['prof']})\n" + " ".join(
                [rng.choice(OPENINGS).format(name=p["name"], prof=p["prof"], a_prof=a_prof)] + sents
            )
            docs.append((text, pi, attrs))
            for a in attrs:
                exposure[(pi, a)] = exposure.get((pi, a), 0) + 1
    n_fact_docs = len(docs)
    with open(os.path.join(DATA, "tinyshakespeare.txt")) as f:
        shak = f.read()
    cut = int(len(shak) * 0.9)

    def chunks(text, n):
        out, i = [], 0
        while len(out) < n and i < len(text) - 20:
            j = min(i + chunk, len(text))
            if j < len(text):
                k = max(text.rfind("\n", i + chunk // 2, j), text.rfind(" ", i + chunk // 2, j))
                j = k + 1 if k > i else j
            out.append(text[i:j])
            i = j
        return out

    n_real = int(round(n_fact_docs * real_frac / (1 - real_frac)))
    real = chunks(shak[:cut], n_real)
    docs += [(t, -1, []) for t in real]
    held_shak = chunks(shak[cut:], eval_chunks)
    with open(os.path.join(DATA, "wikitext2-valid.txt")) as f:
        wiki = " ".join(line.strip() for line in f if line.strip() and not line.strip().startswith("="))
    held_wiki = chunks(wiki, eval_chunks)
    # facts to evaluate: prompt = prefix of template 0, 8 candidates
    facts = []
    for pi, p in enumerate(people):
        for a in ATTRS:
            t0 = TEMPLATES[a][0]
            prompt = f"{p['name']} ({p['prof']})\n" + t0[: t0.index("{v}")].format(name=p["name"], prof=p["prof"])
            others = [v for v in pools[a] if v != p[a]]
            cands = [p[a]] + rng.sample(others, 7)
            facts.append(
                {"person": pi, "attr": a, "prompt": prompt, "cands": cands, "exposure": exposure.get((pi, a), 0)}
            )
    return {
        "people": people,
        "docs": docs,
        "n_fact_docs": n_fact_docs,
        "n_real_docs": len(real),
        "facts": facts,
        "held_shak": held_shak,
        "held_wiki": held_wiki,
        "towns": towns,
    }


def bucket_of(n):
    for i, (lo, hi) in enumerate(BUCKETS):
        if lo <= n <= hi:
            return i
    raise ValueError(n)


def eval_facts(corpus, per_bucket, seed):
    rng = random.Random(seed + 1)
    by = [[] for _ in BUCKETS]
    for i, f in enumerate(corpus["facts"]):
        by[bucket_of(f["exposure"])].append(i)
    out = []
    for b in by:
        out += sorted(rng.sample(b, min(per_bucket, len(b))))
    return out


def route_key(text, mode):
    """The text a document (or prompt) is routed on: its first line (``title``) or the text itself (``doc``)."""
    return text.split("\n", 1)[0][:64] if mode == "title" else text


def encode(text):
    return [BOS] + [b + 3 for b in text.encode("utf-8")]


class ByteTokenizer:
    pad_token, eos_token, pad_token_id, bos_token_id, eos_token_id = "<pad>", "</s>", PAD, BOS, EOS

    def batch_decode(self, ids, skip_special_tokens=True):
        return [bytes(max(0, t - 3) for t in row if t >= 3).decode("utf-8", "replace") for row in ids]


def make_batches(docs, batch, seed):
    """Shuffled, then length-sorted within groups of 32 batches (little padding); a fixed order for all models."""
    rng = random.Random(seed + 2)
    order = list(range(len(docs)))
    rng.shuffle(order)
    group = batch * 32
    out = []
    for g in range(0, len(order), group):
        chunk = sorted(order[g : g + group], key=lambda i: len(docs[i][0]))
        out += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(out)
    return out


def pad_batch(seqs):
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    labels = ids.masked_fill(ids == PAD, -100)
    return ids, labels


# ------------------------------------------------------------------------------------------------ models --------
SIZES = {
    "a": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=352),
    "c": dict(hidden_size=160, num_hidden_layers=5, intermediate_size=432),
}
SIZES["b"] = SIZES["b2"] = SIZES["bdoc"] = SIZES["a"]


def make_model(stage, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=259,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        **SIZES[stage],
    )
    return LlamaForCausalLM(cfg)


def n_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("memory_bank."))


def memory_config(args, freeze):
    from hf_seqmodels.memory import MemoryBankConfig

    return MemoryBankConfig(
        block_sizes=tuple(args.block_sizes),
        branching=args.branching,
        layers="all",
        memory_lr=args.memory_lr,
        freeze_anchor=freeze,
    )


def lr_lambda(total, warm):
    def f(step):
        if step < warm:
            return (step + 1) / warm
        p = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


def train(model, docs, batches, args, paths=None, opt=None, desc="train"):
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    if opt is None:
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(len(batches), max(1, len(batches) // 20)))
    model.train()
    tokens, losses, t0 = 0, [], time.time()
    bar = tqdm(batches, desc=desc, mininterval=5)
    for step, b in enumerate(bar):
        ids, labels = pad_batch([encode(docs[i][0]) for i in b])
        kw = {} if paths is None else {"memory_paths": paths[b]}
        loss = model(input_ids=ids, labels=labels, **kw).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int((labels != -100).sum()) - len(b)  # predicted bytes (the BOS is never a target)
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return {
        "train_tokens": tokens,
        "train_seconds": round(time.time() - t0, 1),
        "steps": len(batches),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
    }


# ------------------------------------------------------------------------------------------------ evaluation ----
@torch.no_grad()
def score_candidates(model, corpus, fact_ids, paths=None, batch=64, desc="facts"):
    """Accuracy (list of 0/1 per fact): argmax over the 8 candidates' summed byte log-probabilities."""
    from tqdm.auto import tqdm

    rows, meta = [], []
    for k, fi in enumerate(fact_ids):
        f = corpus["facts"][fi]
        p = encode(f["prompt"])
        for c in f["cands"]:
            rows.append(p + [b + 3 for b in c.encode()])
            meta.append((k, len(p)))
    scores = torch.empty(len(rows))
    for s in tqdm(range(0, len(rows), batch), desc=desc, mininterval=5, leave=False):
        ids, _ = pad_batch(rows[s : s + batch])
        kw = {} if paths is None else {"memory_paths": paths[[m[0] for m in meta[s : s + batch]]]}
        logp = torch.log_softmax(model(input_ids=ids, **kw).logits.float(), -1)
        for j in range(ids.shape[0]):
            r, (k, lp) = rows[s + j], meta[s + j]
            tgt = torch.tensor(r[lp:])
            scores[s + j] = logp[j, lp - 1 : len(r) - 1].gather(1, tgt[:, None]).sum()
    scores = scores.view(len(fact_ids), 8)
    return (scores.argmax(1) == 0).int().tolist()


@torch.no_grad()
def bits_per_byte(model, texts, paths=None, batch=16):
    nll, n = 0.0, 0
    for s in range(0, len(texts), batch):
        ids, labels = pad_batch([encode(t) for t in texts[s : s + batch]])
        kw = {} if paths is None else {"memory_paths": paths[s : s + batch]}
        logits = model(input_ids=ids, **kw).logits.float()
        lp = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        nll += float(lp)
        n += int((labels[:, 1:] != -100).sum())
    return round(nll / n / math.log(2), 4)


def per_bucket(corpus, fact_ids, correct):
    acc = {}
    for bi, name in enumerate(BUCKET_NAMES):
        sel = [c for fi, c in zip(fact_ids, correct) if bucket_of(corpus["facts"][fi]["exposure"]) == bi]
        acc[name] = {"acc": round(sum(sel) / len(sel), 4) if sel else None, "n": len(sel)}
    return acc


def blocked_index(index, level1_cluster):
    from hf_seqmodels.memory import MemoryIndex

    valid = [v.clone() for v in index.valid]
    valid[0][level1_cluster] = False
    return MemoryIndex(
        index.centroids,
        valid,
        index.branching,
        index.embedder_spec,
        window=index.window,
        seed=index.seed,
        embedder=index.embedder(),
    )


def oracle_paths(corpus, doc_paths, fact_ids):
    """Per fact: the most common full path among the training documents that state it (-1s if none)."""
    from collections import Counter

    by = {}
    for d, (text, pi, attrs) in enumerate(corpus["docs"]):
        for a in attrs:
            by.setdefault((pi, a), []).append(tuple(doc_paths[d].tolist()))
    out = []
    for fi in fact_ids:
        f = corpus["facts"][fi]
        ps = by.get((f["person"], f["attr"]))
        out.append(list(Counter(ps).most_common(1)[0][0]) if ps else [-1] * doc_paths.shape[1])
    return torch.tensor(out, dtype=torch.long)


def evaluate(model, corpus, fact_ids, args, label):
    t0 = time.time()
    acc = score_candidates(model, corpus, fact_ids, desc=f"{label} facts")
    res = {
        "facts": per_bucket(corpus, fact_ids, acc),
        "correct": acc,
        "bpb_shakespeare": bits_per_byte(model, corpus["held_shak"]),
        "bpb_wikitext": bits_per_byte(model, corpus["held_wiki"]),
    }
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res


def evaluate_memory(model, index, corpus, fact_ids, doc_paths, args, label):
    from hf_seqmodels.memory import memory_disabled

    t0 = time.time()
    prompts = [route_key(corpus["facts"][fi]["prompt"], args.route_key) for fi in fact_ids]
    emb = index.embed(prompts)
    routed = index.route_embeddings(emb)
    oracle = oracle_paths(corpus, doc_paths, fact_ids)
    has = oracle[:, 0] >= 0
    agree = {
        f"level{l + 1}": round(float((routed[has, : l + 1] == oracle[has, : l + 1]).all(1).float().mean()), 4)
        for l in range(routed.shape[1])
    }
    blocked = routed.clone()
    for c in range(index.branching):
        sel = torch.nonzero(routed[:, 0] == c).flatten()
        if len(sel):
            blocked[sel] = blocked_index(index, c).route_embeddings(emb[sel])
    generic = torch.full_like(routed, -1)
    res = {"routing_agreement_with_oracle": agree}
    for name, p in [("routed", routed), ("oracle", oracle), ("blocked", blocked), ("generic", generic)]:
        correct = score_candidates(model, corpus, fact_ids, paths=p, desc=f"{label} facts {name}")
        res[name] = {"facts": per_bucket(corpus, fact_ids, correct), "correct": correct}
    with memory_disabled(model):
        correct = score_candidates(model, corpus, fact_ids, desc=f"{label} facts off")
    res["off"] = {"facts": per_bucket(corpus, fact_ids, correct), "correct": correct}
    for name, texts in [("shakespeare", corpus["held_shak"]), ("wikitext", corpus["held_wiki"])]:
        p = index.route([route_key(t, args.route_key) for t in texts])
        res["routed"][f"bpb_{name}"] = bits_per_byte(model, texts, paths=p)
        res["generic"][f"bpb_{name}"] = bits_per_byte(model, texts, paths=torch.full_like(p, -1))
        with memory_disabled(model):
            res["off"][f"bpb_{name}"] = bits_per_byte(model, texts)
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res


# ------------------------------------------------------------------------------------------------ stages --------
def corpus_stats(corpus):
    nbytes = sum(len(d[0].encode()) for d in corpus["docs"])
    fact_bytes = sum(len(d[0].encode()) for d in corpus["docs"][: corpus["n_fact_docs"]])
    counts = [0] * len(BUCKETS)
    for f in corpus["facts"]:
        counts[bucket_of(f["exposure"])] += 1
    return {
        "entities": len(corpus["people"]),
        "fact_docs": corpus["n_fact_docs"],
        "real_docs": corpus["n_real_docs"],
        "train_bytes": nbytes,
        "fact_bytes": fact_bytes,
        "facts_per_bucket": dict(zip(BUCKET_NAMES, counts)),
        "example_docs": [d[0] for d in corpus["docs"][:3]] + [corpus["docs"][-1][0]],
        "example_prompt": corpus["facts"][0]["prompt"] + " | " + ", ".join(corpus["facts"][0]["cands"]),
    }


def run_stage(stage, args):
    from hf_seqmodels.memory import attach_memory_bank, build_memory_index, memory_optimizer

    torch.set_num_threads(1)
    if stage == "bdoc":
        args.route_key = "doc"
    corpus = make_corpus(args.seed, args.entities, args.max_docs, args.real_frac, args.chunk, args.eval_chunks)
    docs = corpus["docs"]
    batches = make_batches(docs, args.batch, args.seed)
    if args.max_steps:
        batches = batches[: args.max_steps]
    fact_ids = eval_facts(corpus, args.facts_per_bucket, args.seed)
    out = {"stage": stage, "corpus": corpus_stats(corpus), "fact_ids": fact_ids, "args": vars(args)}
    model = make_model(stage, args.seed)
    out["params"] = n_params(model)
    if stage in ("a", "c"):
        out["train"] = train(model, docs, batches, args, desc=f"train {stage}")
        if stage == "a" and args.save_anchor:
            torch.save(model.state_dict(), args.save_anchor)
        out["eval"] = evaluate(model, corpus, fact_ids, args, stage)
    else:
        t0 = time.time()
        keys = [route_key(d[0], args.route_key) for d in docs]
        if args.route_key == "title":  # one point per distinct title, routed on the title alone
            index = build_memory_index(
                sorted(set(keys)),
                levels=len(args.block_sizes),
                branching=args.branching,
                seed=args.seed,
                window=64,
                progress=True,
            )
        else:
            index = build_memory_index(
                keys, levels=len(args.block_sizes), branching=args.branching, seed=args.seed, progress=True
            )
        doc_paths = index.route(keys)
        out["index_seconds"] = round(time.time() - t0, 1)
        out["index"] = {
            "embedder": index.embedder_name,
            "levels": index.levels,
            "branching": index.branching,
            "valid_clusters": [int(v.sum()) for v in index.valid],
            "used_leaf_clusters": int(len(set(map(tuple, doc_paths.tolist())))),
        }
        if stage == "b2":
            if not os.path.isfile(args.save_anchor):
                raise SystemExit(f"--stage b2 needs the trained anchor {args.save_anchor} (run --stage a first)")
            model.load_state_dict(torch.load(args.save_anchor))
        cfg = memory_config(args, freeze=(stage == "b2"))
        model = attach_memory_bank(model, cfg, index, tokenizer=ByteTokenizer())
        out["memory"] = cfg.size_report(model.config.hidden_size, model.config.num_hidden_layers)
        out["memory"]["fetched_fraction_of_anchor"] = round(out["memory"]["fetched_parameters"] / out["params"], 4)
        opt = memory_optimizer(
            model, lr=args.memory_lr, anchor_lr=None if stage == "b2" else args.lr, betas=(0.9, 0.98)
        )
        out["schedule"] = (
            "anchor (a) trained first, frozen; memory trained for one more epoch"
            if stage == "b2"
            else "anchor and memory co-trained from scratch"
        )
        out["train"] = train(model, docs, batches, args, paths=doc_paths, opt=opt, desc=f"train {stage}")
        out["eval"] = evaluate_memory(model, index, corpus, fact_ids, doc_paths, args, stage)
    path = os.path.join(RESULTS, f"memory_longtail_{stage}{args.tag}.json")
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return out


def row_acc(facts):
    return [facts[b]["acc"] for b in BUCKET_NAMES]


def report(args):
    parts = {}
    for s in ("a", "b", "b2", "bdoc", "c"):
        p = os.path.join(RESULTS, f"memory_longtail_{s}{args.tag}.json")
        if os.path.isfile(p):
            with open(p) as f:
                parts[s] = json.load(f)
    if not parts:
        raise SystemExit("no per-model results yet (run the stages first)")
    import glob

    extra = {}  # models rerun at another learning rate: --stage a|b|c --lr X --tag _lrX
    for p in sorted(glob.glob(os.path.join(RESULTS, "memory_longtail_[abc]_lr*.json")) if not args.tag else []):
        with open(p) as f:
            d = json.load(f)
        extra[os.path.basename(p)[len("memory_longtail_") : -len(".json")]] = d
    any_ = next(iter(parts.values()))
    ev = any_["eval"]["facts"] if "facts" in any_["eval"] else any_["eval"]["routed"]["facts"]
    n_per = {b: ev[b]["n"] for b in BUCKET_NAMES}
    rows = []  # (label, params, fetched, tokens, accs, bpb_s, bpb_w)

    def fmt(x):
        return "-" if x is None else f"{100 * x:.1f}"

    lab = {
        "a": "(a) anchor",
        "c": "(c) plain 2x",
        "b": "(b) anchor + memory, co-trained",
        "b2": "(b2) anchor, then memory (2x tokens)",
        "bdoc": "(b') as (b), routed on the whole document",
    }
    for s in ("a", "c"):
        if s in parts:
            e = parts[s]["eval"]
            rows.append(
                (
                    lab[s] + f", lr {parts[s]['args']['lr']:g}",
                    parts[s]["params"],
                    0,
                    parts[s]["train"]["train_tokens"],
                    row_acc(e["facts"]),
                    e["bpb_shakespeare"],
                    e["bpb_wikitext"],
                )
            )
    for k, d in extra.items():
        if d["stage"] not in ("a", "c"):
            continue
        e = d["eval"]
        rows.append(
            (
                lab[d["stage"]] + f", lr {d['args']['lr']:g}",
                d["params"],
                0,
                d["train"]["train_tokens"],
                row_acc(e["facts"]),
                e["bpb_shakespeare"],
                e["bpb_wikitext"],
            )
        )
    parts_all = dict(parts, **extra)
    mem = [(s, parts[s]) for s in ("b", "b2", "bdoc") if s in parts] + [
        (k, d) for k, d in extra.items() if d["stage"] == "b"
    ]
    for s, part in mem:
        e, m = part["eval"], part["memory"]
        tok = part["train"]["train_tokens"] * (2 if s == "b2" else 1)
        name = lab[part["stage"]] + (f", anchor lr {part['args']['lr']:g}" if s in extra else "")
        for v, vl in [
            ("routed", "routed by prompt"),
            ("oracle", "oracle path"),
            ("blocked", "level-1 cluster blocked"),
            ("generic", "generic memory"),
            ("off", "memory off"),
        ]:
            rows.append(
                (
                    f"{name}: {vl}",
                    part["params"],
                    m["fetched_parameters"] if v != "off" else 0,
                    tok,
                    row_acc(e[v]["facts"]),
                    e[v].get("bpb_shakespeare"),
                    e[v].get("bpb_wikitext"),
                )
            )
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"Long-tail facts, {date}, {MACHINE}. Accuracy (%) among 8 candidates (chance 12.5) per bucket of "
        f"training exposures; bpb = bits per byte on held-out text.",
        "",
        "| model | params | fetched | train tokens | "
        + " | ".join(f"acc {b} (n={n_per[b]})" for b in BUCKET_NAMES)
        + " | bpb shakesp. | bpb wikitext |",
        "|---|---|---|---|" + "---|" * len(BUCKET_NAMES) + "---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[1] / 1e6:.2f}M | {r[2] / 1e3:.0f}k | {r[3] / 1e6:.2f}M | "
            + " | ".join(fmt(x) for x in r[4])
            + f" | {r[5] if r[5] is not None else '-'} | "
            f"{r[6] if r[6] is not None else '-'} |"
        )
    for s, part in mem:
        e = part["eval"]
        lines.append("")
        lines.append(
            f"{s}: bank {part['memory']['bank_parameters'] / 1e6:.2f}M parameters, fetched "
            f"{part['memory']['fetched_parameters'] / 1e3:.0f}k "
            f"({100 * part['memory']['fetched_fraction_of_anchor']:.1f}% of the anchor); prompt "
            f"routing agreement with the oracle path: {e['routing_agreement_with_oracle']}; index "
            f"{part['index']}"
        )
    for s, p in parts_all.items():
        lines.append(
            f"- {s}: train {p['train']['train_seconds']} s, {p['train']['steps']} steps, final loss "
            f"{p['train']['final_loss']}; eval {p['eval']['eval_seconds']} s"
        )
    table = "\n".join(lines)
    print(table)
    summary = {
        "date": date,
        "machine": MACHINE,
        "buckets": BUCKET_NAMES,
        "facts_per_bucket_evaluated": n_per,
        "corpus": any_["corpus"],
        "table_markdown": table,
        "rows": [
            {
                "model": r[0],
                "params": r[1],
                "fetched": r[2],
                "train_tokens": r[3],
                "acc": dict(zip(BUCKET_NAMES, r[4])),
                "bpb_shakespeare": r[5],
                "bpb_wikitext": r[6],
            }
            for r in rows
        ],
        "per_model": {s: {k: v for k, v in p.items() if k != "fact_ids"} for s, p in parts_all.items()},
    }
    with open(os.path.join(RESULTS, f"memory_longtail{args.tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(rows, os.path.join(RESULTS, f"memory_longtail{args.tag}.png"), date)
    print(f"wrote {os.path.join(RESULTS, f'memory_longtail{args.tag}.json')} and memory_longtail{args.tag}.png")


def plot(rows, path, date):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = [
        r
        for r in rows
        if not r[0].endswith(("generic memory", "memory off", "oracle path"))
        and not (r[0].startswith("(b')") and r[0].endswith("blocked"))
    ]  # all of them are in the table
    fig, ax = plt.subplots(figsize=(10, 4.8))
    w = 0.8 / len(keep)
    for i, r in enumerate(keep):
        xs = [j + (i - (len(keep) - 1) / 2) * w for j in range(len(BUCKET_NAMES))]
        ax.bar(xs, [100 * (a or 0) for a in r[4]], w, label=r[0], color=plt.cm.tab20(i % 20))
    ax.axhline(12.5, color="k", ls=":", lw=1, label="chance (1/8)")
    ax.set_xticks(range(len(BUCKET_NAMES)))
    ax.set_xticklabels([f"{b} exposures" for b in BUCKET_NAMES])
    ax.set_ylabel("fact accuracy (%)")
    ax.set_title(f"Long-tail facts vs training exposures ({date}, {MACHINE})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="all", choices=["all", "a", "b", "b2", "bdoc", "c", "report"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--entities", type=int, default=220)
    ap.add_argument("--max-docs", type=int, default=80)
    ap.add_argument("--real-frac", type=float, default=0.35)
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--eval-chunks", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--memory-lr", type=float, default=3e-3)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[32, 16, 8])
    ap.add_argument("--branching", type=int, default=8)
    ap.add_argument("--facts-per-bucket", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=0, help="truncate the epoch (smoke tests)")
    ap.add_argument(
        "--save-anchor",
        default="/tmp/memory_longtail_anchor.pt",
        help="where --stage a saves the trained anchor for --stage b2",
    )
    ap.add_argument(
        "--route-key",
        default="title",
        choices=["title", "doc"],
        help="route documents/prompts on their title line (default) or on their whole text",
    )
    ap.add_argument("--tag", default="", help="suffix of the output files (e.g. _docroute)")
    ap.add_argument("--corpus-only", action="store_true", help="print the corpus statistics and exit")
    args = ap.parse_args()
    if args.corpus_only:
        c = make_corpus(args.seed, args.entities, args.max_docs, args.real_frac, args.chunk, args.eval_chunks)
        print(json.dumps(corpus_stats(c), indent=1))
        return
    if args.stage == "all":
        for s in ("a", "b", "c"):
            run_stage(s, args)
        report(args)
    elif args.stage == "report":
        report(args)
    else:
        run_stage(args.stage, args)


if __name__ == "__main__":
    main()
