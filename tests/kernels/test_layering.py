"""``hf_seqmodels.kernels`` is the bottom layer (DESIGN.md): it imports torch and triton, never transformers, and
nothing of hf_seqmodels above it. Checked by importing every kernels module in a fresh interpreter whose
``hf_seqmodels`` package is an empty stand-in (the real ``hf_seqmodels/__init__.py`` imports transformers itself)."""

import json
import subprocess
import sys

import pytest

CHECK = r"""
import importlib, importlib.util, json, pkgutil, sys, types

spec = importlib.util.find_spec("hf_seqmodels")
parent = types.ModuleType("hf_seqmodels")
parent.__path__ = list(spec.submodule_search_locations)
sys.modules["hf_seqmodels"] = parent  # not executed: only hf_seqmodels.kernels and what it imports get loaded
import hf_seqmodels.kernels as kernels

names, missing = ["hf_seqmodels.kernels"], []
for info in pkgutil.walk_packages(kernels.__path__, "hf_seqmodels.kernels."):
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as e:  # the Triton modules on a machine without triton
        if e.name != "triton":
            raise
        missing.append(info.name)
        continue
    names.append(info.name)
loaded = sorted(sys.modules)
print(json.dumps({"imported": names, "missing_triton": missing,
                  "transformers": [m for m in loaded if m.split(".")[0] == "transformers"],
                  "above": [m for m in loaded
                            if m.startswith("hf_seqmodels.") and not m.startswith("hf_seqmodels.kernels")]}))
"""


@pytest.mark.subprocess
def test_kernels_import_neither_transformers_nor_the_layers_above():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # the walk really imported the package's modules, the Triton ones too where triton is installed
    assert {
        "hf_seqmodels.kernels.gla.ops",
        "hf_seqmodels.kernels.scan.ops",
        "hf_seqmodels.kernels.memory.ops",
        "hf_seqmodels.kernels.pararnn.newton",
        "hf_seqmodels.kernels.attention.ops",
    } <= set(got["imported"])
    assert "hf_seqmodels.kernels.triton_utils" in got["imported"] + got["missing_triton"]
    assert got["transformers"] == [], got["transformers"]
    assert got["above"] == [], got["above"]
