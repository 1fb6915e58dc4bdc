"""Helpers shared by the integration tests (architecture-agnostic)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_seqmodels

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def classes_for(config):
    """(config class, base model class, causal-LM class) registered for this config's architecture."""
    for entry in hf_seqmodels.ARCHITECTURES:
        if type(config) is entry[0]:
            return entry
    raise LookupError(f"{type(config).__name__} is not in hf_seqmodels.ARCHITECTURES")


def build_lm(config, perturb: bool = False):
    """A causal LM of the config's architecture in eval mode. ``perturb`` adds noise to every parameter (norm
    weights and biases too), so a weight that is silently re-initialized instead of loaded cannot go unnoticed."""
    model = classes_for(config)[2](config).eval()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model


def random_ids(config, *shape):
    """Token ids that avoid the special tokens (0..2 of the tiny configs; 253..255 of the byte models)."""
    special = {config.pad_token_id, config.bos_token_id, config.eos_token_id} - {None}
    hi = min([config.vocab_size] + [s for s in special if s > 2])
    return torch.randint(3, hi, shape)


def blocks_of(model):
    """The residual blocks of a model (``model.model.layers`` for stacked models, every block of an H-Net's stages,
    a recurrent-depth model's prelude, core and coda)."""
    from hf_seqmodels.layers.block import DecoderBlock
    from hf_seqmodels.models.recurrent_depth.modeling_recurrent_depth import SandwichBlock

    return [m for m in model.modules() if isinstance(m, (DecoderBlock, SandwichBlock))]


def block_runs(model) -> int:
    """Block applications in one training forward: each block once, a recurrent-depth core once per step (its tiny
    configs train at the fixed depth ``mean_recurrence``)."""
    config = model.config
    core = getattr(config, "n_layers_in_recurrent_block", 0) * (getattr(config, "mean_recurrence", 1) - 1)
    return len(blocks_of(model)) + core


# -- real text at byte level (no tokenizer download) --------------------------------------------------------------
def text_bytes() -> bytes:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


class ByteBlocks(torch.utils.data.Dataset):
    """Consecutive, non-overlapping ``block_size``-byte windows of the pydoc topics text (vocab 256), in order."""

    def __init__(self, block_size: int, num_blocks: int, offset: int = 0):
        data = torch.frombuffer(bytearray(text_bytes()), dtype=torch.uint8).long()
        need = offset + block_size * num_blocks
        if need > data.numel():
            raise ValueError(f"the text has {data.numel()} bytes, {need} needed")
        self.blocks = data[offset:need].view(num_blocks, block_size)

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, i):
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids.clone()}


# -- a memory-bank model for the multi-process tests (fsdp_train.py, test_parallel.py) ----------------------------
def memory_model(anchor_config):
    """A causal LM of ``anchor_config`` (frozen) with a 2-level trainable bank (branching 3: 3 + 9 clusters, and
    the generic block of each level)."""
    from hf_seqmodels.memory import MemoryBankConfig, attach_memory_bank, build_memory_index

    texts = [f"topic {i % 3} text number {i} about subject {i % 3}" for i in range(18)]
    index = build_memory_index(texts, levels=2, branching=3, embed_dim=32, progress=False, seed=0)
    model = build_lm(anchor_config)
    cfg = MemoryBankConfig(
        block_sizes=(4, 2), branching=3, generic_memory_prob=0.0, memory_lr=2e-2, memory_weight_decay=0.5
    )
    return attach_memory_bank(model, cfg, index)


def memory_paths(n_rows: int, global_batch: int) -> torch.Tensor:
    """Per-row paths ``[n_rows, 2]`` (the same whatever the world size): level-1 clusters 0..1 and level-2 clusters
    0..5 only (cluster 2 of level 1 and 6..8 of level 2 are never fetched), and level-2 cluster 5 only by the second
    half of each step's rows (the second process's, under 2 processes)."""
    rows = torch.arange(n_rows)
    first_half = (rows % global_batch) < global_batch // 2
    level1 = rows % 2
    level2 = torch.where(first_half, rows % 5, 5)
    return torch.stack([level1, level2], dim=1)


