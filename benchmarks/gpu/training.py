"""The GPU suite's model_bench: one training step of GLA-340M and of Llama-374M (bf16 autocast, fp32 master weights,
fused AdamW), each model in a fresh process with an empty Triton cache (``model_child``), so that its first step is
what a user's first step costs on a fresh machine; then the timed steps per shape. Out of memory is a row, and the
same length is retried at half the batch (``train_rows``).
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.gpu.common import (
    BF16,
    log_tail,
    print_table,
    read_report,
    remaining,
    section,
    spawn_child,
    write_atomic,
)

OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)
MODELS = ("gla", "llama", "fla_gla")
DEFAULT_MODELS = ("gla", "llama")


def model_config(name, tiny, max_len):
    """(config, model class, description) of GLA-340M (fla's gla_340M.json: hidden 1024, 24 layers, 4 heads,
    expand_k 0.5, expand_v 1, SwiGLU 2816, tied embeddings, vocab 32000), Llama-374M (the same width, depth, MLP and
    vocabulary; 16 heads of 64, untied embeddings) or fla's own GLA-340M (the peer, opt-in). ``tiny``: 2 layers of
    32."""
    size = (
        dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, intermediate_size=64)
        if tiny
        else dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, intermediate_size=2816)
    )
    heads = 2 if tiny else 4
    if name == "gla":
        from hf_seqmodels import GLAConfig, GLAForCausalLM

        return (
            GLAConfig(num_heads=heads, expand_k=0.5, expand_v=1.0, tie_word_embeddings=True, use_cache=False, **size),
            GLAForCausalLM,
            "hf-seqmodels GLA-340M",
        )
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            num_attention_heads=2 if tiny else 16,
            num_key_value_heads=2 if tiny else 16,
            max_position_embeddings=max_len,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            use_cache=False,
            **size,
        )
        config._attn_implementation = "sdpa"
        return config, LlamaForCausalLM, "transformers Llama-374M (SDPA)"
    if name == "fla_gla":
        from fla.models import GLAConfig as FlaGLAConfig
        from fla.models import GLAForCausalLM as FlaGLAForCausalLM

        return (
            FlaGLAConfig(
                num_heads=heads,
                expand_k=0.5,
                expand_v=1.0,
                hidden_ratio=4,
                tie_word_embeddings=True,
                use_cache=False,
                attn_mode="chunk",
                fuse_norm=True,
                fuse_cross_entropy=True,
                **{**size, "intermediate_size": None},
            ),
            FlaGLAForCausalLM,
            "fla GLA-340M",
        )
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def is_oom(e):
    return isinstance(e, OOM_ERRORS) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "CUBLAS_STATUS_ALLOC_FAILED" in str(e))
    )


def train_rows(run_shape, shapes, emit=lambda rows: None, deadline=None, free=lambda: None):
    """Rows of ``run_shape(B, T) -> dict`` for every (B, T). Out of memory is a row (``oom``), then the same T is
    retried at half the batch, down to 1; any other error is a row too, and the next shape is tried."""
    rows = []
    for B, T in shapes:
        b = B
        while True:
            if deadline is not None and time.monotonic() > deadline:
                rows.append(dict(B=b, T=T, skipped="budget"))
                break
            try:
                row = dict(B=b, T=T, **run_shape(b, T))
            except Exception as e:  # the traceback (and the step's tensors) are released when this block ends
                if not is_oom(e):
                    traceback.print_exc()
                row = dict(
                    B=b,
                    T=T,
                    **(
                        {"oom": str(e).splitlines()[0][:300]}
                        if is_oom(e)
                        else {"error": f"{type(e).__name__}: {e}"[:300]}
                    ),
                )
            free()
            rows.append(row)
            emit(rows)
            if "oom" not in row or b == 1:
                break
            b //= 2
    return rows


def model_child(args):
    t_spawn = args.child_spawned
    out = {"model": args.child_model, "rows": []}
    write = lambda: write_atomic(args.child_out, out)  # noqa: E731
    write()
    dev = args.device
    max_len = max(T for _, T in args.model_shapes)
    config, cls, out["description"] = model_config(args.child_model, args.tiny, max_len)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = cls(config)
    model.train()
    out["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    out["build_s"] = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
    write()
    deadline = time.monotonic() + args.budget_s - (time.time() - t_spawn)  # the budget counts from the spawn

    def step(ids):
        with torch.autocast(device_type=dev, dtype=BF16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)  # syncs

    def run_shape(B, T):
        ids = torch.randint(config.vocab_size, (B, T), device=dev)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        first_loss = step(ids)
        row = dict(first_step_s=time.perf_counter() - t0, loss_first=first_loss)
        if "cold_start_s" not in out:  # process start to the end of the first step (imports, build, compile)
            out["cold_start_s"] = time.time() - t_spawn
            out["first_step_s"] = row["first_step_s"]
            out["first_shape"] = f"B{B} T{T}"
        times = []
        for _ in range(args.model_steps):
            t0 = time.perf_counter()
            row["loss_last"] = step(ids)
            times.append(time.perf_counter() - t0)
            if time.monotonic() > deadline:
                break
        s = sorted(times)[len(times) // 2]
        row.update(step_ms=s * 1e3, tokens_per_s=B * T / s, steps=len(times))
        if dev == "cuda":
            row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        return row

    def free():
        opt.zero_grad(set_to_none=True)
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()

    def emit(rows):
        out["rows"] = rows
        write()

    train_rows(run_shape, args.model_shapes, emit, deadline, free)
    write()
    return 0


@section("model_bench", est_s=75, tiny_est_s=35)
def model_bench(args):
    rows, ok, reports = [], True, {}
    names = list(args.models)
    for i, name in enumerate(names):
        left = remaining(args) - 5
        reserve = 40 * sum(1 for n in names[i + 1 :] if n in DEFAULT_MODELS)  # leave the next default models a chance
        timeout = left - reserve if left - reserve > 30 else left
        if timeout < 20:
            rows.append(dict(model=name, skipped=f"budget: {left:.0f} s left"))
            ok = ok and name not in DEFAULT_MODELS
            continue
        cache = tempfile.mkdtemp(prefix="gpu_suite_triton_model_")
        out = Path(tempfile.mkdtemp(prefix="gpu_suite_model_")) / f"{name}.json"
        log = out.with_suffix(".log")
        extra = ("--child-model", name, "--budget-s", str(max(5.0, timeout - 10)))
        print(f"model_bench: {name}, fresh process, empty Triton cache, at most {timeout:.0f} s")
        sys.stdout.flush()
        with open(log, "w") as f:
            proc = spawn_child(args, "model", out, f, dict(os.environ, TRITON_CACHE_DIR=cache), extra)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(cache, ignore_errors=True)
        report = read_report(out)
        report["returncode"] = proc.returncode
        report["log_tail"] = log_tail(log)
        shutil.rmtree(out.parent, ignore_errors=True)
        reports[name] = report
        common = dict(model=name, params_M=report.get("params_M"), cold_start_s=report.get("cold_start_s"))
        for r in report.get("rows", []):
            rows.append({**common, **r})
        if proc.returncode != 0:
            what = "killed at the time limit" if proc.returncode == -9 else f"exit status {proc.returncode}"
            rows.append(dict(model=name, error=f"{what}; last output: {report['log_tail'][-300:]}"))
            print(report["log_tail"])
        measured = any(r.get("tokens_per_s") for r in report.get("rows", []))
        broken = any(r.get("error") for r in report.get("rows", []))
        if name in DEFAULT_MODELS:
            ok = ok and measured and not broken and proc.returncode == 0
    print_table(
        "Training step, bf16 autocast + fused AdamW, median of the timed steps (first step: compile "
        "included for the first shape; cold start: process start to the end of the first step)",
        rows,
        [
            "model",
            "params_M",
            "B",
            "T",
            "tokens_per_s",
            "step_ms",
            "first_step_s",
            "cold_start_s",
            "peak_GiB",
            "loss_first",
            "loss_last",
            "oom",
            "error",
            "skipped",
        ],
    )

    def plot(axes):
        done = [r for r in rows if r.get("tokens_per_s")]
        ax = axes[0]
        ax.bar(range(len(done)), [r["tokens_per_s"] for r in done])
        ax.set_xticks(range(len(done)), [f"{r['model']}\nB{r['B']} T{r['T']}" for r in done])
        ax.set_ylabel("tokens/s")
        ax.set_title("training step, bf16 autocast, AdamW")

    return {"ok": ok, "rows": rows, "children": reports, "plot": plot, "panels": 1}
