"""Kill test for training: SIGKILL `python -m calm.train` at seeded random points, including inside the save window,
run it again, and the adapter it ends with is byte for byte the one an uninterrupted run writes. After every kill the run folder is
either absent or a complete run (its record parses and its adapter files hash to what the record says), never a mix.

Each run is a new process running `python -m calm.train`, forked by `_fork_server.py` after torch, transformers and TRL are
imported (21 runs would otherwise import them 21 times); the random kill times fall within one run of that process."""
import hashlib
import json
import os
import random
import select
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

pytestmark = pytest.mark.slow            # 21 runs of `python -m calm.train`: minutes on a small machine


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _adapter(out):
    return {f: _sha(out / f) for f in ADAPTER}


DCO_ROWS = [{"qid": f"q{i}", "lang_1": "en", "lang_2": "fr", "prompt_1": f"question {i} in en answer : ", "chosen_1": "B",
             "rejected_1": "A", "prompt_2": f"question {i} in fr answer : ", "chosen_2": "B", "rejected_2": "A"} for i in range(3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("kills")
    m, t = tiny_llama([w for r in ROWS + DCO_ROWS for v in r.values() for w in str(v).split()])
    m.save_pretrained(d / "tiny"); t.save_pretrained(d / "tiny")
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "dco.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DCO_ROWS))
    return d


def _run_file(d, name, **kw):
    settings = {"model_name_or_path": str(d / "tiny"), "data": str(d / "pairs.jsonl"), "out_dir": str(d / name), "max_steps": 3,
                "learning_rate": 1e-2, "warmup_ratio": 0.0, "seed": 0, "disable_tqdm": True, "eval_strategy": "no", "val_ratio": 0.0, **kw}
    p = d / f"{name}-{abs(hash(json.dumps(kw, sort_keys=True)))}.yaml"
    p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    return p


SERVER = Path(__file__).with_name("_fork_server.py")
PRELOAD = ["torch", "transformers", "peft", "trl", "datasets", "pandas", "yaml", "calm.training", "calm.curriculum", "calm.dco",
           "transformers.models.llama.modeling_llama"]


class Forked:
    "A run of `python -m calm.train` forked by the server, with what tests use of `subprocess.Popen`."
    def __init__(self, server, run_file, n):
        self.server, self.rc = server, None
        self.out, self.err = (server.dir / f"run{n}.{x}" for x in ("out", "err"))
        req = {"module": "calm.train", "args": ["--config", str(run_file)], "stdout": str(self.out), "stderr": str(self.err)}
        server.p.stdin.write(json.dumps(req) + "\n"); server.p.stdin.flush()
        self.pid = server.answer(60)["pid"]

    def poll(self):
        if self.rc is None and select.select([self.server.p.stdout], [], [], 0)[0]: self.rc = self.server.answer(0)["rc"]
        return self.rc

    def wait(self, timeout):
        if self.rc is None: self.rc = self.server.answer(timeout)["rc"]
        return self.rc

    def send_signal(self, sig):
        if self.poll() is None: os.kill(self.pid, sig)

    @property
    def returncode(self): return self.rc

    def communicate(self, timeout):
        self.wait(timeout)
        return self.out.read_text(), self.err.read_text()


class Server:
    def __init__(self, d):
        self.dir, self.n = d, 0
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
        self.p = subprocess.Popen([sys.executable, str(SERVER), *PRELOAD], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=open(d / "server.err", "w"), text=True)

    def answer(self, timeout):
        if not select.select([self.p.stdout], [], [], timeout)[0]: raise subprocess.TimeoutExpired("calm.train", timeout)
        line = self.p.stdout.readline()
        assert line, f"the fork server died: {(self.dir / 'server.err').read_text()[-3000:]}"
        return json.loads(line)

    def start(self, run_file):
        self.n += 1
        return Forked(self, run_file, self.n)

    def close(self):
        self.p.stdin.close()
        assert self.p.wait(timeout=60) == 0, (self.dir / "server.err").read_text()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"))
    yield s
    s.close()


def _finish(server, run_file):
    p = server.start(run_file)
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


def _kill(server, run_file, out, how, rng):
    "Start a run and SIGKILL it: after a random time (`how` = seconds), or a random moment after it starts saving (`how` = 'save')."
    partial, adapter = out.parent / f".{out.name}.partial", out / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns if adapter.exists() else None
    saving = lambda: (partial / "adapter_model.safetensors").exists() or (adapter.exists() and adapter.stat().st_mtime_ns != before)
    p = server.start(run_file)
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


@pytest.mark.parametrize("method,kills", [("dpo", 6), ("dco", 2)])
def test_killed_training_resumes_to_the_same_adapter(setup, server, method, kills):
    rng = random.Random(14)
    kw = {} if method == "dpo" else {"method": "dco", "data": str(setup / "dco.jsonl")}
    t0 = time.monotonic()
    reference = _finish(server, _run_file(setup, f"reference-{method}", **kw))
    whole = time.monotonic() - t0                                # kill times are drawn within one run's length
    assert reference["global_step"] == 3 and not reference["skipped"]
    want = _adapter(setup / f"reference-{method}")
    run, out = _run_file(setup, f"killed-{method}", **kw), setup / f"killed-{method}"
    points = [rng.uniform(0.5, whole) for _ in range(kills)] + ["save"] * kills
    rng.shuffle(points)
    in_save = 0
    for how in points:
        in_save += _kill(server, run, out, how, rng)
        if _consistent(out) != "absent":                         # killed after the rename: the whole run, the right adapter
            assert _adapter(out) == want
            shutil.rmtree(out)                                   # so that the next kill lands in a run that trains
    assert in_save >= 1, "no kill landed inside the save window"
    _finish(server, run)
    assert _adapter(out) == want
    again = _finish(server, run)
    assert again["skipped"] and _adapter(out) == want


def test_a_killed_other_run_into_the_same_folder_does_not_pass_for_a_finished_one(setup, server):
    "Run X finished; run Y (another learning rate) into the same folder killed while saving; X again gives X's adapter."
    rng = random.Random(11)
    x, y = _run_file(setup, "shared"), _run_file(setup, "shared", learning_rate=5e-2)
    out = setup / "shared"
    _finish(server, x)
    want, x_hash = _adapter(out), _consistent(out)
    for _ in range(2):
        _kill(server, y, out, "save", rng)
        _consistent(out)
    _finish(server, x)
    assert _adapter(out) == want and _consistent(out) == x_hash
    _finish(server, y)                                                   # Y's whole run in the folder: X trains again
    assert _consistent(out) != x_hash
    assert not _finish(server, x)["skipped"] and _adapter(out) == want
