"""Data-parallel training on the CPU: 2 processes (torchrun, gloo) == 1 process on the same global batches; and
``_no_split_modules`` keeps every block whole when accelerate places a model over several devices."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from integration_utils import HERE, blocks_of, build_lm, run_launches, torchrun
from safetensors.torch import load_file

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Every config of TRAIN_CONFIGS trained by two launches of ddp_train.py, started at once (each spends much of its
    time starting Python and importing torch/transformers): one process, and torchrun with 2 processes. Returns
    {n_processes: dict(dir=<one sub-folder per config>, rc=<exit status>, output=<stdout and stderr>)}."""
    root = tmp_path_factory.mktemp("ddp")
    common = [str(HERE / "ddp_train.py"), "--steps", "5", "--global-batch", "8"]
    commands = {
        1: [sys.executable, *common, "--out", str(root / "one")],
        2: [*torchrun(2), *common, "--out", str(root / "two")],
    }
    runs = run_launches(commands, root)
    return {n: dict(run, dir=root / ("one" if n == 1 else "two")) for n, run in runs.items()}


def _log(run, name, n):
    path = run["dir"] / name / "log.json"
    if not path.is_file():
        pytest.fail(f"the {n}-process launch wrote no result for {name} (rc={run['rc']}):\n{run['output'][-8000:]}")
    log = json.loads(path.read_text())
    if "error" in log:
        pytest.fail(f"{name} failed in the {n}-process launch:\n{log['error']}")
    return log


@pytest.mark.subprocess
def test_ddp_launches_exit_cleanly(ddp_runs):
    for n, run in ddp_runs.items():
        assert run["rc"] == 0, f"the {n}-process launch failed (rc={run['rc']}):\n{run['output'][-8000:]}"


@pytest.mark.subprocess
def test_two_process_ddp_matches_one_process(train_name, ddp_runs):
    one = _log(ddp_runs[1], train_name, 1)
    two = _log(ddp_runs[2], train_name, 2)
    assert (one["world_size"], one["per_device"]) == (1, 8)
    assert (two["world_size"], two["per_device"]) == (2, 4)
    assert len(one["losses"]) == len(two["losses"]) == 5
    # the run trains (so later losses depend on how the earlier updates were combined)
    assert one["losses"][-1] < one["losses"][0] - 0.5, one["losses"]
    # the loss of every step: averaged over the two halves == over the whole batch
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-5)
    # the gradient norm of every step: gradients are averaged, not summed, across processes
    torch.testing.assert_close(torch.tensor(two["grad_norms"]), torch.tensor(one["grad_norms"]), rtol=1e-4, atol=1e-6)

    w1 = load_file(str(ddp_runs[1]["dir"] / train_name / "final" / "model.safetensors"))
    w2 = load_file(str(ddp_runs[2]["dir"] / train_name / "final" / "model.safetensors"))
    assert set(w1) == set(w2)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.subprocess
@pytest.mark.parametrize("technique", ["gradient-noise", "sorted"])
def test_seeded_techniques_keep_ranks_equal(technique, ddp_runs):
    """GradientNoiseCallback / SortedDepthCallback under DDP: each rank draws a step's noise / depth from a generator
    seeded with (seed, step), so both ranks add the same noise / train the same depth and their replicas stay equal;
    and the run equals the one-process run (a depth drawn per rank would average mismatched gradients)."""
    name, plain = f"gla-conv-tied+{technique}", "gla-conv-tied"
    _log(ddp_runs[1], name, 1)
    _log(ddp_runs[2], name, 2)
    ranks = [load_file(str(ddp_runs[2]["dir"] / name / f"params_rank{r}.safetensors")) for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    one = load_file(str(ddp_runs[1]["dir"] / name / "params_rank0.safetensors"))
    for k in one:
        torch.testing.assert_close(ranks[0][k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    # the technique changed the training: the final weights differ from the same run without it
    noisy = load_file(str(ddp_runs[1]["dir"] / name / "final" / "model.safetensors"))
    without = load_file(str(ddp_runs[1]["dir"] / plain / "final" / "model.safetensors"))
    assert max(float((noisy[k] - without[k]).abs().max()) for k in noisy) > 1e-3


def test_no_split_modules_keep_blocks_whole(tiny_config):
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    model = build_lm(tiny_config)
    blocks = {name: m for name, m in model.named_modules() if type(m).__name__ in model._no_split_modules}
    block_classes = {type(b).__name__ for b in blocks_of(model)}
    assert block_classes <= set(model._no_split_modules), (block_classes, model._no_split_modules)

    # Place the model over a "cpu" budget of 30%..90% of its size and "disk": with _no_split_modules no block is
    # ever cut in two; without it, some of the same budgets cut a block (so the check can fail).
    total = compute_module_sizes(model)[""]
    in_a_block = re.compile("^(" + "|".join(re.escape(n) for n in blocks) + r")\.")
    cut_without = 0
    for fraction in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        budget = {"cpu": int(total * fraction), "disk": 10 * total}
        device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=model._no_split_modules)
        assert not [name for name in device_map if in_a_block.match(name)], (fraction, device_map)
        unconstrained = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=[])
        cut_without += any(in_a_block.match(name) for name in unconstrained)
    assert cut_without, "no budget cuts a block even without _no_split_modules: the check proved nothing"
