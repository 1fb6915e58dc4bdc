"""benchmarks/gpu_suite.py on the CPU: the smoke mode (``--device cpu --tiny``) runs every section through the same code
as on a GPU (Triton kernels in the interpreter), so a broken suite shows here before a GPU session spends its minutes
on it. The GPU numbers themselves come only from a GPU (benchmarks/GPU.md).

Two smoke runs, each made once, started together and read by the tests that need them: every section with a
stand-in fla, and gla_bench alone with an fla whose import raises. Both run as on the GPU machine, ``python -m
benchmarks.gpu_suite`` from the repository root, in a fresh process (the interpreter mode is process-wide)."""

import json
import math
import os
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_suite
from benchmarks.gpu import coverage, training, warmup

ROOT = Path(__file__).resolve().parents[1]
Run = namedtuple("Run", "rc report output out")  # exit status, the JSON report (None if none), the output, --out


class SmokeRun:
    """The suite started in a fresh process with ``fla_package`` ({relative path: source}) planted first on
    PYTHONPATH; :meth:`result` waits for it."""

    def __init__(self, tmp_path, args, fla_package=None, timeout=600):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop("HF_SEQMODELS_BACKEND", None)
        if fla_package is not None:
            site = tmp_path / "site"
            for rel, src in fla_package.items():
                (site / rel).parent.mkdir(parents=True, exist_ok=True)
                (site / rel).write_text(src)
            env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
        self.out, self.log = tmp_path / "out", tmp_path / "output.log"
        cmd = [sys.executable, "-m", gpu_suite.__name__, "--device", "cpu", "--tiny", "--out", str(self.out), *args]
        with open(self.log, "w") as f:  # a file, not a pipe: the run never waits for a reader
            self.proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        self.deadline = time.monotonic() + timeout

    def result(self) -> Run:
        try:
            self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
        path = self.out / "gpu_suite.json"
        report = json.loads(path.read_text()) if path.exists() else None
        return Run(self.proc.returncode, report, self.log.read_text(errors="replace"), self.out)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


PLANTED_FAILURE = "planted: this fla was built against another triton"
STAND_IN_FLA = {  # a working "fla" (our PyTorch path under fla's name and signature) to run fla's column on the CPU
    "fla/__init__.py": "__version__ = 'stand-in'\n",
    "fla/ops/__init__.py": "",
    "fla/ops/gla/__init__.py": (
        "from hf_seqmodels.kernels import chunk_gla as _ours\n\n\n"
        "def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):\n"
        "    return _ours(q, k, v, g, scale, initial_state, output_final_state, backend='torch')\n"
    ),
    "fla/ops/simple_gla/__init__.py": (  # fla's chunk_simple_gla: a gate per head, g [B, T, H]
        "from hf_seqmodels.kernels import chunk_gla as _ours\n\n\n"
        "def chunk_simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):\n"
        "    assert g.dim() == 3\n"
        "    return _ours(q, k, v, g, scale, initial_state, output_final_state, backend='torch')\n"
    ),
}
# an fla whose import raises (as a Triton/torch version mismatch does at import time)
BROKEN_FLA = {"fla/__init__.py": f"raise RuntimeError({PLANTED_FAILURE!r})\n"}
SMOKE_RUNS = {  # name -> the suite's arguments and the fla planted for it
    "smoke": (["--fla-on-cpu"], STAND_IN_FLA),
    "smoke_broken_fla": (["--sections", "gla_bench", "--gla-shapes", "1x16", "--fla-on-cpu"], BROKEN_FLA),
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Both smoke runs, started at once so that they overlap where a core is free (each is mostly one busy process);
    any still running when the module's tests are done is stopped."""
    runs = {name: SmokeRun(tmp_path_factory.mktemp(name), *run) for name, run in SMOKE_RUNS.items()}
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="module")
def smoke(smoke_runs):
    """Every section, fla's column included (the stand-in fla)."""
    return smoke_runs["smoke"].result()


@pytest.fixture(scope="module")
def smoke_broken_fla(smoke_runs):
    """gla_bench alone, with an fla whose import raises."""
    return smoke_runs["smoke_broken_fla"].result()


def _section(run, name):
    assert run.rc == 0 and run.report is not None and name in run.report["sections"], run.output[-4000:]
    return run.report["sections"][name]


@pytest.mark.subprocess
def test_smoke_runs_every_section_on_the_cpu(smoke):
    assert smoke.rc == 0, smoke.output[-4000:]
    sections = smoke.report["sections"]
    assert list(sections) == list(gpu_suite.SECTIONS), smoke.output[-2000:]
    for name, sec in sections.items():
        assert sec["ok"] is True, (name, sec.get("error"), smoke.output[-3000:])
        assert _finite_positive(sec["seconds"]) and sec["estimate_s"] == gpu_suite.SECTIONS[name]["tiny_est_s"]
        assert not sec.get("skipped"), name
    assert (smoke.out / "gpu_suite.png").stat().st_size > 0


