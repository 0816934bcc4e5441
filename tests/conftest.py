import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# `make pytest` runs the suite in two pytest-xdist workers beside nbtest and the vLLM tests on a 2-core machine: one
# OpenMP thread per worker (and per process a test starts) instead of one per core each, unless set otherwise. Set here,
# before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import yaml  # noqa: E402  (after the thread setting above)

from calm.data import demo_items  # noqa: E402
from calm.profile import CONFIGS_DIR  # noqa: E402


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


def first_demo_questions(n: int) -> list:
    "The demo test items of the first `n` questions (by qid), in every language."
    qids = sorted({it.qid for it in demo_items("test")})[:n]
    return [it for it in demo_items("test") if it.qid in qids]


def sample_key(r):
    "What identifies one sample record: question, language, sample number."
    return (r["qid"], r["lang"], r["sample"])


def save_tiny_llama(d: Path, texts) -> Path:
    "The tiny random Llama (tests/tiny_model.py) whose vocabulary covers `texts`, saved with its tokenizer in folder `d`."
    from tiny_model import tiny_llama
    model, tok = tiny_llama(texts)
    model.save_pretrained(d); tok.save_pretrained(d)
    return d


def profile_copy(tmp_path, name="p", profile="demo", **changes):
    "A copy of calm/profiles/{profile}.yaml with `changes` applied (dotted keys; None deletes); returns its path."
    raw = yaml.safe_load((CONFIGS_DIR / f"{profile}.yaml").read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        d = raw
        for k in parents: d = d[k]
        if value is None: d.pop(last, None)
        else: d[last] = value
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(raw, sort_keys=False))
    return f


@pytest.fixture(scope="module")
def items():
    "The demo test items of three questions, in every language."
    return first_demo_questions(3)


@pytest.fixture(scope="module")
def model_dir():
    "The embedded SmolLM2-135M converted to a transformers folder (converted once, then cached)."
    from calm.models import cached_model_dir
    return str(cached_model_dir())


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        gpu = torch.cuda.is_available()
    except Exception:
        gpu = False
    for it in items:
        if "gpu" in it.keywords and not gpu:
            it.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none is present"))
