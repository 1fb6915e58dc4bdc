"""ParaRNN's ``mode="auto"`` against the two solves it picks from, and the training step against torch.nn.GRU (CPU).

    python -m benchmarks.pararnn_auto [--threads 1] [--repeats 3] [--T 1024] [--sweep 64,256,1024] [--no-sizes]

ParaGRU mixer (hidden = state = 256, B 4, T 1024, fp32, short convolution, one head):

1. prefill without gradients: ``auto`` vs ``sequential`` vs ``parallel`` (Newton),
2. a training step (forward + backward of the summed output): ``auto`` vs ``sequential`` vs ``parallel`` vs
   ``torch.nn.GRU(256, 256)`` (a dense-recurrent GRU, cuDNN-free CPU kernel: the peer a user would reach for),
3. the crossovers ``auto``'s rule (``hf_seqmodels.layers.pararnn.resolve_mode``) rests on: sequential / Newton
   time of the mixer over ``--sweep`` lengths, without and with gradients; then of the bare cells (ParaGRU,
   ParaLSTM) without gradients over batch x state sizes at T 512, around ``AUTO_SEQUENTIAL_MIN_STATE``.

Each figure is the fastest of ``--repeats`` calls after one warm-up; ratios are printed as ours / peer.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def fastest(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    from hf_seqmodels.layers.pararnn import AUTO_SEQUENTIAL_MIN_STATE, ParaGRUCell, ParaLSTMCell, ParaRNNMixer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--sweep", default="64,256,1024", help="lengths for the crossover (empty: skip)")
    p.add_argument("--no-sizes", action="store_true", help="skip the cells' crossover over batch x state sizes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T, d = args.B, args.T, args.d
    print(
        f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}, B {B} T {T} d {d}, fp32, "
        f"fastest of {args.repeats}"
    )
    mixer = ParaRNNMixer(d, cell="gru")
    gru = torch.nn.GRU(d, d, batch_first=True)
    x = torch.randn(B, T, d)

    def run(mode, grad, length=T):
        mixer.mode = mode
        xs = x[:, :length]

        def fn():
            if grad:
                mixer.zero_grad(set_to_none=True)
                mixer(xs.requires_grad_(False)).sum().backward()
            else:
                with torch.no_grad():
                    mixer(xs)

        return fastest(fn, args.repeats)

    def run_gru(grad):
        def fn():
            if grad:
                gru.zero_grad(set_to_none=True)
                gru(x)[0].sum().backward()
            else:
                with torch.no_grad():
                    gru(x)

        return fastest(fn, args.repeats)

    pre = {m: run(m, False) for m in ("auto", "sequential", "parallel")}
    pre["nn.GRU"] = run_gru(False)
    print("prefill (no grad): " + ", ".join(f"{m} {t * 1e3:.0f} ms" for m, t in pre.items()))
    print(
        f"  auto / sequential {pre['auto'] / pre['sequential']:.2f}, auto / newton {pre['auto'] / pre['parallel']:.2f}"
        f", auto / nn.GRU {pre['auto'] / pre['nn.GRU']:.2f}"
    )
    train = {m: run(m, True) for m in ("auto", "sequential", "parallel")}
    train["nn.GRU"] = run_gru(True)
    print("training step (fwd + bwd): " + ", ".join(f"{m} {t * 1e3:.0f} ms" for m, t in train.items()))
    print(
        f"  auto / nn.GRU {train['auto'] / train['nn.GRU']:.2f}, auto / sequential "
        f"{train['auto'] / train['sequential']:.2f}, auto / newton {train['auto'] / train['parallel']:.2f}"
    )
    for length in [int(s) for s in args.sweep.split(",") if s]:
        ratios = [run("sequential", g, length) / run("parallel", g, length) for g in (False, True)]
        print(f"crossover T {length}: sequential / newton {ratios[0]:.2f} without grad, {ratios[1]:.2f} with grad")
    if args.no_sizes:
        return
    print(f"cells without grad, T 512 (auto: sequential from {AUTO_SEQUENTIAL_MIN_STATE} state elements per step)")
    for cls in (ParaGRUCell, ParaLSTMCell):
        for b, dim in ((1, 16), (1, 64), (2, 64), (1, 128), (4, 64), (1, 256), (2, 256), (16, 64)):
            cell, xs = cls(dim, dim), torch.randn(b, 512, dim)
            with torch.no_grad():
                seq, newton = (fastest(lambda m=m: cell(xs, mode=m), args.repeats) for m in ("sequential", "parallel"))
            elements = b * dim * (2 if cell.structure == "block2" else 1)
            print(f"  {cls.__name__} B {b} d {dim} ({elements} state elements): sequential / newton {seq / newton:.2f}")


if __name__ == "__main__":
    main()
