"""A calm job in a child process, with numbered kill points; `tests/test_kills.py` SIGKILLs it at chosen ones and resumes.

Usage: python _kill_worker.py KILL_AT TRACE JOB OUT
  KILL_AT: the event at which the process SIGKILLs itself (0: never); TRACE: a file each event is appended to ('-': none);
  JOB: `evaluate` (`calm evaluate` on a tiny slice) or `demo` (`calm.demo.run_demo`, the main job, on a tiny slice).
   or: python _kill_worker.py serve
  Reads one run a line from stdin (KILL_AT TRACE JOB OUT LOG, tab-separated) and runs each in a new process forked from
  this one, which has only imported the modules a job imports (no model loaded, no job state): each run still starts
  from what is on disk and dies by SIGKILL, but without paying torch's and transformers' import again (seconds of CPU
  each time). The child's stdout and stderr go to LOG; the answer line is its exit status (-9: SIGKILL).
Events: `save` (a file written to its temporary path, not yet renamed into place: inside the save window), `append` (a
batch about to go into a sample store; a kill here first writes half a record, a torn write), `appended`, `generate` (a
generate call about to start), `adapter-save` / `adapter-saved` (around writing a trained adapter).
"""
import json
import os
import signal
import sys
from contextlib import contextmanager

EVALUATE = ["evaluate", "--items", "demo:test", "--languages", "en", "fr", "--limit", "2", "--greedy", "--max-new-tokens", "12",
            "--batch-size", "1"]
DEMO = dict(languages=["en", "fr"], train_questions=3, test_questions=2, m=2, max_new_tokens=16, train_steps=1)


def install(kill_at: int, trace: str | None):
    import calm.files
    import calm.sampling
    import calm.store
    import calm.training
    from calm.files import with_checksum
    count = [0]

    def event(kind, what="", torn=None):
        count[0] += 1
        if trace:
            with open(trace, "a") as f: f.write(json.dumps([count[0], kind, str(what)]) + "\n")
        if count[0] == kill_at:
            if torn is not None: torn()
            os.kill(os.getpid(), signal.SIGKILL)

    real_atomic = calm.files.atomic_path

    @contextmanager
    def atomic_path(path):
        with real_atomic(path) as tmp:
            yield tmp
            event("save", path)
    calm.files.atomic_path = atomic_path

    real_append = calm.store.SampleStore.append

    def append(self, records):
        records = list(records)
        def torn():
            line = json.dumps(with_checksum(records[0]), ensure_ascii=False).encode()
            with open(self.path, "ab") as f: f.write(line[:len(line) // 2]); f.flush(); os.fsync(f.fileno())
        event("append", self.run_dir, torn if records else None)
        n = real_append(self, records)
        event("appended", self.run_dir)
        return n
    calm.store.SampleStore.append = append

    real_generate = calm.sampling.TransformersBackend.generate

    def generate(self, *a, **k):
        event("generate")
        return real_generate(self, *a, **k)
    calm.sampling.TransformersBackend.generate = generate

    real_save = calm.training._save_adapter

    def save_adapter(model, tokenizer, out_dir):
        event("adapter-save", out_dir)
        real_save(model, tokenizer, out_dir)
        event("adapter-saved", out_dir)
    calm.training._save_adapter = save_adapter


def main(kill_at: int, trace: str, job: str, out: str) -> int:
    install(kill_at, None if trace == "-" else trace)
    if job == "evaluate":
        from calm.cli import main as calm
        return calm(EVALUATE + ["--out", out])
    from calm.demo import run_demo
    run_demo(out, **DEMO)
    return 0


# What a job imports, before the fork: the child then starts where a fresh process would be after its imports.
PRELOAD = ["torch", "transformers", "peft", "trl", "datasets", "pandas", "safetensors.torch", "calm.cli", "calm.demo", "calm.files",
           "calm.models", "calm.sampling", "calm.store", "calm.training", "transformers.models.llama.modeling_llama"]


def serve():
    "The fork server (see the module's docstring): returns the arguments of `main` in a child, None at the end of stdin."
    import importlib
    from _fork_server import fork_into
    for m in PRELOAD: importlib.import_module(m)
    for line in sys.stdin:
        kill_at, trace, job, out, log = line.rstrip("\n").split("\t")
        pid = fork_into(log, log)
        if pid == 0: return int(kill_at), trace, job, out
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    return None


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        args = serve()
        sys.exit(0 if args is None else main(*args))   # a child leaves as the script would: through sys.exit
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
