import os
import random
import secrets

import pytest
import torch

# The Triton kernels run in the interpreter where there is no GPU; this must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs each run; the seed is printed so a failure can be replayed (HF_SEQMODELS_SEED=...)."""
    # from the OS, not from `random`: a test that seeds the global generators (Trainer's set_seed) must not fix the
    # seeds of every later test
    seed = int(os.environ.get("HF_SEQMODELS_SEED", secrets.randbits(31)))
    torch.manual_seed(seed)
    random.seed(seed)
    print(f"seed={seed}")
    yield seed


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the machine is busy (spinning OpenMP
    workers); restored afterwards so tests elsewhere keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
