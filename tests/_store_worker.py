"""A sampling run into a `SampleStore` with a deterministic fake backend; `tests/test_store.py` kills it and resumes.

Usage: python _store_worker.py RUN_DIR DELAY_S   (also importable: `FakeBackend`, `ITEMS`, `LANGS`, `M`, `BATCH`, `run`)
"""
import hashlib
import sys
import time

from calm.data import demo_items

LANGS, M, BATCH, SEED = ["en", "zh", "fr"], 3, 2, 7
QIDS = list(dict.fromkeys(it.qid for it in demo_items("test")))[:20]
ITEMS = [it for it in demo_items("test") if it.lang in LANGS and it.qid in QIDS]


class FakeBackend:
    "Deterministic in (prompt, sample index, seed): a resumed batch regenerates exactly the same texts."
    kind, model_id, weights_hash = "fake", "fake-model", "f" * 64

    def __init__(self, delay: float = 0.0, fail_after: int | None = None):
        self.delay, self.fail_after, self.calls = delay, fail_after, []

    def generate(self, prompts, n, temperature=1.0, top_p=0.9, max_new_tokens=512, seed=0, stop=None):
        if self.fail_after is not None and len(self.calls) >= self.fail_after: raise RuntimeError("simulated crash")
        self.calls.append((list(prompts), seed))
        time.sleep(self.delay)
        out = []
        for p in prompts:
            row = []
            for j in range(n):
                h = hashlib.sha256(f"{p}|{j}|{seed}|{temperature}|{top_p}".encode()).hexdigest()
                row.append({"text": f"Explanation: {h[:24]}\nAnswer: {'ABCDE'[int(h[-1], 16) % 5]}", "prompt_tokens": len(p),
                            "completion_tokens": 7, "finish_reason": "stop"})
            out.append(row)
        return out


def run(run_dir, backend, **kw):
    from calm.store import run_sampling
    kw.setdefault("seed", SEED)
    return run_sampling(run_dir, ITEMS, LANGS, M, backend, batch_size=BATCH, max_new_tokens=16, progress=False, **kw)


if __name__ == "__main__":
    run(sys.argv[1], FakeBackend(float(sys.argv[2])))