# -- fresh Python processes ----------------------------------------------------------------------------------------
def clean_env(**extra) -> dict:
    """The environment for a child process: offline, no seed override, one BLAS thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_SEQMODELS_SEED", "PYTHONPATH")}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class FreshProcesses:
    """Every tiny config saved with perturbed weights and its inputs, then loaded by two fresh interpreters started at
    once (``fresh_process_child.py`` in modes "import" and "remote"; each spends seconds importing torch and
    transformers). ``expected[name]`` holds the logits of the saved model in this process, ``classes[name]`` its
    causal-LM class; ``report(mode)`` is a child's JSON report (the test fails with the child's output if it failed)."""

    MODES = ("import", "remote")

    def __init__(self, root: Path, configs: dict, seed: int, fla: bool, timeout: float = 600):
        self.root, self.seed = root, seed
        self.expected, self.classes = {}, {}
        for name, factory in configs.items():
            config = factory()
            lm_class = classes_for(config)[2]
            self.classes[name] = f"{lm_class.__module__}.{lm_class.__name__}"
            model = build_lm(config, perturb=True)
            model.save_pretrained(root / name)  # the inputs travel in the model folder (an extra file is harmless)
            ids = random_ids(config, 2, 13)
            with torch.no_grad():
                self.expected[name] = model(ids).logits
            save_file({"input_ids": ids}, str(root / name / "inputs.safetensors"))
        (root / "spec.json").write_text(json.dumps(dict(names=list(self.expected), fla=fla)))

        cwd = root / "cwd"  # empty: what an interpreter outside the repository finds
        cwd.mkdir()
        env = clean_env(HF_MODULES_CACHE=root / "modules_cache", HF_HOME=root / "hf_home")
        source = (HERE / "fresh_process_child.py").read_text()
        procs = {
            mode: subprocess.Popen(
                [sys.executable, "-c", source, mode, str(root)],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for mode in self.MODES
        }
        self.runs = {}
        try:
            for mode, proc in procs.items():
                stdout, stderr = proc.communicate(timeout=timeout)
                self.runs[mode] = (proc.returncode, stdout, stderr)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def report(self, mode: str) -> dict:
        rc, stdout, stderr = self.runs[mode]
        if rc != 0:
            pytest.fail(
                f"the fresh {mode!r} process failed (rc={rc}, seed={self.seed}):\n--- stdout\n"
                f"{stdout[-3000:]}\n--- stderr\n{stderr[-6000:]}"
            )
        return json.loads(stdout.strip().splitlines()[-1])

    def logits(self, name: str, mode: str):
        return load_file(str(self.root / name / f"logits_{mode}.safetensors"))["logits"]


# -- comparisons ---------------------------------------------------------------------------------------------------
#: Two float32 computations of the same logits by different routes (chunked vs step-by-step, padded vs alone, other
#: matmul shapes) differ by rounding that the network amplifies (a head output near zero is scaled up by its RMSNorm):
#: typically ~1e-6, rarely ~1e-4 of the logits' scale. Any algorithmic error (state, conv tail, mask, reorder) shows
#: up at >= 1e-2 of the scale. Tolerances are relative to the largest reference logit.
LOGIT_REL_TOL = 5e-4


def assert_logits_close(actual, expected, msg=""):
    scale = float(expected.abs().max())
    diff = float((actual - expected).abs().max())
    assert actual.shape == expected.shape, (actual.shape, expected.shape, msg)
    assert diff <= LOGIT_REL_TOL * scale, f"{msg}: max |diff| {diff:.3g} > {LOGIT_REL_TOL} x logit scale {scale:.3g}"


def assert_same_greedy(tokens, ref_tokens, ref_step_logits, tie_rel=2 * LOGIT_REL_TOL):
    """Greedy continuations ``[B, N]`` are equal, except that where the reference's top-2 logits are within float
    error of a tie (``tie_rel`` x the logit scale) the two may diverge from that step on."""
    assert tokens.shape == ref_tokens.shape, (tokens.shape, ref_tokens.shape)
    for b in range(tokens.shape[0]):
        diff = (tokens[b] != ref_tokens[b]).nonzero()
        if diff.numel() == 0:
            continue
        t = int(diff[0])
        top2 = ref_step_logits[t][b].float().topk(2).values
        tie_margin = tie_rel * float(ref_step_logits[t][b].abs().max())
        assert float(top2[0] - top2[1]) < tie_margin, (
            f"row {b}: greedy tokens differ at step {t} ({tokens[b].tolist()} vs {ref_tokens[b].tolist()}) where the "
            f"reference's top-2 logit margin is {float(top2[0] - top2[1]):.3g} (not a tie)"
        )


# -- multi-process launches (torchrun, gloo) -----------------------------------------------------------------------
def torchrun(n: int) -> list[str]:
    """The command prefix that starts ``n`` processes of a script on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def run_launches(commands: dict, root: Path, timeout: float = 900) -> dict:
    """Start every command of ``{name: argv}`` at once in ``root`` (each launch spends most of its time starting
    Python and importing torch/transformers), each in its own process group so that a hung one is stopped with its
    workers; wait for all. Returns ``{name: dict(rc=exit status, output=stdout and stderr)}``."""
    procs = {
        name: subprocess.Popen(
            cmd,
            cwd=root,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for name, cmd in commands.items()
    }
    runs = {}
    try:
        for name, proc in procs.items():
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output = proc.communicate()[0] + f"\n[stopped after {timeout:g} s]"
            runs[name] = dict(rc=proc.returncode, output=output)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return runs
