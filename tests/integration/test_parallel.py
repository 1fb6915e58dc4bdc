"""Training past one process on the CPU (gloo), three launches started at once (each spends much of its time
starting Python and importing torch/transformers):

- FSDP (``hf_seqmodels.parallel.shard_model``, torch's ``fully_shard``): ``fsdp_train.py`` alone (one process, an
  unsharded model) and under torchrun with 2 processes (sharded), every architecture of TRAIN_CONFIGS and a
  memory-bank model (sharded, and under DDP): the same global losses, the same final weights, and the folder saved by
  the 2 sharded processes loads into this process with their logits.
- context parallelism (``hf_seqmodels.context_parallel``): ``cp_check.py`` under torchrun with 3 processes (cases
  over 2 and 3 ranks), against the unsplit run in one process.
- ``ContextParallelTrainer`` (``cp_train.py``, inside the launches above): under torchrun with 2 processes
  (``fsdp_train.py``'s) and 3 (``cp_check.py``'s), against ``Trainer`` on the whole sequences in ``fsdp_train.py``'s
  one process.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from integration_utils import HERE, blocks_of, build_lm, memory_model, memory_paths, run_launches, torchrun
from safetensors.torch import load_file

from hf_seqmodels.parallel import block_classes, shard_model


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """{name: dict(dir=..., rc=..., output=...)} for the launches "one" and "two" (fsdp_train.py) and "cp"."""
    root = tmp_path_factory.mktemp("parallel")
    commands = {
        "one": [sys.executable, str(HERE / "fsdp_train.py"), "--out", str(root / "one")],
        "two": [*torchrun(2), str(HERE / "fsdp_train.py"), "--out", str(root / "two")],
        "cp": [*torchrun(3), str(HERE / "cp_check.py"), "--out", str(root / "cp")],
    }
    return {name: dict(run, dir=root / name) for name, run in run_launches(commands, root).items()}


def _log(run, name):
    path = run["dir"] / name / "log.json"
    if not path.is_file():
        pytest.fail(f"the launch wrote no result for {name} (rc={run['rc']}):\n{run['output'][-8000:]}")
    log = json.loads(path.read_text())
    if "error" in log:
        pytest.fail(f"{name} failed:\n{log['error']}")
    return log


@pytest.mark.subprocess
def test_parallel_launches_exit_cleanly(launches):
    for name, run in launches.items():
        assert run["rc"] == 0, f"launch {name!r} failed (rc={run['rc']}):\n{run['output'][-8000:]}"


def _same_training(one_dir, two_dir, run, steps=4, weight_rel=1e-5):
    one = _log({"dir": one_dir, "rc": None, "output": ""}, run)
    two = _log({"dir": two_dir, "rc": None, "output": ""}, run)
    assert len(one["losses"]) == len(two["losses"]) == steps, (one["losses"], two["losses"])
    # the loss of every step (the mean over both halves == over the whole batch), fp32
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=0)
    w1 = load_file(str(one_dir / run / "weights.safetensors"))
    w2 = load_file(str(two_dir / run / "weights.safetensors"))
    assert set(w1) == set(w2)
    for k in w1:  # equal within float rounding, relative to each tensor's scale
        diff, scale = float((w2[k] - w1[k]).abs().max()), float(w1[k].abs().max())
        assert diff <= weight_rel * scale, f"{k}: max |diff| {diff:.3g} > {weight_rel} x scale {scale:.3g}"
    return one, two, w1, w2


@pytest.mark.subprocess
def test_fsdp_two_processes_match_one(launches, train_name):
    run = train_name
    one, two, _, _ = _same_training(launches["one"]["dir"], launches["two"]["dir"], run)
    assert (one["sharded"], two["sharded"]) == (False, True)
    # the run trains (so later losses depend on how the earlier updates were combined)
    assert one["losses"][-1] < one["losses"][0] - 0.3, one["losses"]

    # the folder written by the 2 sharded processes (gathered, saved by rank 0) loads into one process with the
    # logits the sharded model computed
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(launches["two"]["dir"] / run / "final").eval()
    probe = load_file(str(launches["two"]["dir"] / run / "probe.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.subprocess
def test_memory_bank_two_processes_match_one(launches):
    run = "memory-ddp"
    one, two, w1, w2 = _same_training(launches["one"]["dir"], launches["two"]["dir"], run)
    assert two["ddp"] and not two["sharded"]
    # which blocks were fetched: level-1 clusters 0, 1; level-2 clusters 0..5 (5 by the second process's rows only)
    paths = memory_paths(16, 4)
    assert set(paths[:, 0].tolist()) == {0, 1} and set(paths[:, 1].tolist()) == set(range(6))
    init = load_file(str(launches["one"]["dir"] / run / "initial.safetensors"))
    for name, w in w2.items():
        if not name.startswith("memory_bank."):
            assert torch.equal(w, init[name]), f"{name}: the frozen anchor changed"
            continue
        level, cluster = int(name.split(".level")[1].split(".")[0]), int(name.rsplit(".", 1)[1])
        fetched = cluster in ((0, 1) if level == 1 else range(6))
        # an unfetched block: no update and no weight decay (bit for bit); a fetched one moved in both runs
        assert torch.equal(w, init[name]) != fetched, (name, fetched)


def test_shard_model_refuses_a_memory_bank():
    from hf_seqmodels import GLAConfig

    anchor = GLAConfig(vocab_size=256, hidden_size=32, num_heads=2, num_hidden_layers=2)
    with pytest.raises(ValueError, match="shard_model: this model has a memory bank.*find_unused_parameters"):
        shard_model(memory_model(anchor))


def test_block_classes_name_every_architectures_blocks(tiny_config):
    """What shard_model wraps: the classes named by _no_split_modules cover every residual block of the model."""
    model = build_lm(tiny_config)
    classes = block_classes(model)
    blocks = blocks_of(model)
    assert blocks and all(isinstance(b, classes) for b in blocks), (classes, {type(b).__name__ for b in blocks})


def _cp_result(launches):
    path = launches["cp"]["dir"] / "result.json"
    if not path.is_file():
        pytest.fail(
            f"the context-parallel launch wrote no result (rc={launches['cp']['rc']}):\n"
            f"{launches['cp']['output'][-8000:]}"
        )
    return json.loads(path.read_text())


@pytest.mark.subprocess
def test_context_parallel_equals_one_process(launches):
    result = _cp_result(launches)
    errors = {k: v for k, v in result.items() if k.endswith(" error")}
    assert not errors, "\n".join(f"{k}:\n{v}" for k, v in errors.items())
    cases = {k: v for k, v in result.items() if k.startswith(("op ", "model "))}
    # chunk_gla per-key and per-head gates, T 37 and 131; linear_scan and block2_scan, forward and reversed; the GLA
    # model (unpadded, left-padded), two Mamba-2 layers, Liger, Lizard, S4D, Aaren, ParaGRU and ParaLSTM (left-padded),
    # ParaGRU and ParaLSTM falling back to the step-by-step solve; each over 2 and 3 ranks
    assert len(cases) == 38, sorted(cases)
    for name, err in cases.items():
        assert err < 1e-10, f"{name}: max relative error {err:.3g} (fp64)"


@pytest.mark.subprocess
def test_context_parallel_refuses_by_name(launches):
    # ParaGRU with mode="sequential"; H-Net; linear_scan given an initial state on a slice
    assert _cp_result(launches)["refusals"] == {"paragru": "ok", "hnet": "ok", "linear_scan initial_state": "ok"}


def test_context_parallel_needs_a_process_group():
    import torch.distributed as dist

    from hf_seqmodels import context_parallel

    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(RuntimeError, match="context_parallel: torch.distributed is not initialized"):
        with context_parallel():
            pass


@pytest.mark.subprocess
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("arch", ["gla-conv-tied", "paragru"])
def test_context_parallel_trainer_equals_one_process(launches, arch, world):
    """One epoch (3 optimizer steps: the batches were not sharded over the ranks) with every sequence split over
    ``world`` processes (1: ContextParallelTrainer alone): the same per-step losses (logged in fp32) and final weights
    (fp64) as Trainer on the whole sequences."""
    one_dir = launches["one"]["dir"] / "cp-trainer"
    dirs = {1: one_dir / "alone", 2: launches["two"]["dir"] / "cp-trainer", 3: launches["cp"]["dir"] / "trainer"}
    split = dirs[world]
    one, many, _, _ = _same_training(one_dir, split, arch, steps=3, weight_rel=1e-10)
    assert (one["world"], many["world"]) == (1, world)
    assert len(set(one["losses"])) == 3, one["losses"]  # different batches, and the run moved


def test_context_parallel_trainer_refuses_by_name(tmp_path):
    from transformers import TrainingArguments

    from hf_seqmodels import GLAConfig
    from hf_seqmodels.parallel import ContextParallelTrainer

    model = build_lm(GLAConfig(vocab_size=64, hidden_size=16, num_heads=2, num_hidden_layers=1))

    def make(eval_dataset=None, **kw):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)
        return ContextParallelTrainer(model=model, args=args, train_dataset=[], eval_dataset=eval_dataset)

    with pytest.raises(ValueError, match="ContextParallelTrainer: gradient_accumulation_steps=2 is not supported"):
        make(gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="ContextParallelTrainer: eval_strategy='steps' is not supported"):
        make(eval_dataset=[], eval_strategy="steps", eval_steps=1)
    with pytest.raises(ValueError, match="ContextParallelTrainer: label_smoothing_factor and compute_loss_func"):
        make(label_smoothing_factor=0.1)
    with pytest.raises(NotImplementedError, match="ContextParallelTrainer: evaluation is not supported"):
        make().evaluate()


def test_slice_bounds_split_every_length_in_rank_order():
    from hf_seqmodels.parallel.trainer import slice_bounds

    for world in range(1, 6):
        for length in range(world, 40):
            parts = [slice_bounds(length, world, r) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == length, parts
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])), parts  # contiguous, in rank order
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1, sizes
    with pytest.raises(ValueError, match="a sequence of 2 positions cannot be split over 3 ranks"):
        slice_bounds(2, 3, 0)
