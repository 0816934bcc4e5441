import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# `make pytest` runs the suite in two pytest-xdist workers beside nbtest and the vLLM tests on a 2-core machine: one
# OpenMP thread per worker (and per process a test starts) instead of one per core each, unless set otherwise. Set here,
# before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _release():
    for p in (os.environ.get("CALM_RELEASE_DIR"), ROOT.parent / "shared" / "calm-release"):
        if p and Path(p).is_dir():
            return Path(p)
    return None


@pytest.fixture(scope="session")
def release():
    "The CALM release copy; tests that need it skip with a reason when it is absent."
    r = _release()
    if r is None:
        pytest.skip("needs ../shared/calm-release (or CALM_RELEASE_DIR): the paper's release data is not on this machine")
    return r


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        gpu = torch.cuda.is_available()
    except Exception:
        gpu = False
    for it in items:
        if "gpu" in it.keywords and not gpu:
            it.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none is present"))
