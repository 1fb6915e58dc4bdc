"""Context parallelism checks that ``test_context_parallel.py`` runs in ONE launch of 3 processes (gloo, CPU):
every case runs over a 2-rank group (ranks 0, 1; rank 2 waits) and over all 3 ranks, and is compared with the same
computation on the whole sequence in one process (each rank computes that reference itself, outside the block).

    python -m torch.distributed.run --standalone --nproc_per_node 3 cp_check.py --out DIR

Cases (fp64, sequence lengths not divisible by the rank count, slices of unequal length):
- ``chunk_gla`` with a per-key gate and a per-head gate: the output and the final state, and the gradients of q, k,
  v, g from random upstream gradients of both;
- a GLA model with short convolutions (conv_size 4): the logits and every parameter's gradient of the loss as the
  ``context_parallel`` docstring combines it (per-rank summed token losses over the total, gradients summed), also
  with a row left-padded past the first rank's slice (attention_mask sliced like the ids; padded logits not compared);
- Liger and Lizard models (their linear branch on chunk_gla, their sliding window on a key/value halo), left-padded;
- ``linear_scan`` and ``block2_scan``, forward and reversed, maps of either sign and some zero: the states and the
  gradients of the maps and inputs;
- S4D and Aaren models (on the distributed ``block2_scan`` / ``linear_scan``), left-padded;
- two residual Mamba2Mixer layers (their convolution on a halo, their scan on chunk_gla's per-head gate), left-padded:
  the outputs, the input's and every parameter's gradient;
- ParaGRU and ParaLSTM models (Newton's iterations on the distributed scans, a global convergence test), left-padded,
  and with one Newton iteration (each rank then falls back to the step-by-step solve from the previous rank's last
  state; checked that it did);
- refusals: ParaRNN's mode="sequential" and H-Net inside the block raise NotImplementedError naming the layer; a
  scan given an ``initial_state`` on a slice raises ValueError naming it;
- ``cp_train.py``'s ``ContextParallelTrainer`` runs over the 3 ranks (written to ``DIR/trainer``).
Rank 0 writes ``DIR/result.json``: the largest relative error of each case over the ranks (or the errors raised).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import TINY_CONFIGS  # noqa: E402
from integration_utils import build_lm, random_ids  # noqa: E402

from hf_seqmodels import GLAConfig, context_parallel  # noqa: E402
from hf_seqmodels.kernels import block2_scan, chunk_gla, linear_scan  # noqa: E402


def bounds(T: int, world: int, rank: int) -> tuple[int, int]:
    """Unequal contiguous slices: rank r of W holds [lo, hi), the first ranks one position shorter."""
    cuts = torch.linspace(0, T, world + 1).round().long().tolist()
    cuts[1:-1] = [c - 1 for c in cuts[1:-1]]  # shift the inner cuts: lengths differ even when W divides T
    return cuts[rank], cuts[rank + 1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def check_op(group, ranks, T, per_head, seed) -> float:
    torch.manual_seed(seed)
    B, H, K, V = 2, 3, 5, 7
    q, k = torch.randn(B, T, H, K, dtype=torch.float64), torch.randn(B, T, H, K, dtype=torch.float64)
    v = torch.randn(B, T, H, V, dtype=torch.float64)
    g = F.logsigmoid(2 * torch.randn(B, T, H, *(() if per_head else (K,)), dtype=torch.float64))
    do, dfin = torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g)]
    o, fin = chunk_gla(*leaves, output_final_state=True)
    ((o * do).sum() + (fin * dfin).sum()).backward()
    ref_grads = [t.grad for t in leaves]

    r, W = ranks.index(dist.get_rank()), len(ranks)
    lo, hi = bounds(T, W, r)
    mine = [t[:, lo:hi].clone().requires_grad_() for t in (q, k, v, g)]
    with context_parallel(group):
        o_r, fin_r = chunk_gla(*mine, output_final_state=True)
    loss = (o_r * do[:, lo:hi]).sum() + ((fin_r * dfin).sum() if r == W - 1 else 0)
    loss.backward()
    errs = [rel(o_r, o[:, lo:hi].detach())]
    if r == W - 1:
        errs.append(rel(fin_r, fin.detach()))
    errs += [rel(t.grad, gr[:, lo:hi]) for t, gr in zip(mine, ref_grads)]
    return max(errs)


def check_scan(group, ranks, T, block2, reverse, seed) -> float:
    """``linear_scan`` / ``block2_scan`` (``reverse`` too) with O(1) maps of either sign, some exactly zero: the
    states and the gradients of the maps and inputs from a random upstream gradient."""
    torch.manual_seed(seed)
    B, D = 2, 5
    tail = (2,) if block2 else ()
    a = torch.randn(B, T, D, *tail, *tail, dtype=torch.float64) * (0.6 if block2 else 1.0)
    a = a * (torch.rand(B, T, D, *tail, *tail) > 0.05)  # a few maps forget the state
    b, dh = torch.randn(B, T, D, *tail, dtype=torch.float64), torch.randn(B, T, D, *tail, dtype=torch.float64)
    scan = block2_scan if block2 else linear_scan
    leaves = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    h = scan(*leaves, reverse=reverse)
    (h * dh).sum().backward()

    r, W = ranks.index(dist.get_rank()), len(ranks)
    lo, hi = bounds(T, W, r)
    mine = [a[:, lo:hi].clone().requires_grad_(), b[:, lo:hi].clone().requires_grad_()]
    with context_parallel(group):
        h_r = scan(*mine, reverse=reverse)
    (h_r * dh[:, lo:hi]).sum().backward()
    errs = [rel(h_r, h[:, lo:hi])] + [rel(t.grad, ref.grad[:, lo:hi]) for t, ref in zip(mine, leaves)]
    return max(errs)


def gla_model(seed):
    torch.manual_seed(seed)
    config = GLAConfig(
        vocab_size=64,
        hidden_size=32,
        num_heads=2,
        num_hidden_layers=2,
        use_short_conv=True,
        conv_size=4,
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return build_lm(config).double().train()


def token_loss_sum(logits, shift_labels):
    return F.cross_entropy(logits.flatten(0, 1), shift_labels.flatten(), reduction="sum", ignore_index=-100)


def tiny_model(name, seed, **overrides):
    torch.manual_seed(seed)
    return build_lm(TINY_CONFIGS[name](**overrides)).double().train()


def check_model(group, ranks, T, seed, pad=0, name=None, fallback=None, **overrides) -> float:
    """``pad``: the first row is left-padded with ``pad`` positions (attention_mask 0, no labels there). ``name``: a
    TINY_CONFIGS model (with ``overrides``) instead of the GLA with short convolutions. ``fallback`` (ParaRNN): whether
    every Newton solve of the split run must have fallen back to the step-by-step solve."""
    model = gla_model(seed) if name is None else tiny_model(name, seed, **overrides)
    torch.manual_seed(seed + 1)
    ids = random_ids(model.config, 2, T)
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    ids[0, :pad] = model.config.pad_token_id
    shift = F.pad(ids[:, 1:], (0, 1), value=-100)
    shift[0, : max(pad - 1, 0)] = -100
    n_tokens = int((shift != -100).sum())
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    (token_loss_sum(logits, shift) / n_tokens).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    r, W = ranks.index(dist.get_rank()), len(ranks)
    lo, hi = bounds(T, W, r)
    with context_parallel(group):
        logits_r = model(
            input_ids=ids[:, lo:hi],
            attention_mask=mask[:, lo:hi],
            position_ids=torch.arange(lo, hi)[None],
            use_cache=False,
        ).logits
    (token_loss_sum(logits_r, shift[:, lo:hi]) / n_tokens).backward()
    if fallback is not None:
        infos = [m.newton_info for m in model.modules() if hasattr(m, "newton_info")]
        if not infos or any(i is None or i.fallback != fallback for i in infos):
            raise AssertionError(f"the split run's Newton solves: {infos}, expected fallback={fallback}")
    valid = mask[:, lo:hi, None].bool()
    errs = [rel(logits_r * valid, (logits[:, lo:hi] * valid).detach())]
    for n, p in model.named_parameters():
        dist.all_reduce(p.grad, group=group)
        errs.append(rel(p.grad, ref[n]))
    return max(errs)


def check_mamba2(group, ranks, T, seed, pad) -> float:
    """Two residual Mamba2Mixer layers (n_groups 2, d_conv 4) on random fp64 hidden states, the first row
    left-padded with ``pad`` positions: the outputs at real positions, the input's gradient and every parameter's
    gradient from a random upstream gradient."""
    from hf_seqmodels.layers.mamba2 import Mamba2Mixer

    torch.manual_seed(seed)
    D = 16
    layers = torch.nn.ModuleList(
        Mamba2Mixer(D, d_state=6, head_dim=8, n_groups=2, d_conv=4, dt_min=0.1, dt_max=1.0, layer_idx=i)
        for i in range(2)
    ).double()

    def run(x, mask):
        for layer in layers:
            x = x + layer(x, attention_mask=mask)
        return x

    x = torch.randn(2, T, D, dtype=torch.float64)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :pad] = 0
    dy = torch.randn(2, T, D, dtype=torch.float64) * mask[..., None]
    xr = x.clone().requires_grad_()
    y = run(xr, mask)
    (y * dy).sum().backward()
    ref = {n: p.grad.clone() for n, p in layers.named_parameters()}
    layers.zero_grad(set_to_none=True)

    r, W = ranks.index(dist.get_rank()), len(ranks)
    lo, hi = bounds(T, W, r)
    xs = x[:, lo:hi].clone().requires_grad_()
    with context_parallel(group):
        y_r = run(xs, mask[:, lo:hi])
    (y_r * dy[:, lo:hi]).sum().backward()
    valid = mask[:, lo:hi, None].bool()
    errs = [rel(y_r * valid, (y[:, lo:hi] * valid).detach()), rel(xs.grad, xr.grad[:, lo:hi])]
    for n, p in layers.named_parameters():
        dist.all_reduce(p.grad, group=group)
        errs.append(rel(p.grad, ref[n]))
    return max(errs)


def check_refusals(group) -> dict:
    out = {}
    for name, overrides, want in (
        ("paragru", dict(mode="sequential"), "ParaGRUCell mode='sequential'"),
        ("hnet", {}, "H-Net"),
    ):
        model = build_lm(TINY_CONFIGS[name](**overrides))
        ids = random_ids(model.config, 1, 12)
        try:
            with context_parallel(group):
                model(input_ids=ids, use_cache=False)
            out[name] = "no error"
        except NotImplementedError as e:
            out[name] = "ok" if want in str(e) and "context parallelism" in str(e) else f"wrong message: {e}"
    # a state given to a scan on a slice (it enters from the previous rank): a ValueError naming the argument
    a = torch.rand(1, 5, 3)
    try:
        with context_parallel(group):
            linear_scan(a, a, initial_state=a[:, 0])
        out["linear_scan initial_state"] = "no error"
    except ValueError as e:
        ok = "linear_scan under context_parallel" in str(e) and "`initial_state`" in str(e)
        out["linear_scan initial_state"] = "ok" if ok else f"wrong message: {e}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = {2: ([0, 1], dist.new_group([0, 1])), world: (list(range(world)), None)}
    result, failed = {}, 0
    cases = []
    for W, (ranks, group) in groups.items():
        for T in (37, 131):  # 131 > 2 chunks of 64 on a 2-rank slice
            for per_head in (False, True):
                cases.append(
                    (
                        f"op W={W} T={T} {'per-head' if per_head else 'per-key'}",
                        W,
                        ranks,
                        group,
                        lambda g, rk, T=T, ph=per_head: check_op(g, rk, T, ph, seed=T),
                    )
                )
        for block2 in (False, True):
            for reverse in (False, True):
                cases.append(
                    (
                        f"op W={W} T=37 {'block2_scan' if block2 else 'linear_scan'}{' reverse' if reverse else ''}",
                        W,
                        ranks,
                        group,
                        lambda g, rk, b2=block2, rv=reverse: check_scan(g, rk, 37, b2, rv, seed=11),
                    )
                )
        cases.append((f"model W={W} T=29", W, ranks, group, lambda g, rk: check_model(g, rk, 29, seed=5)))
        cases.append(
            (f"model W={W} T=29 left-padded", W, ranks, group, lambda g, rk: check_model(g, rk, 29, seed=6, pad=12))
        )
        cases.append(
            (f"op W={W} T=23 mamba2 left-padded", W, ranks, group, lambda g, rk: check_mamba2(g, rk, 23, 8, pad=9))
        )
        # liger, lizard: the linear branch on chunk_gla, the window on a key/value halo; s4d: block2_scan; aaren:
        # linear_scan after the running max's exchange
        for arch in ("liger", "lizard", "s4d", "aaren", "paragru", "paralstm-tied"):
            cases.append(
                (
                    f"model W={W} T=29 {arch} left-padded",
                    W,
                    ranks,
                    group,
                    lambda g, rk, a=arch: check_model(g, rk, 29, seed=7, pad=11, name=a),
                )
            )
        for arch in ("paragru", "paralstm-tied"):  # one Newton iteration, then the step-by-step solve rank by rank
            cases.append(
                (
                    f"model W={W} T=29 {arch} fallback",
                    W,
                    ranks,
                    group,
                    lambda g, rk, a=arch: check_model(g, rk, 29, seed=9, name=a, fallback=True, newton_max_iter=1),
                )
            )
    for name, W, ranks, group, fn in cases:
        err = torch.tensor(0.0, dtype=torch.float64)
        if rank in ranks:
            try:
                err = torch.tensor(fn(group, ranks), dtype=torch.float64)
            except Exception:
                err = torch.tensor(float("inf"), dtype=torch.float64)
                result[name + " error"] = traceback.format_exc()
                failed += 1
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        result[name] = float(err)
    result["refusals"] = check_refusals(None)
    # ContextParallelTrainer over the 3 ranks (cp_train.py; test_parallel.py compares it with Trainer in one process)
    import cp_train

    trainer_failed = cp_train.train_all(Path(args.out) / "trainer", world)
    if trainer_failed:
        result["trainer error"] = f"{trainer_failed} ContextParallelTrainer run(s) failed: see DIR/trainer/*/log.json"
        failed += trainer_failed
    if rank == 0:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))
    return failed


if __name__ == "__main__":
    failed = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)
