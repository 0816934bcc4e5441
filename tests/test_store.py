"""The resumable sample store: unit tests, and a run killed with SIGKILL again and again that must end exactly like an uninterrupted one."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from calm.data import DataError
from calm.store import SAMPLE_COLUMNS, SampleStore, config_hash, make_manifest, read_manifest, read_samples

from _store_worker import BATCH, ITEMS, LANGS, M, FakeBackend, run

WORKER = Path(__file__).with_name("_store_worker.py")
KEY = ["qid", "lang", "sample"]
N_KEYS = len(ITEMS) * M


def manifest(**kw):
    return make_manifest("fake-model", ITEMS, LANGS, M, seed=7, batch_size=BATCH, **kw)


def rec(q="demo-041", l="en", s=0, text="Answer: A"):
    return {"qid": q, "lang": l, "sample": s, "text": text, "prompt_tokens": 3, "completion_tokens": 2, "finish_reason": "stop"}


def by_key(df):
    return df.sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "An uninterrupted run, in-process."
    return by_key(run(tmp_path_factory.mktemp("ref") / "run", FakeBackend()))


# ---------------------------------------------------------------- unit tests

def test_uninterrupted_run_has_every_key_once(reference):
    assert len(reference) == N_KEYS == 20 * 3 * 3
    assert not reference.duplicated(KEY).any()
    assert list(reference.columns) == SAMPLE_COLUMNS
    assert set(reference.lang) == set(LANGS) and set(reference["sample"]) == {0, 1, 2}


def test_partial_last_line_is_dropped_and_truncated(tmp_path):
    with SampleStore(tmp_path / "r", manifest()) as st:
        st.append([rec(s=0), rec(s=1)])
    p = tmp_path / "r" / "samples.jsonl"
    whole = p.read_bytes()
    torn = json.dumps(rec(s=2)).encode()[:-9]            # a record cut inside a write
    p.write_bytes(whole + torn)
    with pytest.warns(UserWarning, match="dropped a partial last line"):
        assert len(read_samples(tmp_path / "r")) == 2     # reading skips it and leaves the file alone
    assert p.read_bytes() == whole + torn
    with pytest.warns(UserWarning, match=f"partial last line \\({len(torn)} bytes\\)"):
        st = SampleStore(tmp_path / "r", manifest())
    with st:
        assert st.done == {("demo-041", "en", 0), ("demo-041", "en", 1)}
        assert p.read_bytes() == whole                     # truncated to the last complete line
        st.append([rec(s=2)])
    assert by_key(read_samples(tmp_path / "r"))["sample"].tolist() == [0, 1, 2]


def test_damage_inside_the_file_is_never_used_and_is_recomputed(tmp_path):
    with SampleStore(tmp_path / "r", manifest()) as st: st.append([rec(s=0), rec(s=1)])
    p = tmp_path / "r" / "samples.jsonl"
    lines = p.read_bytes().split(b"\n")
    p.write_bytes(lines[0] + b"\n" + lines[1][:10] + b"\n")
    with pytest.raises(DataError, match=r"samples.jsonl:1: unreadable line"):
        read_samples(tmp_path / "r")                                    # reading never uses it
    with pytest.warns(UserWarning, match=r"dropped 1 damaged record\(s\) \(rows 1\)"):
        st = SampleStore(tmp_path / "r", manifest())                    # sampling into it drops it, counted
    with st:
        assert st.damaged_records == 1 and st.done == {("demo-041", "en", 0)}
        assert p.read_bytes() == lines[0] + b"\n"


def test_a_changed_byte_fails_the_record_checksum(tmp_path):
    "Was: about 1 record in 10 with a changed byte still parsed, and its text changed silently."
    with SampleStore(tmp_path / "r", manifest()) as st: st.append([rec(s=0, text="Answer: A"), rec(s=1, text="Answer: B")])
    p = tmp_path / "r" / "samples.jsonl"
    good = p.read_bytes()
    assert all(json.loads(l)["checksum"] for l in good.splitlines())
    p.write_bytes(good.replace(b"Answer: B", b"Answer: C"))             # still valid JSON, with the right keys
    with pytest.raises(DataError, match=r"samples.jsonl:1: record does not match its checksum"):
        read_samples(tmp_path / "r")
    with pytest.warns(UserWarning, match="not matching their checksum; they are sampled again"):
        with SampleStore(tmp_path / "r", manifest()) as st:
            assert st.damaged_records == 1 and st.done == {("demo-041", "en", 0)}
            st.append([rec(s=1, text="Answer: B")])
    assert p.read_bytes() == good                                       # recomputed: as written the first time
    assert "checksum" not in read_samples(tmp_path / "r").columns


def test_every_single_byte_change_is_caught_or_harmless(tmp_path):
    "Every byte of a record, changed: the record is rejected, or what is read is what was written."
    with SampleStore(tmp_path / "r", manifest()) as st: st.append([rec(s=0, text="Explanation: fridge.\nAnswer: B")])
    p = tmp_path / "r" / "samples.jsonl"
    good = p.read_bytes()
    want = read_samples(tmp_path / "r")
    rejected = 0
    for i in range(len(good) - 1):                                      # the newline aside: that is a torn line
        for new in (b"x", b"7", b" "):
            if good[i:i + 1] == new: continue
            p.write_bytes(good[:i] + new + good[i + 1:])
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = read_samples(tmp_path / "r")
            except DataError: rejected += 1; continue
            pd.testing.assert_frame_equal(got, want)                    # e.g. a space added between JSON tokens
    assert rejected > 2 * len(good)


def test_stores_written_without_checksums_stay_readable(tmp_path):
    run_dir = tmp_path / "old"
    SampleStore(run_dir, manifest()).close()
    m = read_manifest(run_dir); del m["record_checksums"]                  # as calm wrote stores before checksums
    (run_dir / "manifest.json").write_text(json.dumps(m))
    (run_dir / "samples.jsonl").write_text(json.dumps(rec(s=0)) + "\n")
    assert read_samples(run_dir).text.tolist() == ["Answer: A"]
    with SampleStore(run_dir, manifest()) as st:
        assert st.done == {("demo-041", "en", 0)} and st.damaged_records == 0
        st.append([rec(s=1)])
    assert read_samples(run_dir)["sample"].tolist() == [0, 1]


def test_the_same_run_check_is_made_under_the_lock(tmp_path, monkeypatch, reference):
    """Was: the check ran before the lock; a run (seed 8) stalled between them wrote into a store whose manifest,
    written meanwhile by another run, said seed 7. Here the seed-7 run runs whole inside that stall."""
    import fcntl
    real, stalled = fcntl.flock, []
    def flock(f, op):
        if op & fcntl.LOCK_EX and not stalled:                          # the first lock the seed-8 run takes
            stalled.append(f.name)
            run(tmp_path / "run", FakeBackend(), seed=7)               # the other run, from start to end
        return real(f, op)
    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.warns(UserWarning, match="sampling.seed: 7 -> 8"):
        late = run(tmp_path / "run", FakeBackend(), seed=8)
    assert stalled == [str(tmp_path / "run" / ".lock")]
    assert read_manifest(tmp_path / "run")["sampling"]["seed"] == 7
    assert by_key(read_samples(tmp_path / "run")).equals(reference)    # only seed-7 records in the seed-7 store
    alt = Path(late.attrs["run_dir"])
    assert alt != tmp_path / "run" and read_manifest(alt)["sampling"]["seed"] == 8 and len(late) == N_KEYS


def test_changed_manifest_starts_a_sibling_run(tmp_path, reference):
    run(tmp_path / "run", FakeBackend())
    with pytest.warns(UserWarning, match=r"sampling.temperature: 1.0 -> 0.5"):
        df = run(tmp_path / "run", FakeBackend(), temperature=0.5)
    alt = Path(df.attrs["run_dir"])
    assert alt != tmp_path / "run" and alt.name.startswith("run-") and alt.name.endswith(read_manifest(alt)["config_hash"])
    assert len(df) == N_KEYS and not by_key(df).text.equals(reference.text)     # a new run, new texts
    assert by_key(read_samples(tmp_path / "run")).equals(reference)              # the original is untouched
    # the changed command again resumes its own sibling; nothing is sampled twice
    b = FakeBackend()
    with pytest.warns(UserWarning, match="holds a different run"):
        again = run(tmp_path / "run", b, temperature=0.5)
    assert b.calls == [] and Path(again.attrs["run_dir"]) == alt
    # a different dataset, model or prompt is a different run too
    for kw in ({"model_id": "other"}, {"prompt_hash": "abc"}, {"weights_hash": "0" * 64}):
        with pytest.warns(UserWarning, match="holds a different run"):
            assert Path(run(tmp_path / "run", FakeBackend(), **kw).attrs["run_dir"]) != tmp_path / "run"


def test_changed_manifest_can_move_the_other_run_aside(tmp_path, reference):
    "What the pipeline's stages use: the next stage reads the folder, so it must hold the current configuration."
    run(tmp_path / "run", FakeBackend(), seed=8)
    with pytest.warns(UserWarning, match=r"held a different run:\n  sampling.seed: 8 -> 7\nit was moved, whole, to .*run-"):
        df = run(tmp_path / "run", FakeBackend(), seed=7, on_change="aside")
    assert df.attrs["run_dir"] == str(tmp_path / "run") and read_manifest(tmp_path / "run")["sampling"]["seed"] == 7
    assert by_key(read_samples(tmp_path / "run")).equals(reference)              # afresh, not mixed with seed 8
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run-")]
    assert len(aside) == 1 and read_manifest(aside[0])["sampling"]["seed"] == 8 and len(read_samples(aside[0])) == N_KEYS


def test_changed_manifest_can_raise_instead(tmp_path):
    run(tmp_path / "run", FakeBackend())
    changed = read_manifest(tmp_path / "run")
    changed["sampling"]["seed"] = 8
    with pytest.raises(DataError, match=r"run: holds a different run:\n  sampling.seed: 7 -> 8\n"):
        SampleStore(tmp_path / "run", changed, on_change="raise")
    with pytest.raises(DataError, match="sampling.seed: 7 -> 8"):
        run(tmp_path / "run", FakeBackend(), seed=8, on_change="raise")


def test_timestamps_and_versions_do_not_fork_a_run(tmp_path):
    a = manifest()
    b = {**manifest(), "created": "2001-01-01T00:00:00+00:00", "versions": {"torch": "0.0"}, "command": "other"}
    assert config_hash(a) == config_hash(b)
    SampleStore(tmp_path / "r", a).close()
    with SampleStore(tmp_path / "r", b) as st: assert st.run_dir == tmp_path / "r" and st.resumed


def test_duplicates_are_never_written(tmp_path):
    with SampleStore(tmp_path / "r", manifest()) as st:
        assert st.append([rec(s=0), rec(s=0), rec(s=1)]) == 2
        assert st.append([rec(s=1, text="different text, same key")]) == 0
        assert st.duplicates_skipped == 2
    with SampleStore(tmp_path / "r", manifest()) as st:     # and after a re-open
        assert st.append([rec(s=0)]) == 0
    lines = (tmp_path / "r" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["text"] == "Answer: A"
    # a file with duplicates (not written by the store) is refused on read
    from calm.files import with_checksum
    with open(tmp_path / "r" / "samples.jsonl", "a") as f: f.write(json.dumps(with_checksum(rec(s=0))) + "\n")
    with pytest.raises(DataError, match="duplicate keys"): read_samples(tmp_path / "r")


def test_bad_records_are_refused_before_anything_is_written(tmp_path):
    with SampleStore(tmp_path / "r", manifest()) as st:
        for bad, msg in [(rec(l="de"), "not one of this run's"), (rec(s=3), "outside 0..2"), ({"qid": "q", "lang": "en"}, "needs qid")]:
            with pytest.raises(DataError, match=msg): st.append([rec(s=0), bad])
        assert len(st) == 0 and not (tmp_path / "r" / "samples.jsonl").exists()


def test_one_writer_at_a_time_and_no_adopting_foreign_files(tmp_path):
    with SampleStore(tmp_path / "r", manifest()):
        with pytest.raises(DataError, match="another process"): SampleStore(tmp_path / "r", manifest())
    SampleStore(tmp_path / "r", manifest()).close()           # lock released
    (tmp_path / "x").mkdir(); (tmp_path / "x" / "samples.jsonl").write_text(json.dumps(rec()) + "\n")
    with pytest.raises(DataError, match="without manifest.json"): SampleStore(tmp_path / "x", manifest())


def test_resume_after_a_crash_skips_finished_batches(tmp_path, reference):
    crashing = FakeBackend(fail_after=5)
    with pytest.raises(RuntimeError, match="simulated crash"): run(tmp_path / "r", crashing)
    assert len(read_samples(tmp_path / "r")) == 5 * BATCH * M
    b = FakeBackend()
    df = run(tmp_path / "r", b)
    n_batches = -(-len(ITEMS) // BATCH)
    assert len(b.calls) == n_batches - 5                       # finished batches are not asked again
    assert by_key(df).equals(reference)


def test_manifest_records_what_the_run_is(tmp_path):
    df = run(tmp_path / "r", FakeBackend())
    m = read_manifest(df.attrs["run_dir"])
    assert m["model"] == {"id": "fake-model", "weights_sha256": "f" * 64, "backend": "fake"}
    assert m["sampling"] == {"m": 3, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 16, "seed": 7, "batch_size": 2}
    assert m["languages"] == LANGS and m["dataset"]["questions"] == 20 and len(m["dataset"]["fingerprint"]) == 16
    assert m["versions"]["pandas"] == pd.__version__ and m["config_hash"] == config_hash(m)


# ---------------------------------------------------------------- SIGKILL at random points

def _spawn(run_dir, delay):
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), str(delay)], cwd=WORKER.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _lines(p):
    try: return p.read_bytes().count(b"\n")
    except FileNotFoundError: return 0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(tmp_path, reference):
    rng = random.Random(1234)
    run_dir, store = tmp_path / "run", tmp_path / "run" / "samples.jsonl"
    kills, torn, attempts, progress = 0, 0, 0, []
    ref = reference.set_index(KEY)
    while True:
        attempts += 1
        assert attempts < 60, "the run never finished"
        p = _spawn(run_dir, 0.1)
        if kills < 12:
            start, t0 = _lines(store), time.time()
            if kills % 2 == 0:                                           # anywhere: start-up, manifest, sampling ...
                deadline = t0 + rng.uniform(0.0, 3.0)                    # ... but at most 3 batches on
                while time.time() < deadline and _lines(store) - start < 3 * BATCH * M and p.poll() is None: time.sleep(0.002)
            else:                                                        # just after a batch landed, mid-next-batch
                while _lines(store) == start and p.poll() is None and time.time() - t0 < 20: time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.1))
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL); p.wait(); kills += 1
                if store.exists() and rng.random() < 0.4:                # also tear the last write, as a crash of the machine could
                    data = store.read_bytes()
                    if data: store.write_bytes(data[:len(data) - rng.randint(1, min(len(data), 150))]); torn += 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    part = read_samples(run_dir) if (run_dir / "manifest.json").exists() else pd.DataFrame(columns=SAMPLE_COLUMNS)
                progress.append(len(part))
                # what is there is always right: no key twice, every record the one an uninterrupted run writes
                assert not part.duplicated(KEY).any()
                for r in part.itertuples(index=False):
                    assert ref.loc[(r.qid, r.lang, r.sample), "text"] == r.text
                continue
        try: rc = p.wait(timeout=1800)                                    # generous: only a hang should fail
        except subprocess.TimeoutExpired: pytest.fail("the last, uninterrupted run did not finish within 1800 s")
        assert rc == 0, p.stderr.read().decode()
        break
    final = read_samples(run_dir)
    assert kills >= 10 and torn >= 1, (kills, torn)
    assert any(0 < n < N_KEYS for n in progress), progress                # kills did land mid-run
    assert len(final) == N_KEYS and not final.duplicated(KEY).any()
    pd.testing.assert_frame_equal(by_key(final), reference)
    print(f"\n{kills} SIGKILLs ({torn} with a torn last write) over {attempts} starts; records after each kill: {progress}")


# ---------------------------------------------------------------- the embedded model

@pytest.mark.slow
def test_embedded_model_run_resumed_after_a_crash_equals_uninterrupted_run(tmp_path):
    from calm.sampling import TransformersBackend
    from calm.store import load_items, run_sampling

    class Crashing(TransformersBackend):
        def __init__(self, *a, after=1, **k):
            super().__init__(*a, **k); self.after, self.n = after, 0
        def generate(self, *a, **k):
            if self.n == self.after: raise RuntimeError("simulated crash")
            self.n += 1
            return super().generate(*a, **k)

    b = TransformersBackend.from_name()
    items = load_items("demo:test", ["en", "fr"], limit=1)
    kw = dict(m=2, max_new_tokens=6, batch_size=1, seed=3, progress=False)
    full = run_sampling(tmp_path / "full", items, ["en", "fr"], backend=b, **kw)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sampling(tmp_path / "r", items, ["en", "fr"], backend=Crashing(b.model, b.tokenizer, name=b.model_id), **kw)
    assert len(read_samples(tmp_path / "r")) == 2
    resumed = run_sampling(tmp_path / "r", items, ["en", "fr"], backend=b, **kw)
    assert len(resumed) == 2 * 2 and resumed.attrs["run_dir"] == str(tmp_path / "r")
    pd.testing.assert_frame_equal(by_key(resumed), by_key(full))
    assert read_manifest(tmp_path / "r")["model"]["weights_sha256"] == read_manifest(tmp_path / "full")["model"]["weights_sha256"]
