"""Start `python -m MODULE ARGS...` many times without importing torch and transformers each time: kill tests start the same
program a dozen times, and its imports cost seconds of CPU per start (more than a tiny training itself).

Usage: python _fork_server.py PRELOAD...   (modules imported once, here, before any fork; not the module that is run)
Requests on stdin, one JSON object a line: {"module": "calm.train", "args": [...], "stdout": PATH, "stderr": PATH}.
Answers on stdout, one JSON object a line: {"pid": N} when the child has started, {"rc": R} when it has ended (its exit
status; -9 after a SIGKILL). Each child is a new process forked from this one after the imports and nothing else (no
model loaded, no run state), which then runs the module as `python -m` does (`runpy`, `__name__ == "__main__"`, `sys.argv`),
its stdout and stderr in the two files, and ends through `sys.exit` as that command would."""
import importlib
import json
import os
import runpy
import sys


def fork_into(stdout: str, stderr: str) -> int:
    "`os.fork()`; in the child (0 returned) stdout and stderr go to the two files (truncated; may be the same) and stdin is empty."
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, path in ((1, stdout), (2, stderr)):
            if fd == 2 and path == stdout: os.dup2(1, 2); continue     # one file: one offset, as `2>&1`
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.dup2(f, fd); os.close(f)
        null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
    return pid


def serve(preload):
    for m in preload: importlib.import_module(m)
    for line in sys.stdin:
        req = json.loads(line)
        pid = fork_into(req["stdout"], req["stderr"])
        if pid == 0: return req
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
    return None


if __name__ == "__main__":
    req = serve(sys.argv[1:])
    if req is None: sys.exit(0)
    sys.argv = [req["module"], *req["args"]]
    runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)
