"""SIGKILL at seeded random points of the evaluation stage and of the main job, resume each time, and compare the final
artifacts with an uninterrupted run byte for byte.

The job runs in a child process (`_kill_worker.py`, each run a new process forked from a server that has only imported
what the job imports, so that 26 runs do not import torch and transformers 26 times) that counts events: a file written to its temporary path and not yet
renamed into place (the save window), a batch about to go into a sample store (a kill there first writes half a record:
a torn write), a generate call, an adapter being saved. Each run of the chain dies at an event drawn from a seeded
generator, then the next one resumes in the same folder; the last one runs to the end. Every drawn event exists in every
run: it is drawn below the number of events of a rerun that finds everything done.

Compared byte for byte: every file of the folder, with three kinds of exceptions, each a measurement or a record of the
run itself rather than a result: the fields `created` and `command` of manifests (when and how a run was started), the
stage log `_run/stages.json` and the "Stage times" section of `main_job.md` (seconds each stage took; whether it was
reused), and the timings and memory peaks a training run records in `calm_train_config.json`. Adapters are compared by
the hash of their weights (`adapter_model.safetensors`, byte for byte).
"""
import hashlib
import json
import random
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_kill_worker.py")
RUN_FIELDS = {"created", "command"}
TRAIN_MEASURES = {"train_wall_s", "s_per_step", "train_cpu_s", "cpu_s_per_step", "peak_memory_gb", "peak_memory_kind"}


class Worker:
    "`_kill_worker.py serve`: runs jobs, each in a new process forked after the imports; stopped by `close`."
    def __init__(self, log: Path):
        self.log = log
        self.p = subprocess.Popen([sys.executable, str(WORKER), "serve"], cwd=WORKER.parent, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)

    def run(self, kill_at: int, job: str, out: Path):
        "The run's completed process (stderr: its output) and the events it went through, the last one the event it was killed at."
        trace, log = out.with_name(out.name + ".trace"), out.with_name(out.name + ".log")
        trace.unlink(missing_ok=True)
        self.p.stdin.write(f"{kill_at}\t{trace}\t{job}\t{out}\t{log}\n"); self.p.stdin.flush()
        if not select.select([self.p.stdout], [], [], 3600)[0]: raise TimeoutError(f"run {kill_at} {job} still going after an hour")
        line = self.p.stdout.readline()
        assert line, f"the worker died: {self.log.read_text()[-4000:]}"
        events = [json.loads(l) for l in trace.read_text().splitlines()] if trace.exists() else []
        return subprocess.CompletedProcess([kill_at, job, out], int(line), "", log.read_text() if log.exists() else ""), events

    def close(self):
        self.p.stdin.close()
        assert self.p.wait(timeout=60) == 0, self.log.read_text()[-4000:]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("worker") / "worker.log")
    yield w
    w.close()


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def content(rel: str, path: Path):
    "What is compared of a file (see the module's docstring)."
    name = Path(rel).name
    if name == "stages.json" and rel.startswith("_run/"): return None
    if name == "main_job.md": return path.read_text(encoding="utf-8").split("## Stage times")[0]
    if name == "train_log.csv":                           # TRL logs timings (train/eval runtime, samples per second): measurements
        import pandas as pd
        try: log = pd.read_csv(path)
        except pd.errors.EmptyDataError: return []
        return log[[c for c in log.columns if "runtime" not in c and "per_second" not in c]].to_dict("records")
    if name.endswith(".json") and ("manifest" in name or name == "calm_train_config.json"):
        d = json.loads(path.read_text(encoding="utf-8"))
        d = {k: v for k, v in d.items() if k not in RUN_FIELDS}
        if "result" in d: d["result"] = {k: v for k, v in d["result"].items() if k not in TRAIN_MEASURES}
        return d
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_chain(worker: Worker, tmp_path: Path, job: str, kills: int, seed: int):
    "An uninterrupted run (the reference), then `kills` runs killed at seeded random events and a last one, in one folder."
    run, out = worker.run, tmp_path / "job"
    p, events = run(0, job, out)
    assert p.returncode == 0, p.stderr[-4000:]
    shutil.move(out, tmp_path / "reference")
    shutil.copytree(tmp_path / "reference", out)
    p, rerun = run(0, job, out)                           # a rerun that finds everything done: the fewest events a run has
    assert p.returncode == 0, p.stderr[-4000:]
    shutil.rmtree(out)
    rng, hits = random.Random(seed), []
    while len(hits) < kills:
        p, ev = run(rng.randint(1, len(rerun)), job, out)
        assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-4000:])
        hits.append(ev[-1][1])
    p, _ = run(0, job, out)                               # the last run resumes and finishes
    assert p.returncode == 0, p.stderr[-4000:]
    return out, tmp_path / "reference", hits, len(events)


def assert_same_artifacts(out: Path, reference: Path):
    got, want = files(out), files(reference)
    leftovers = [r for r in got if Path(r).name.startswith(".")]
    assert leftovers == [], f"temporary files left by killed writes: {leftovers}"
    assert sorted(got) == sorted(want)
    different = [r for r in want if content(r, got[r]) != content(r, want[r])]
    assert different == [], f"differ from the uninterrupted run: {different}"
    return len(want)


@pytest.mark.slow
def test_evaluation_killed_at_10_random_points_ends_like_an_uninterrupted_run(worker, tmp_path):
    out, reference, hits, n_events = kill_chain(worker, tmp_path, "evaluate", kills=10, seed=14)
    assert {"save", "append"} <= set(hits), hits                      # inside a save window, and a torn write
    n = assert_same_artifacts(out, reference)
    assert {"results.csv", "metrics.csv", "samples/samples.jsonl"} <= set(files(out))
    print(f"\nevaluate: {len(hits)} SIGKILLs at {hits}; {n} files as in the uninterrupted run ({n_events} events)")


@pytest.mark.slow
def test_main_job_killed_at_10_random_points_ends_like_an_uninterrupted_run(worker, tmp_path):
    out, reference, hits, n_events = kill_chain(worker, tmp_path, "demo", kills=10, seed=14)
    assert "save" in hits, hits
    n = assert_same_artifacts(out, reference)
    assert {"main_job.md", "results.csv", "_run/smollm2-135m/demo/adapters/CALM/adapter_model.safetensors"} <= set(files(out))
    print(f"\ndemo: {len(hits)} SIGKILLs at {hits}; {n} files as in the uninterrupted run ({n_events} events)")
