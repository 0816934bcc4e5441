"""Sampling speed on the embedded default model: the batched sampler against a naive loop, and a matmul roofline.

    .venv/bin/python benchmarks/sampling.py            # writes reports/bench/sampling.json
    python benchmarks/sampling.py --device cuda --out reports/bench/sampling_gpu.json   # on a GPU (bfloat16)

One run measures, on the same model, prompts, seeds and thread count:
- the batched sampler (`calm.sampling.sample` with `TransformersBackend`): every prompt prefilled once
  for its m samples, batches of `batch_size` prompts x m rows decoded together;
- a naive loop that calls transformers' `model.generate` once per prompt and sample (batch of one,
  the prompt encoded again for every sample);
- a compute roofline for this machine: `torch.nn.functional.linear` timed on the model's own weight
  shapes (every projection of every layer and the LM head) at the sampler's row counts, giving the
  tokens/s the workload would reach if only its matrix multiplications cost time (attention, sampling
  and Python overhead ignored: an upper bound);
- peak resident memory of each phase (sampled from /proc/self/statm every 5 ms).

Tokens/s counts generated tokens only (`completion_tokens`, EOS included), not prompt tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--languages", default="en,zh,fr")
    ap.add_argument("--m", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=18, help="prompts per batch (rows = batch_size x m)")
    ap.add_argument("--naive-prompts", type=int, default=3, help="prompts the naive loop runs (x m samples each)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="also profile one batch of this many decode steps with torch.profiler (table written beside --out)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the model runs in bfloat16, load_model's default)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "sampling.json"))
    a = ap.parse_args(argv)

    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from calm.data import demo_items
    from calm.models import DEFAULT_MODEL, load_model
    from calm.sampling import (TransformersBackend, batch_seed, default_prompt_builder, encode_prompts, plan_batches,
                               prompt_keys, sample, shared_prefixes)

    langs = a.languages.split(",")
    test = demo_items("test")
    qids = list(dict.fromkeys(it.qid for it in test))[:a.questions]
    items = [it for it in test if it.qid in qids]
    load_before = os.getloadavg()

    from calm.models import conversion_info
    dev = a.device
    t = time.perf_counter(); model, tok = load_model(DEFAULT_MODEL, device=dev); load_s = time.perf_counter() - t
    cuda = dev.startswith("cuda")
    if cuda: torch.cuda.reset_peak_memory_stats()
    backend = TransformersBackend(model, tok, name=DEFAULT_MODEL)
    builder = default_prompt_builder(backend, langs)
    keys, by_key = prompt_keys(items, langs)
    prompts = [builder(by_key[k]) for k in keys]
    kw = dict(temperature=1.0, top_p=0.9, max_new_tokens=a.max_new_tokens)

    backend.generate(prompts[:1], 1, max_new_tokens=4, seed=0)          # warm-up (allocator, kernels)
    print(f"model loaded in {load_s:.1f} s on {dev}; {len(prompts)} prompts x {a.m}", file=sys.stderr, flush=True)

    with PeakRSS() as mem_batched:
        t = time.perf_counter()
        records = sample(items, langs, a.m, seed=a.seed, backend=backend, batch_size=a.batch_size, progress=False, **kw)
        sync(dev); batched_s = time.perf_counter() - t
    print(f"batched sampler: {batched_s:.1f} s", file=sys.stderr, flush=True)
    gpu_peak = {"batched": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else None
    if cuda: torch.cuda.reset_peak_memory_stats()
    gen_tokens = sum(r["completion_tokens"] for r in records)
    prompt_tokens = sum(r["prompt_tokens"] for r in records) // a.m      # each prompt prefilled once

    naive_prompts = prompts[:a.naive_prompts]
    eos = backend.eos_ids
    with PeakRSS() as mem_naive:                                       # transformers' own generate, one prompt and sample at a time
        t = time.perf_counter(); naive_tokens = 0
        for i, p in enumerate(naive_prompts):
            enc = encode_prompts(tok, [p], model.device)
            for j in range(a.m):
                torch.manual_seed(batch_seed(a.seed, i * a.m + j))
                with torch.inference_mode():
                    out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=0.9, top_k=0,
                                         max_new_tokens=a.max_new_tokens, pad_token_id=eos[0], eos_token_id=eos)
                g = out[0, enc["input_ids"].shape[1]:].tolist()
                naive_tokens += next((k + 1 for k, x in enumerate(g) if x in eos), len(g))
        sync(dev); naive_s = time.perf_counter() - t
    print(f"naive generate loop: {naive_s:.1f} s", file=sys.stderr, flush=True)
    if cuda: gpu_peak["naive"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)

    shapes = linear_shapes(model)
    if not any(o == model.config.vocab_size for _, o in shapes):      # tied LM head is not a Linear of its own
        shapes.append((model.config.hidden_size, model.config.vocab_size))
    rows = min(a.batch_size, len(prompts)) * a.m
    step_s = matmul_seconds(shapes, rows, model.dtype, device=dev)                  # one decode step of `rows` sequences
    # the prompt tokens the sampler must encode: per batch, each shared prefix once and every prompt's rest
    encoded = []
    for batch in plan_batches(prompts, a.batch_size):
        enc = encode_prompts(tok, batch)
        lists = [[t for t, k in zip(r, m) if k] for r, m in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
        P = shared_prefixes(lists)
        prefixes = {tuple(t[:p]) for t, p in zip(lists, P) if p}
        encoded.append(sum(map(len, prefixes)) + sum(len(t) - p for t, p in zip(lists, P)))
    body = [s for s in shapes if s[1] != model.config.vocab_size]       # prompt tokens need no LM head (but the last)
    prefill_s = sum(matmul_seconds(body, n_tok, model.dtype, repeats=5, device=dev) for n_tok in encoded)
    roofline_s = prefill_s + gen_tokens * step_s / rows
    flops_per_token = 2 * sum(i * o for i, o in shapes)

    tps, naive_tps = gen_tokens / batched_s, naive_tokens / naive_s
    roofline_tps = gen_tokens / roofline_s
    result = {
        "tokens_per_s": round(tps, 2),
        "naive_tokens_per_s": round(naive_tps, 2),
        "speedup_vs_naive": round(tps / naive_tps, 2),
        "roofline_tokens_per_s": round(roofline_tps, 2),
        "fraction_of_roofline": round(tps / roofline_tps, 3),
        "decode_roofline_tokens_per_s": round(rows / step_s, 2),
        "matmul_gflops_at_decode_rows": round(flops_per_token * rows / step_s / 1e9, 1),
        "peak_rss_mib": {"batched": mem_batched.mib, "naive": mem_naive.mib},
        "peak_gpu_mib": gpu_peak,
        "batched": {"seconds": round(batched_s, 2), "generated_tokens": gen_tokens, "samples": len(records),
                    "prompt_tokens": prompt_tokens, "prompt_tokens_encoded": sum(encoded),
                    "finish_reasons": {f: sum(r["finish_reason"] == f for r in records) for f in ("stop", "length")}},
        "naive": {"seconds": round(naive_s, 2), "generated_tokens": naive_tokens, "samples": len(naive_prompts) * a.m},
        "roofline": {"what": "generated tokens / (matmul time of the prompt tokens the sampler encodes (shared prefixes once, "
                             "the rest of each prompt once) + matmul time per generated token at the sampler's decode rows); "
                             "attention, sampling, cache copies and Python overhead ignored",
                     "decode_rows": rows, "decode_step_matmul_s": round(step_s, 5), "prompt_tokens_encoded_per_batch": encoded,
                     "prefill_matmul_s": round(prefill_s, 4), "flops_per_token": flops_per_token},
        "settings": {"model": DEFAULT_MODEL, "weights": conversion_info(DEFAULT_MODEL).get("source"), "device": dev,
                     "gpu": torch.cuda.get_device_name() if cuda else None, "dtype": str(model.dtype).replace("torch.", ""), "questions": len(qids),
                     "languages": langs, "m": a.m, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
                     "temperature": 1.0, "top_p": 0.9, "seed": a.seed, "naive_prompts": len(naive_prompts),
                     "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "model_load_s": round(load_s, 2),
                     "load_average_before": [round(x, 2) for x in load_before],
                     "load_average_after": [round(x, 2) for x in os.getloadavg()],
                     "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:]))},
    }
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
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "naive_tokens_per_s", "speedup_vs_naive", "roofline_tokens_per_s",
                                             "fraction_of_roofline", "peak_rss_mib", "peak_gpu_mib")}, indent=1))
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
