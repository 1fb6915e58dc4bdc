"""H-Net's training step against a byte-level Llama of the same size, on the CPU (issue 22, item 2).

    python -m benchmarks.hnet_step [--threads 1] [--batch 4] [--seq-len 512] [--repeats 5] [--profile]

Both models are built in the same process: the default ``HNetConfig()`` (3.2M parameters: Mamba-2 encoder and
decoder, a 4-layer Transformer inside) and the isotropic byte Llama of ``benchmarks/hnet_bpb.py`` (d 256, 4 layers,
its MLP width chosen to match H-Net's parameter count). A step is forward + backward of the LM loss on random bytes
(no optimizer: its cost is the same for equal parameter counts). Each figure is the fastest of ``--repeats`` steps
after one warm-up, the two models interleaved; ``--profile`` adds the share of H-Net's forward pass spent in each
kind of layer (torch profiler; containers such as the stages and blocks left out).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from .hnet_bpb import llama_matched, n_params


def step_fn(model, ids):
    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    return step


def module_shares(model, step) -> dict[str, float]:
    """Seconds of one step's forward spent inside each module class (inclusive of its children), from
    ``record_function`` ranges that forward hooks open and close."""
    import collections

    from torch.autograd.profiler import record_function

    ranges, hooks = {}, []
    for m in model.modules():
        name = type(m).__name__

        def pre(mod, args, name=name):
            ranges[id(mod)] = record_function(f"mod::{name}")
            ranges[id(mod)].__enter__()

        def post(mod, args, out):
            ranges.pop(id(mod)).__exit__(None, None, None)

        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.profiler.profile() as prof:
            step()
    finally:
        for h in hooks:
            h.remove()
    total = collections.Counter()
    for evt in prof.key_averages():
        if evt.key.startswith("mod::"):
            total[evt.key[5:]] += evt.cpu_time_total / 1e6
    return dict(total)


def main(argv=None) -> None:
    import hf_seqmodels  # noqa: F401
    from hf_seqmodels import HNetConfig, HNetForCausalLM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hnet = HNetForCausalLM(HNetConfig()).train()
    llama = llama_matched(n_params(hnet)).train()
    ids = torch.randint(0, 253, (args.batch, args.seq_len))
    steps = {"hnet": step_fn(hnet, ids), "llama": step_fn(llama, ids)}
    for fn in steps.values():
        fn()  # warm-up
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(
        f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}, B {args.batch} T {args.seq_len}, fp32, "
        f"fastest of {args.repeats}; parameters: H-Net {n_params(hnet):,}, Llama {n_params(llama):,}"
    )
    print("| model | step | H-Net speed vs Llama |\n|---|---|---|")
    print(f"| H-Net (default config) | {best['hnet'] * 1e3:.0f} ms | {best['llama'] / best['hnet']:.2f}x |")
    print(f"| byte Llama | {best['llama'] * 1e3:.0f} ms | |")
    if args.profile:
        shares = module_shares(hnet, steps["hnet"])
        step_total = shares.get(type(hnet).__name__, sum(shares.values()))
        containers = {"HNetForCausalLM", "HNetModel", "HNetStage", "HNetIsotropic", "DecoderBlock"}
        print("H-Net forward time by layer class (inclusive of its children), share of the model's forward:")
        for name, sec in sorted(shares.items(), key=lambda kv: -kv[1])[:12]:
            if name in containers:
                continue
            print(f"  {name:32s} {sec * 1e3:8.1f} ms  {sec / step_total:6.1%}")


if __name__ == "__main__":
    main()