@pytest.mark.subprocess
def test_smoke_checks_compare_every_row(smoke):
    """Every row compared, errors small (and the rows name what they compared)."""
    tol = {"float32": 1e-4, "bfloat16": 3e-2, "float64": 1e-10}
    for name in ("gla_check", "scan_check", "pararnn_check", "memory_check", "packed_check"):
        rows = _section(smoke, name)["rows"]
        assert rows and all(r["ok"] and 0 <= r["worst"] < tol.get(r.get("dtype"), 1e-4) for r in rows), (name, rows)
    assert {r["op"] for r in _section(smoke, "gla_check")["rows"]} == {"chunk", "recurrent"}
    assert {r["op"] for r in _section(smoke, "gla_check")["rows"] if r["gates"].startswith("head")} == {
        "chunk",
        "recurrent",
    }  # a gate per head: the scalar-gate kernels
    assert {r["op"] for r in _section(smoke, "scan_check")["rows"]} == {"linear_scan", "block2_scan"}
    assert {r["solver"] for r in _section(smoke, "pararnn_check")["rows"]} == {"fused", "newton_solve", "cell"}
    assert len(_section(smoke, "packed_check")["rows"]) == 6
    memory = _section(smoke, "memory_check")["rows"][0]
    assert _finite_positive(memory["triton_ms"]) and _finite_positive(memory["torch_ms"])


@pytest.mark.subprocess
def test_smoke_checks_launch_every_triton_kernel(smoke):
    cov = _section(smoke, "coverage")
    assert cov["missing"] == [] and len(cov["rows"]) >= 10
    assert all(r["launched_by"] in coverage.CHECK_SECTIONS for r in cov["rows"])


@pytest.mark.subprocess
def test_smoke_gla_bench_times_ours_fla_and_sdpa(smoke):
    """ours, fla (the stand-in) and SDPA timed, ours against fla's output."""
    gla = _section(smoke, "gla_bench")
    assert gla["fla"] == {"skipped": None, "version": "stand-in"}
    assert len(gla["rows"]) == 2 * 2  # two tiny shapes, fwd and fwd+bwd
    for r in gla["rows"]:
        assert all(_finite_positive(r[f"{n}_ms"]) for n in ("ours", "fla", "sdpa", "ours_head", "fla_head")), r
        assert _finite_positive(r["fla/ours"]) and r["max_err_vs_fla"] < 2e-2, r  # interpreter bf16 vs torch path
        # a gate per head: our scalar-gate kernels beside (the stand-in for) fla's chunk_simple_gla
        assert _finite_positive(r["fla_head/ours_head"]) and r["max_err_head_vs_fla"] < 2e-2, r
    assert gla["fla_simple_gla"]["skipped"] is None
    assert _finite_positive(gla["cold_first_fwd_bwd_s"]["ours"])
    assert set(gla["cold_first_fwd_bwd_s"]["fla"]) == {"B1 T40", "B2 T17"}


@pytest.mark.subprocess
def test_smoke_pararnn_bench_times_every_method(smoke):
    for r in _section(smoke, "pararnn_bench")["rows"]:
        names = ("fused", "generic", "cudnn", "loop") if r["mode"] == "fwd" else ("fused", "generic", "cudnn")
        assert all(_finite_positive(r[f"{n}_ms"]) for n in names), r


@pytest.mark.subprocess
def test_smoke_model_bench_steps_both_models(smoke):
    """Both models, every shape, a finite loss near log(vocab) at initialisation."""
    rows = _section(smoke, "model_bench")["rows"]
    assert {(r["model"], r["B"], r["T"]) for r in rows} == {(m, 1, 32) for m in ("gla", "llama")} | {
        (m, 2, 24) for m in ("gla", "llama")
    }
    for r in rows:
        assert _finite_positive(r["tokens_per_s"]) and _finite_positive(r["first_step_s"]), r
        if (r["B"], r["T"]) == (1, 32):  # the first shape: the cold start (imports, build) includes its first step
            assert r["cold_start_s"] >= r["first_step_s"], r
        assert abs(r["loss_first"] - math.log(256)) < 1.0 and math.isfinite(r["loss_last"]), r


