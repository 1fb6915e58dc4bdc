"""The Trainer and LoRA examples run as a user would run them (a few steps each), in a fresh process.
(examples/custom_pararnn_cell.py runs in tests/models/test_pararnn.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args):
    # one thread: tiny models, and OpenMP workers spinning on a busy machine slow them down by orders of magnitude
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.subprocess
def test_trainer_example(tmp_path):
    out = run_example(
        "train_gla_trainer.py",
        "--steps",
        "3",
        "--block-size",
        "32",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "run"),
    )
    assert "held-out loss" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.subprocess
def test_lora_example(tmp_path):
    out = run_example("lora_gla.py", "--steps", "3", "--out", str(tmp_path / "lora"))
    diff = float(out.rsplit("max |diff| = ", 1)[1].split()[0])
    assert diff < 1e-3  # merged and unmerged adapters give the same outputs
    assert any((tmp_path / "lora").glob("adapter_model.safetensors"))
