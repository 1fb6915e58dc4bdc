"""Transformers' own generic model tests (``ModelTesterMixin``, ``ConfigTester``, ``TrainingTesterMixin``), loaded from
the ``tests/`` tree of the transformers sdist that ``make transformers-tests`` extracts into
``.transformers-tests/<version>/`` (ignored by git; nothing of it is copied into this repository).

The sdist ships ``tests/test_modeling_common.py``, ``tests/test_configuration_common.py`` and
``tests/test_training_mixin.py`` but not the folders they import from (``tests/generation``, ``tests/exporters``,
``tests/utils``): those three names are given small stand-ins here, used only where the extracted tree lacks the
real file. ``GENERATION_MIXIN_IS_STUB`` says whether
``GenerationTesterMixin`` is such a stand-in (it then holds no tests; generate() is covered by
``tests/integration/test_generation.py``).

The extracted tree is imported as the package ``transformers_tests`` (upstream imports it as ``tests``, a name this
repository's own test folder and many installed distributions also use). Without it, the importing test module is
skipped with the reason.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import transformers

PACKAGE = "transformers_tests"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: where ``make transformers-tests`` extracts the sdist's tests/ tree, one folder per transformers version
EXTRACT_ROOT = REPO_ROOT / ".transformers-tests"
ENV_VAR = "HF_SEQMODELS_TRANSFORMERS_TESTS"  # or: the path of an extracted tests/ folder


def tests_root() -> Path:
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return EXTRACT_ROOT / transformers.__version__ / "tests"


class ExportTesterMixin:
    """Stand-in for ``tests/exporters/test_export.py`` (not in the sdist): no torch.export tests."""


class GenerationTesterMixin:
    """Stand-in for ``tests/generation/test_utils.py`` (not in the sdist): no generate() tests."""

    _hf_seqmodels_stub = True


# The shared config kwargs ConfigTester.check_config_arguments_init sets and reads back (upstream keeps this dict in
# tests/utils/test_configuration_utils.py, not in the sdist): PreTrainedConfig's own fields, non-default values.
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["SomeModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}

_STAND_INS = {
    "exporters.test_export": {"ExportTesterMixin": ExportTesterMixin},
    "generation.test_utils": {"GenerationTesterMixin": GenerationTesterMixin},
    "utils.test_configuration_utils": {"config_common_kwargs": config_common_kwargs},
}


def _register_package(root: Path) -> None:
    if PACKAGE in sys.modules:
        return
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(root)]
    package.__file__ = str(root / "__init__.py")
    package.__package__ = PACKAGE
    sys.modules[PACKAGE] = package
    for dotted, names in _STAND_INS.items():
        sub, leaf = dotted.split(".")
        if (root / sub / f"{leaf}.py").is_file():
            continue  # the real one is there: use it
        if f"{PACKAGE}.{sub}" not in sys.modules:
            if (root / sub / "__init__.py").is_file():
                importlib.import_module(f"{PACKAGE}.{sub}")
            else:
                stub_package = types.ModuleType(f"{PACKAGE}.{sub}")
                stub_package.__path__ = []
                sys.modules[f"{PACKAGE}.{sub}"] = stub_package
        module = types.ModuleType(f"{PACKAGE}.{dotted}")
        module.__dict__.update(names)
        sys.modules[f"{PACKAGE}.{dotted}"] = module


def load():
    """Import the upstream test modules, or skip the calling test module with the reason."""
    root = tests_root()
    if not (root / "test_modeling_common.py").is_file() or not (root / "__init__.py").is_file():
        pytest.skip(
            f"transformers {transformers.__version__}'s own model tests are not extracted at {root}: run "
            f"`make transformers-tests` (it fetches the transformers sdist from PyPI and extracts its tests/ tree), "
            f"or set {ENV_VAR} to an extracted tests/ folder",
            allow_module_level=True,
        )
    try:
        import parameterized  # noqa: F401  (test_modeling_common imports it; a dev dependency)
    except ImportError:
        pytest.skip("transformers' model tests need `parameterized` (pip install -e '.[dev]')", allow_module_level=True)
    _register_package(root)
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    training = importlib.import_module(f"{PACKAGE}.test_training_mixin")
    return modeling, configuration, training


modeling_common, configuration_common, training_mixin = load()
TrainingTesterMixin = training_mixin.TrainingTesterMixin
ModelTesterMixin = modeling_common.ModelTesterMixin
ids_tensor = modeling_common.ids_tensor
ConfigTester = configuration_common.ConfigTester
GenerationTesterMixin = sys.modules[f"{PACKAGE}.generation.test_utils"].GenerationTesterMixin
GENERATION_MIXIN_IS_STUB = getattr(GenerationTesterMixin, "_hf_seqmodels_stub", False)