@pytest.mark.subprocess
def test_smoke_failing_fla_import_is_a_skipped_column(smoke_broken_fla):
    gla = _section(smoke_broken_fla, "gla_bench")
    assert gla["ok"] and PLANTED_FAILURE in gla["fla"]["skipped"] and "RuntimeError" in gla["fla"]["skipped"]
    assert [r["mode"] for r in gla["rows"]] == ["fwd", "fwd+bwd"]
    assert all(_finite_positive(r["ours_ms"]) and "fla_ms" not in r for r in gla["rows"])


def test_budget_skips_a_section_with_the_reason(tmp_path, monkeypatch):
    for var in ("TRITON_INTERPRET", "HF_SEQMODELS_BACKEND"):  # main() sets them for the CPU run: restored after
        monkeypatch.setenv(var, os.environ.get(var, "0" if var == "TRITON_INTERPRET" else "auto"))
    threads = torch.get_num_threads()
    try:
        rc = gpu_suite.main(
            ["--device", "cpu", "--tiny", "--sections", "memory_check", "--budget-s", "1", "--out", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert rc == 0 and "budget" in report["sections"]["memory_check"]["skipped"]
    assert report["sections"]["memory_check"]["ok"] is None


def test_train_rows_reports_oom_and_halves_the_batch():
    oom = training.OOM_ERRORS[0]
    freed = []

    def run_shape(B, T):
        if B * T > 2 * 64:
            raise oom("CUDA out of memory. Tried to allocate 8.00 GiB\nmore detail")
        if T == 7:
            raise ValueError("broken step")
        return {"tokens_per_s": float(B * T)}

    rows = training.train_rows(run_shape, [(8, 16), (8, 64), (4, 7)], free=lambda: freed.append(1))
    assert [(r["B"], r["T"]) for r in rows] == [(8, 16), (8, 64), (4, 64), (2, 64), (4, 7)]
    assert rows[0]["tokens_per_s"] == 128 and rows[3]["tokens_per_s"] == 128
    assert rows[1]["oom"] == rows[2]["oom"] == "CUDA out of memory. Tried to allocate 8.00 GiB"
    assert "ValueError: broken step" in rows[4]["error"] and "oom" not in rows[4]
    assert len(freed) == len(rows)
    # out of memory down to batch 1: one row per batch size, then the next shape
    rows = training.train_rows(lambda B, T: (_ for _ in ()).throw(oom("out of memory")), [(4, 8)])
    assert [(r["B"], "oom" in r) for r in rows] == [(4, True), (2, True), (1, True)]
    # cuBLAS failing to allocate is out of memory too; other runtime errors are not
    assert training.is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not training.is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))
    # past the deadline the remaining shapes are skipped, not run
    rows = training.train_rows(lambda B, T: {"tokens_per_s": 1.0}, [(1, 8), (1, 16)], deadline=0.0)
    assert all(r["skipped"] == "budget" for r in rows)


def test_shard_autotuning_splits_every_autotuners_configs(monkeypatch):
    import triton
    import triton.language as tl
    from triton.runtime.autotuner import Autotuner

    monkeypatch.setattr(Autotuner, "prune_configs", Autotuner.prune_configs)  # put back after the test

    @triton.jit
    def kernel(X: tl.constexpr):
        pass

    five = triton.autotune(configs=[triton.Config({"X": i}) for i in range(5)], key=[])(kernel)
    two = triton.autotune(configs=[triton.Config({"X": i}) for i in range(2)], key=[])(kernel)
    warmup._shard_autotuning(1, 3)  # process 1 of 3
    assert [c.kwargs["X"] for c in five.prune_configs({})] == [1, 4]
    assert [c.kwargs["X"] for c in two.prune_configs({})] == [1]
    warmup._shard_autotuning(2, 3)  # stacked: of [1] (above), its share is empty, so it keeps one config
    assert [c.kwargs["X"] for c in two.prune_configs({})] == [1]


def test_model_configs_match_the_named_sizes():
    """GLA-340M is fla's gla_340M.json (341.7M parameters, tied embeddings); Llama-374M has its width, depth, MLP
    and vocabulary with 16 heads and untied embeddings (373.9M)."""
    counts = {}
    for name in ("gla", "llama"):
        config, cls, _ = training.model_config(name, tiny=False, max_len=8192)
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in cls(config).parameters())
        assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size) == (
            1024,
            24,
            2816,
            32000,
        )
    assert counts == {"gla": 341_707_776, "llama": 373_867_520}


@pytest.mark.parametrize(
    "args,word",
    [
        (["--sections", "nope"], "unknown sections"),
        (["--models", "gpt2"], "--models"),
        (["--gla-shapes", ","], "at least one"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_are_refused(args, word, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_suite.parse_args(args)
    assert exc.value.code == 2 and word in capsys.readouterr().err
