"""Memory-bank cost on the CPU: bank size vs fetched size, fetch latency per sequence, resident memory.

    .venv/bin/python -m benchmarks.memory_bank_cost [--bank-gb 1.5] [--work DIR] [--keep] [--reuse]

Builds a tiny GLA anchor (d 512, 6 layers, ~18M parameters) with a hierarchical bank (3 levels, branching 16,
blocks (128, 32, 8) in every layer: 16 + 256 + 4096 clusters) of ~1.6 GB on disk, indexed on real text
(``pydoc_data.topics``) with the hashed byte-n-gram embedder, and saves it with ``save_pretrained``. Then, each in a
fresh process (so resident memory is not polluted by the build):

- ``disk``: ``load_memory_model(reader="pread")``: blocks stay on disk, each fetch reads the path's blocks;
- ``mmap``: the same with ``reader="mmap"`` (safetensors ``get_slice``; touched pages count as file-backed RSS);
- ``resident``: ``load_memory_model(trainable=True)``: the whole bank in memory, the comparison point.

Each generates 16 tokens for 24 prompts (different texts, routed by the index), recording VmRSS / RssAnon / RssFile
(``/proc/self/status``) after every prompt, and times ``fetch`` (all layers, one sequence) for 200 random paths:
cold (the shards' pages dropped from the page cache with ``posix_fadvise(DONTNEED)`` before each fetch; these files
only) and warm (the same paths again, best of three rounds: the machine may be shared). Prints a table and writes
``benchmarks/results/memory_bank_cost.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT = os.path.join(HERE, "results", "memory_bank_cost.json")


def rss():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024  # MiB
    return out


class ByteTokenizer:
    pad_token, eos_token, pad_token_id = "<pad>", "</s>", 0

    def encode(self, text):
        return [b + 3 for b in text.encode("utf-8")]

    def batch_decode(self, ids, skip_special_tokens=True):
        return [bytes(max(0, t - 3) for t in row if t >= 3).decode("utf-8", "replace") for row in ids]


def texts():
    from pydoc_data.topics import topics

    return [v for _, v in sorted(topics.items()) if len(v) > 400]


def build(work, bank_gb):
    from transformers import AutoModelForCausalLM

    import hf_seqmodels
    from hf_seqmodels.memory import MemoryBankConfig, attach_memory_bank, build_memory_index

    torch.manual_seed(0)
    d, layers = 512, 6
    cfg = hf_seqmodels.GLAConfig(vocab_size=260, hidden_size=d, num_hidden_layers=layers, num_heads=4)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    per_layer_blocks = 128 * 16 + 32 * 256 + 8 * 4096
    scale = max(1, round(bank_gb * 2**30 / (per_layer_blocks * 3 * d * 4 * layers)))
    sizes = (128 * scale, 32 * scale, 8 * scale)
    mcfg = MemoryBankConfig(block_sizes=sizes, branching=16, generic_memory_prob=0.0)
    t0 = time.time()
    index = build_memory_index(texts(), levels=3, branching=16, window=512, seed=0, progress=False)
    t_index = time.time() - t0
    attach_memory_bank(model, mcfg, index, tokenizer=ByteTokenizer())
    with torch.no_grad():  # a "trained" bank: nonzero down blocks
        for p in model.memory_bank.parameters():
            p.normal_(std=0.02)
    t0 = time.time()
    model.save_pretrained(work)
    t_save = time.time() - t0
    anchor_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("memory_bank."))
    return {
        "hidden_size": d,
        "layers": layers,
        "block_sizes": list(sizes),
        "branching": 16,
        "levels": 3,
        "anchor_parameters": anchor_params,
        **mcfg.size_report(d, layers),
        "index_build_s": t_index,
        "save_s": t_save,
    }


def measure(work, mode):
    torch.set_num_threads(2)
    r_start = rss()
    import hf_seqmodels  # noqa: F401
    from hf_seqmodels.memory import load_memory_model
    from hf_seqmodels.memory.bank import BANK_INDEX

    r_import = rss()
    t0 = time.time()
    model = load_memory_model(
        work,
        tokenizer=ByteTokenizer(),
        trainable=(mode == "resident"),
        reader="mmap" if mode == "mmap" else "pread",
        verify=False,
    )
    t_load = time.time() - t0
    r_loaded = rss()
    bank, cfg = model.memory_bank, model.memory_config
    meta = json.load(open(os.path.join(work, BANK_INDEX)))

    def drop_cache():
        for f in meta["files"]:
            fd = os.open(os.path.join(work, f), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

    g = torch.Generator().manual_seed(1)
    paths = torch.stack([torch.randint(cfg.clusters(l + 1), (200,), generator=g) for l in range(cfg.levels)], 1)

    def fetch_all(p):
        t0 = time.perf_counter()
        for i in bank.layer_ids:
            bank.fetch(i, p.unsqueeze(0))
        return time.perf_counter() - t0

    def stats(times):
        times = sorted(times)
        return {"median_ms": 1e3 * times[len(times) // 2], "p90_ms": 1e3 * times[int(len(times) * 0.9)]}

    # cold: the shards' pages dropped from the page cache before every fetch (pages this process has mapped,
    # reader "mmap", cannot be dropped: repeated blocks stay warm there, as they would in use);
    # warm: the same paths again, best of three rounds (the machine is shared: the other rounds measure neighbours)
    cold = []
    for p in paths:
        drop_cache()
        cold.append(fetch_all(p))
    lat = {"cold": stats(cold)}
    lat["warm"] = min((stats([fetch_all(p) for p in paths]) for _ in range(3)), key=lambda r: r["median_ms"])
    drop_cache()
    r_after_fetch = rss()
    tok = ByteTokenizer()
    trace, t_gen = [], 0.0
    corpus = texts()
    for k in range(24):
        prompt = torch.tensor([tok.encode(corpus[(k * 37) % len(corpus)][:48])])
        t0 = time.time()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=16, do_sample=False)
        t_gen += time.time() - t0
        trace.append(rss())
    return {
        "mode": mode,
        "load_s": t_load,
        "fetch_latency": lat,
        "rss_start": r_start,
        "rss_after_import": r_import,
        "rss_loaded": r_loaded,
        "rss_after_fetch_test": r_after_fetch,
        "rss_generate_trace": trace,
        "generate_s_per_prompt": t_gen / 24,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bank-gb", type=float, default=1.5)
    ap.add_argument("--work", default="/tmp/hf_seqmodels_memory_bank_cost")
    ap.add_argument("--keep", action="store_true", help="keep the built model in --work")
    ap.add_argument("--reuse", action="store_true", help="measure the model kept in --work by an earlier --keep run")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.work, args.measure)))
        return
    import shutil

    info_path = os.path.join(args.work, "bench_setup.json")
    if args.reuse and os.path.exists(info_path):
        info = json.load(open(info_path))
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        info = build(args.work, args.bank_gb)
        json.dump(info, open(info_path, "w"))
    files = os.listdir(args.work)
    disk = {
        "anchor_bytes": sum(os.path.getsize(os.path.join(args.work, f)) for f in files if f == "model.safetensors"),
        "bank_bytes": sum(os.path.getsize(os.path.join(args.work, f)) for f in files if f.startswith("memory_bank-")),
        "shards": len([f for f in files if f.startswith("memory_bank-")]),
    }
    t0 = time.time()
    from hf_seqmodels.memory import MemoryBankConfig
    from hf_seqmodels.memory.bank import MemoryBank

    MemoryBank.check_files(
        args.work, MemoryBank.read_index(args.work), MemoryBankConfig.from_pretrained(args.work), verify=True
    )
    disk["verify_sha256_s"] = time.time() - t0
    runs = {}
    for mode in ("disk", "mmap", "resident"):
        out = subprocess.run(
            [sys.executable, __file__, "--work", args.work, "--measure", mode],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    fetched_mib = info["fetched_parameters"] * 4 / 2**20
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (torch threads 2), "
        f"torch {torch.__version__}, {platform.platform()}",
        "setup": info,
        "disk": disk,
        "runs": runs,
        "fetched_mib_per_sequence": fetched_mib,
    }
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(result, f, indent=1)

    print(f"\n== memory bank cost ({result['date']}, {result['machine']})")
    print(
        f"anchor: {info['anchor_parameters'] / 1e6:.1f}M params ({disk['anchor_bytes'] / 2**20:.0f} MiB); "
        f"bank: {info['bank_parameters'] / 1e6:.0f}M params ({disk['bank_bytes'] / 2**20:.0f} MiB in "
        f"{disk['shards']} shards); fetched per sequence: {info['fetched_parameters'] / 1e6:.2f}M params "
        f"({fetched_mib:.1f} MiB); bank/fetched = {info['bank_parameters'] / info['fetched_parameters']:.0f}x; "
        f"sha256 verify of the bank: {disk['verify_sha256_s']:.1f} s"
    )
    cols = (
        "mode",
        "load s",
        "fetch cold ms",
        "fetch warm ms",
        "RSS loaded",
        "RSS max gen",
        "RssAnon max",
        "RssFile max",
        "gen s/prompt",
    )
    rows = []
    for mode, r in runs.items():
        tr = r["rss_generate_trace"]
        rows.append(
            (
                mode,
                f"{r['load_s']:.2f}",
                f"{r['fetch_latency']['cold']['median_ms']:.2f}",
                f"{r['fetch_latency']['warm']['median_ms']:.2f}",
                f"{r['rss_loaded']['VmRSS']:.0f}",
                f"{max(t['VmRSS'] for t in tr):.0f}",
                f"{max(t['RssAnon'] for t in tr):.0f}",
                f"{max(t['RssFile'] for t in tr):.0f}",
                f"{r['generate_s_per_prompt']:.2f}",
            )
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)) + "   (RSS in MiB; fetch = all layers, one sequence)")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    print(f"RSS after imports only (disk run): {runs['disk']['rss_after_import']['VmRSS']:.0f} MiB")


if __name__ == "__main__":
    main()
