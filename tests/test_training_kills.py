"""Kill test for training (issue 14): SIGKILL `python -m calm.train` at seeded random points, including inside the save window,
run it again, and the adapter it ends with is byte for byte the one an uninterrupted run writes. After every kill the run folder is
either absent or a complete run (its record parses and its adapter files hash to what the record says), never a mix."""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
from tiny_model import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ("adapter_config.json", "adapter_model.safetensors")
ROWS = [{"qid": f"q{i}", "lang": lang, "prompt": f"question {i} in {lang} answer : ", "chosen": f"B because {i} is right",
         "rejected": f"A because {i} is wrong"} for i in range(3) for lang in ("en", "fr")]

pytestmark = pytest.mark.slow            # 21 runs of a process that imports TRL: minutes on a small machine


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _adapter(out):
    return {f: _sha(out / f) for f in ADAPTER}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("kills")
    m, t = tiny_llama([w for r in ROWS for v in r.values() for w in str(v).split()])
    m.save_pretrained(d / "tiny"); t.save_pretrained(d / "tiny")
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


def _run_file(d, name, **kw):
    settings = {"model_name_or_path": str(d / "tiny"), "data": str(d / "pairs.jsonl"), "out_dir": str(d / name), "max_steps": 3,
                "learning_rate": 1e-2, "warmup_ratio": 0.0, "seed": 0, "disable_tqdm": True, "eval_strategy": "no", "val_ratio": 0.0, **kw}
    p = d / f"{name}-{abs(hash(json.dumps(kw, sort_keys=True)))}.yaml"
    p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    return p


def _start(run_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "calm.train", "--config", str(run_file)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(run_file):
    p = _start(run_file)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _consistent(out):
    "A run folder after a kill: absent, or a whole run (the record parses, the adapter files are the recorded ones)."
    if not out.exists(): return "absent"
    info = json.loads((out / "calm_train_config.json").read_text())
    assert {f: _sha(out / f) for f in info["adapter"]["files"]} == info["adapter"]["files"]
    assert sorted(info["adapter"]["files"]) == sorted(ADAPTER)
    return info["config_sha256"]


def _kill(run_file, out, how, rng):
    "Start a run and SIGKILL it: after a random time (`how` = seconds), or a random moment after it starts saving (`how` = 'save')."
    partial, adapter = out.parent / f".{out.name}.partial", out / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns if adapter.exists() else None
    saving = lambda: (partial / "adapter_model.safetensors").exists() or (adapter.exists() and adapter.stat().st_mtime_ns != before)
    p = _start(run_file)
    if how == "save":
        while p.poll() is None and not saving(): time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.4))
    else:
        try: p.wait(timeout=how)
        except subprocess.TimeoutExpired: pass
    in_save = partial.exists()
    if p.poll() is None: p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    return in_save


def test_killed_training_resumes_to_the_same_adapter(setup):
    rng = random.Random(14)
    t0 = time.monotonic()
    reference = _finish(_run_file(setup, "reference"))
    whole = time.monotonic() - t0                                # kill times are drawn within one run's length
    assert reference["global_step"] == 3 and not reference["skipped"]
    want = _adapter(setup / "reference")
    run, out = _run_file(setup, "killed"), setup / "killed"
    points = [rng.uniform(0.5, whole) for _ in range(6)] + ["save"] * 6
    rng.shuffle(points)
    in_save = 0
    for how in points:
        in_save += _kill(run, out, how, rng)
        if _consistent(out) != "absent":                         # killed after the rename: the whole run, the right adapter
            assert _adapter(out) == want
            shutil.rmtree(out)                                   # so that the next kill lands in a run that trains
    assert in_save >= 1, "no kill landed inside the save window"
    _finish(run)
    assert _adapter(out) == want
    again = _finish(run)
    assert again["skipped"] and _adapter(out) == want


def test_a_killed_other_run_into_the_same_folder_does_not_pass_for_a_finished_one(setup):
    "Issue 14's case: run X finished; run Y (another learning rate) into the same folder killed while saving; X again gives X's adapter."
    rng = random.Random(11)
    x, y = _run_file(setup, "shared"), _run_file(setup, "shared", learning_rate=5e-2)
    out = setup / "shared"
    _finish(x)
    want, x_hash = _adapter(out), _consistent(out)
    for _ in range(2):
        _kill(y, out, "save", rng)
        _consistent(out)
    _finish(x)
    assert _adapter(out) == want and _consistent(out) == x_hash
    _finish(y)                                                   # Y's whole run in the folder: X trains again
    assert _consistent(out) != x_hash
    assert not _finish(x)["skipped"] and _adapter(out) == want
