import os
import random
import secrets

import pytest
import torch

# Triton's interpreter mode is process-wide, fixed when a kernel is defined (import time): where there is no GPU the
# Triton kernels run in the interpreter (set here, before triton is imported) and the `interpreter` tests run them on
# CPU tensors. On a CUDA host they compile for the GPU: the `cuda` tests run and the `interpreter` tests are skipped
# (run them there with `TRITON_INTERPRET=1 pytest -m "not cuda"`, which skips the `cuda` tests instead).
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Interpreter tests (Triton kernels on CPU tensors): marked `interpreter`, or taking one of these fixtures, or named
# `test_..._interpreter...` (but not `..._without_interpreter...`).
INTERPRETER_FIXTURES = ("interpreter", "small_tiles")


def _is_interpreter_test(item) -> bool:
    name = getattr(item, "originalname", item.name)
    return bool(
        item.get_closest_marker("interpreter")
        or any(f in getattr(item, "fixturenames", ()) for f in INTERPRETER_FIXTURES)
        or ("interpreter" in name and "without_interpreter" not in name)
    )


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _seed_all() -> int:
    """Seeds torch and `random` from the OS (or HF_SEQMODELS_SEED=... to replay a failure) and prints the seed."""
    # from the OS, not from `random`: a test that seeds the global generators (Trainer's set_seed) must not fix the
    # seeds of every later test
    seed = int(os.environ.get("HF_SEQMODELS_SEED", secrets.randbits(31)))
    torch.manual_seed(seed)
    random.seed(seed)
    print(f"seed={seed}")
    return seed


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs each run; the seed is printed so a failure can be replayed (HF_SEQMODELS_SEED=...)."""
    yield _seed_all()


@pytest.fixture(scope="session")
def draw_seed():
    """For a session- or module-scoped fixture that draws random data (set up before the test's own ``fresh_seed``):
    ``seed = draw_seed()`` seeds the generators as ``fresh_seed`` does; name the seed in the failure messages."""
    return _seed_all


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the machine is busy (spinning OpenMP
    workers); restored afterwards so tests elsewhere keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "interpreter: runs Triton kernels on CPU tensors in the Triton interpreter (skipped on a CUDA host "
        "unless TRITON_INTERPRET=1)",
    )


def pytest_collection_modifyitems(config, items):
    skip_cuda = None
    if not CUDA:
        skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    elif INTERPRETING:
        skip_cuda = pytest.mark.skip(
            reason="TRITON_INTERPRET=1 runs every Triton kernel of this process in the "
            "interpreter; run the GPU tests in a pytest run without it"
        )
    skip_interp = (
        None
        if INTERPRETING
        else pytest.mark.skip(
            reason="Triton kernels compile for the GPU in this process (interpreter mode is process-wide); run the "
            "interpreter tests with TRITON_INTERPRET=1 pytest -m 'not cuda'"
        )
    )
    for item in items:
        if "cuda" in item.keywords:
            if skip_cuda is not None:
                item.add_marker(skip_cuda)
        elif _is_interpreter_test(item):
            item.add_marker(pytest.mark.interpreter)
            if skip_interp is not None:
                item.add_marker(skip_interp)
