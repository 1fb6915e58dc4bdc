"""Peak memory of one H-Net training step (CPU, fp32) with the attention layers' full-sequence path before and
after it moved to the shared sliding-window op.

"before" is the explicit ``[B, T, T]`` position mask through SDPA for every call (the layer's ``_masked``, which
decoding against a cache still uses); "after" is the layer as it is: a windowed layer runs
``kernels.sliding_window_attention`` (O(T x window) memory, in segments of a few windows of queries so the op's
temporaries stay bounded), a global one SDPA with ``is_causal`` when no row is padded. Each measurement runs in
a fresh process: the model is built and warmed up on a short step, the peak resident set (VmHWM) is reset
(``/proc/self/clear_refs``), one forward + backward of the language-model loss runs on ``[1, T]`` random bytes, and
the new peak minus the resident set before is the step's extra memory.

    python -m benchmarks.hnet_memory                  # T 8192, the default config and a windowed one
    python -m benchmarks.hnet_memory --T 4096 --configs windowed

Configs: ``default`` is ``HNetConfig()`` (its attention is in the inner stage, global); ``windowed`` is the same
model with attention in the outer stage too (``arch_layout = ["t1m1", ["T4"], "m1t1"]``) and a 1023-key window at
both stages, as the paper's presets have in their outer stages. Times are indicative only (shared machine).
Writes ``benchmarks/results/hnet_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from benchmarks.lib.peak_memory import reset_peak, run_fresh, status_kb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hnet_memory.json"
CONFIGS = {
    "default": {},
    "windowed": {
        "arch_layout": ["t1m1", ["T4"], "m1t1"],
        "d_model": [128, 256],
        "d_intermediate": [0, 512],
        "ssm_cfg": {"d_state": 32, "head_dim": 32},
        "attn_cfg": {"num_heads": [4, 4], "rotary_emb_dim": [16, 32], "window_size": [1023, 1023]},
    },
}


def _one(mode: str, name: str, T: int) -> dict:
    import torch

    from hf_seqmodels import HNetConfig, HNetForCausalLM
    from hf_seqmodels.layers.attention import CausalSelfAttention

    if mode == "before":  # every full-sequence call through the explicit [B, T, T] mask

        def full_mask(self, q, k, v, pos, valid, padded):
            return self._masked(q, k, v, pos, pos, valid)

        CausalSelfAttention._full_sequence = full_mask
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig(**CONFIGS[name])).train()

    def step(n):
        ids = torch.randint(0, 253, (1, n))
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=False)

    step(256)  # warm up library code, the allocator and the gradient buffers
    before = reset_peak()
    start = time.perf_counter()
    step(T)
    seconds = time.perf_counter() - start
    extra = (status_kb("VmHWM") - before) / 1024
    return {"config": name, "mode": mode, "T": T, "extra_peak_mib": round(extra, 1), "seconds": round(seconds, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=8192)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], args.one[1], int(args.one[2]))))
        return
    rows = []
    for name in args.configs:
        for mode in ("before", "after"):
            rows.append(run_fresh("benchmarks.hnet_memory", "--one", mode, name, args.T))
            print(rows[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU, 1 thread", "rows": rows},
            indent=1,
        )
    )
    print("| config | T | before: extra peak (MiB) | after (MiB) | before / after | s before / after |")
    print("|---|---|---|---|---|---|")
    for b, a in zip(rows[::2], rows[1::2]):
        print(
            f"| {b['config']} | {b['T']} | {b['extra_peak_mib']} | {a['extra_peak_mib']} | "
            f"{b['extra_peak_mib'] / max(a['extra_peak_mib'], 1e-9):.2f} | {b['seconds']} / {a['seconds']} |"
        )


if __name__ == "__main__":
    main()
