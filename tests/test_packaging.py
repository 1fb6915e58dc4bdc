"""What a user installs: the wheel and the sdist carry the license the metadata names, every package (the commands,
the kernels as ``hf_seqmodels.kernels``, never a top-level ``kernels``) and the model cards."""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The wheel and sdist, built from a copy of the checkout (building leaves build folders behind)."""
    src = tmp_path_factory.mktemp("src") / "hf-seqmodels"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            ".transformers-tests",
            "build",
            "dist",
            "bdist_wheel",
            "*.egg-info",
            "__pycache__",
            "demo_out",
        ),
    )
    out = tmp_path_factory.mktemp("dist")
    build = [
        sys.executable,
        "-c",
        "import sys, setuptools.build_meta as b; out = sys.argv[1]; b.build_wheel(out); b.build_sdist(out)",
        str(out),
    ]
    subprocess.run(build, cwd=src, check=True, capture_output=True, text=True, timeout=300)
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


@pytest.mark.subprocess
def test_license_file_in_the_repository_wheel_and_sdist(dists):
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text
    wheel, sdist = dists
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        licenses = [n for n in names if n.endswith("LICENSE") and ".dist-info/" in n]
        assert licenses and whl.read(licenses[0]).decode() == text
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("/LICENSE") and n.count("/") == 1 for n in tar.getnames())


@pytest.mark.subprocess
def test_wheel_holds_every_package_and_no_top_level_kernels(dists):
    with zipfile.ZipFile(dists[0]) as whl:
        names = whl.namelist()
    for module in ("hf_seqmodels/commands/main.py", "hf_seqmodels/kernels/gla/ops.py", "hf_seqmodels/saving.py"):
        assert module in names, module
    assert any(n.startswith("hf_seqmodels/model_cards/") and n.endswith(".md") for n in names)
    assert not any(n.startswith("kernels/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(dists[0]) as whl:
        assert "hf-seqmodels = hf_seqmodels.commands.main:main" in whl.read(entry).decode()


def test_the_repository_root_does_not_shadow_the_kernel_hub_library():
    """transformers >= 5.25 requires the kernel-hub distribution ``kernels`` and imports it
    (``transformers.activations``): a ``kernels`` package at the repository root would be imported instead in every
    process started there (pytest, ``python -m benchmarks.NAME``), and ``import transformers.activations`` failed.
    Our kernels are ``hf_seqmodels/kernels``."""
    import importlib.util

    assert not (ROOT / "kernels").exists()
    spec = importlib.util.find_spec("kernels")
    assert spec is None or not str(spec.origin or "").startswith(str(ROOT) + "/kernels"), spec
