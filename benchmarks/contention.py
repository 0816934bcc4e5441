"""Speed under contention: the sampling stage alone and beside CPU-bound neighbour processes, per thread setting.

    .venv/bin/python benchmarks/contention.py              # `make bench-contention`; writes reports/bench/contention.json

Each setting runs the sampling stage (`calm.sampling.sample` with the hand-written loop on the embedded model:
`--questions` x `--languages` x m samples) in a fresh process, so that the OpenMP environment is read at start-up:
- `threads`: `torch.set_num_threads` (1, 2, ...; 0 = torch's default, one per core);
- `omp_wait_policy`: `OMP_WAIT_POLICY` unset (the OpenMP default: threads spin a while before sleeping) or PASSIVE
  (threads sleep at once when they wait);
- `interop`: `torch.set_num_interop_threads` (0 = torch's default).
Each setting is timed alone and beside `--neighbours` busy processes (`python -c "while True: pass"`), alternating
(alone, beside, alone, beside ...) for `--repeats` pairs; the figure is the median. It prints, per setting, the
slowdown (beside / alone) and the slowdown a fair share of the CPU would give: a job of T threads beside N busy
processes on C cores gets C*T/(T+N) cores when T+N > C, instead of min(T, C). The best setting is the one whose
stage is fastest beside the neighbours (seconds), not the one with the smallest ratio.
The load average is recorded: on a shared machine "alone" is not alone; rerun on a quiet machine.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MARK = "@@calm-contention "


def child(cfg: dict) -> None:
    "One setting in a fresh process: load the model, warm up, time the sampling stage; answer on stdout."
    import torch
    if cfg["threads"]: torch.set_num_threads(cfg["threads"])
    if cfg["interop"]: torch.set_num_interop_threads(cfg["interop"])
    from calm.data import demo_items
    from calm.sampling import TransformersBackend, sample
    test = demo_items("test")
    qids = list(dict.fromkeys(it.qid for it in test))[:cfg["questions"]]
    items = [it for it in test if it.qid in qids]
    b = TransformersBackend.from_name()
    langs = cfg["languages"].split(",")
    sample(items, langs[:1], 1, max_new_tokens=4, backend=b, progress=False)                  # warm-up
    t, cpu = time.perf_counter(), time.process_time()
    recs = sample(items, langs, cfg["m"], max_new_tokens=cfg["max_new_tokens"], seed=cfg["seed"], backend=b,
                  batch_size=cfg["batch_size"], progress=False)
    print(MARK + json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                             "generated_tokens": sum(r["completion_tokens"] for r in recs), "samples": len(recs),
                             "torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}),
          flush=True)


def run_child(cfg: dict, env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=1800)
    for line in p.stdout.splitlines():
        if line.startswith(MARK): return json.loads(line[len(MARK):])
    raise RuntimeError(f"setting {cfg} {env_extra} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")


def fair_slowdown(threads: int, neighbours: int, cores: int) -> float:
    "The slowdown a fair share of `cores` gives a job of `threads` busy threads beside `neighbours` busy processes."
    alone = min(threads, cores)
    if threads + neighbours <= cores: return 1.0
    return round(alone / (cores * threads / (threads + neighbours)), 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2", help="torch threads to try (0: torch's default)")
    ap.add_argument("--wait-policies", default="default,PASSIVE", help="OMP_WAIT_POLICY values ('default': unset)")
    ap.add_argument("--interop", default="0,1", help="interop threads to try (0: torch's default)")
    ap.add_argument("--neighbours", type=int, default=1, help="busy neighbour processes")
    ap.add_argument("--repeats", type=int, default=1, help="alone/beside pairs per setting (median taken)")
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--languages", default="en,fr")
    ap.add_argument("--m", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "contention.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return child(json.loads(a.child))

    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    base = {"questions": a.questions, "languages": a.languages, "m": a.m, "max_new_tokens": a.max_new_tokens,
            "batch_size": a.batch_size, "seed": a.seed}
    settings = list(itertools.product([int(x) for x in a.threads.split(",")], a.wait_policies.split(","),
                                      [int(x) for x in a.interop.split(",")]))
    rows = []
    for threads, policy, interop in settings:
        cfg = {**base, "threads": threads, "interop": interop}
        env = {} if policy == "default" else {"OMP_WAIT_POLICY": policy}
        alone, beside = [], []
        for _ in range(a.repeats):
            la = os.getloadavg()[0]
            alone.append({**run_child(cfg, env), "load_average_1min_at_start": round(la, 2)})
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.neighbours)]
            try:
                time.sleep(0.5)
                la = os.getloadavg()[0]
                beside.append({**run_child(cfg, env), "load_average_1min_at_start": round(la, 2)})
            finally:
                for h in hogs: h.kill(); h.wait()
        t_alone = statistics.median(r["seconds"] for r in alone)
        t_beside = statistics.median(r["seconds"] for r in beside)
        eff = alone[0]["torch_threads"]
        row = {"threads": threads, "torch_threads": eff, "omp_wait_policy": policy, "interop": interop,
               "interop_threads": alone[0]["interop_threads"], "alone_s": round(t_alone, 2), "beside_s": round(t_beside, 2),
               "slowdown": round(t_beside / t_alone, 3), "fair_share_slowdown": fair_slowdown(eff, a.neighbours, cores),
               "alone_tokens_per_s": round(statistics.median(r["generated_tokens"] / r["seconds"] for r in alone), 2),
               "beside_tokens_per_s": round(statistics.median(r["generated_tokens"] / r["seconds"] for r in beside), 2),
               "runs": {"alone": alone, "beside": beside}}
        rows.append(row)
        print(f"threads {eff} (interop {row['interop_threads']}), OMP_WAIT_POLICY {policy}: alone {t_alone:.1f} s, "
              f"beside {a.neighbours} busy process(es) {t_beside:.1f} s -> slowdown {row['slowdown']:.2f}x "
              f"(fair share {row['fair_share_slowdown']:.2f}x)", flush=True)
    best = min(rows, key=lambda r: r["beside_s"])
    result = {
        "settings_measured": [{k: v for k, v in r.items() if k != "runs"} for r in rows],
        "best_beside_neighbours": {k: best[k] for k in ("torch_threads", "omp_wait_policy", "interop_threads", "beside_s", "slowdown")},
        "runs": [{"threads": r["torch_threads"], "omp_wait_policy": r["omp_wait_policy"], "interop": r["interop_threads"], **r["runs"]}
                 for r in rows],
        "workload": base, "neighbours": a.neighbours, "cores": cores, "repeats": a.repeats,
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "quiet_machine": max(load_before[0], os.getloadavg()[0]) < 1.0,
        "command": " ".join(["python", "benchmarks/contention.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"best beside the neighbours: {result['best_beside_neighbours']}")
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
