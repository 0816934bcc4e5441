"""Per-step cost of calm's hand-written decode loop (`TransformersBackend.generate`) before and after it was vectorised,
in one run, on the same prompts and seeds, on the embedded default model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decode_step.py                      # CPU; writes reports/bench/decode_step.json
    python benchmarks/decode_step.py --device cuda --out reports/bench/gpu/decode_step_gpu.json   # on a GPU (bfloat16)

`before` is the loop as it was until this benchmark was written, kept here as `LegacyBackend`: every step a Python
loop over the rows with `.tolist()` of the new tokens (three host syncs), a tokenizer decode of every row's tail when
stop strings are set, and `inspect.signature` of the model's forward twice per forward. `after` is
`calm.sampling.TransformersBackend`: tokens written into one tensor, one host sync per step, a decode only for rows
whose new token can complete a stop string (`calm.sampling.can_complete_stop`, asked once per token id, the first
time it is drawn: part of the first rounds' steps), the forward's signature read once per model.
Both share `calm.sampling.prefill` and `next_tokens`; the script checks that they return identical completions.

Each workload (few-shot prompts with their stop string, and chat prompts without one) is measured two ways:
- wall clock, interleaved rounds (`--rounds`): per decode step = (generate time - prefill time) / decode forwards;
  the figure is the median round;
- cProfile of one more generate call each: seconds per decode step spent in the model's forward, in tokenizer
  decodes, in `inspect.signature`, in `.tolist()`, and the rest (the loop's own Python and torch calls).
The load average before and after is recorded: on a shared machine the absolute figures move with the load, the
before/after ratio of one interleaved run less so.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import calm.sampling as S                      # noqa: E402
from calm.sampling import TransformersBackend  # noqa: E402


def _legacy_forward(model, cache, **kw):
    "The old `_forward`: `inspect.signature` of the forward on every call, twice."
    import inspect
    if "logits_to_keep" in inspect.signature(model.forward).parameters: kw["logits_to_keep"] = 1
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model(**kw, use_cache=True, **{name: cache}).logits[:, -1]


class LegacyBackend(TransformersBackend):
    "`TransformersBackend.generate` as it was before it was vectorised (calm commit 3b57641), for comparison."

    def generate(self, prompts, n, temperature=1.0, top_p=0.9, max_new_tokens=512, seed=0, stop=None):
        import torch
        tok, model = self.tokenizer, self.model
        enc = S.encode_prompts(tok, prompts)
        lists = [[t for t, a in zip(row, m) if a] for row, m in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
        reps = 1 if temperature == 0 else n
        gen = torch.Generator(device=model.device).manual_seed(int(seed))
        eos, tail = torch.tensor(self.eos_ids, device=model.device), max((len(s) for s in stop or ()), default=0) + 8
        out = [[] for _ in range(len(lists) * reps)]
        finish = ["length"] * len(out)
        with torch.inference_mode():
            cache, mask, last, logits = S.prefill(model, lists, reps, self.share_prefix)
            alive = torch.arange(len(out), device=model.device)
            for step in range(max_new_tokens):
                nxt = S.next_tokens(logits, temperature, top_p, gen)
                ended = torch.isin(nxt, eos).tolist()
                for j, (r, t) in enumerate(zip(alive.tolist(), nxt.tolist())):
                    out[r].append(t)
                    if ended[j]: finish[r] = "stop"
                    elif stop and any(s in tok.decode(out[r][-tail:], skip_special_tokens=True) for s in stop):
                        finish[r], ended[j] = "stop", True
                ended = torch.tensor(ended, device=model.device)
                if step == max_new_tokens - 1 or bool(ended.all()): break
                keep = ~ended
                if not bool(keep.all()):
                    idx = keep.nonzero()[:, 0]
                    cache.batch_select_indices(idx)
                    alive, nxt, mask, last = alive[idx], nxt[idx], mask[idx], last[idx]
                mask = torch.cat([mask, mask.new_ones(len(alive), 1)], 1)
                last = last + 1
                logits = _legacy_forward(model, cache, input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None])
        results = []
        for i in range(len(lists)):
            row = []
            for r in range(i * reps, (i + 1) * reps):
                toks = out[r][:-1] if finish[r] == "stop" and out[r] and out[r][-1] in self.eos_ids else out[r]
                text, stopped = S._cut_at_stop(tok.decode(toks, skip_special_tokens=True), stop)
                row.append({"text": text, "prompt_tokens": len(lists[i]), "completion_tokens": len(out[r]),
                            "finish_reason": "stop" if stopped else finish[r]})
            results.append(row * n if reps == 1 else row)
        return results


class Timed:
    "Counts the model's forward calls and times `calm.sampling.prefill` (the legacy loop calls it through the module too)."
    def __init__(self, model, device):
        self.model, self.device, self.forwards, self.prefill_s, self.prefill_forwards = model, device, 0, 0.0, 0
        self._orig = S.prefill
        model.register_forward_pre_hook(lambda *a: setattr(self, "forwards", self.forwards + 1))
        def prefill(*a, **k):
            self.sync(); f0, t = self.forwards, time.perf_counter()
            res = self._orig(*a, **k)
            self.sync(); self.prefill_s += time.perf_counter() - t; self.prefill_forwards += self.forwards - f0
            return res
        S.prefill = prefill
    def sync(self):
        if str(self.device).startswith("cuda"):
            import torch; torch.cuda.synchronize()
    def run(self, backend, prompts, kw):
        "`(results, seconds per decode step, prefill seconds, decode steps)` of one generate call."
        self.forwards = self.prefill_forwards = 0; self.prefill_s = 0.0
        self.sync(); t = time.perf_counter()
        res = backend.generate(prompts, **kw)
        self.sync(); total = time.perf_counter() - t
        steps = self.forwards - self.prefill_forwards + 1          # the first step samples from the prefill's logits
        return res, (total - self.prefill_s) / steps, self.prefill_s, steps


def profile_split(backend, prompts, kw, steps) -> dict:
    "cProfile of one generate call: seconds per decode step in the forward, tokenizer decodes, inspect.signature, .tolist() and the rest."
    pr = cProfile.Profile(); pr.enable(); backend.generate(prompts, **kw); pr.disable()
    st = pstats.Stats(pr).stats
    def cum(pred): return sum(v[3] for k, v in st.items() if pred(*k))
    def calls(pred): return sum(v[1] for k, v in st.items() if pred(*k))
    total = cum(lambda f, l, n: n == "generate" and ("sampling.py" in f or "decode_step.py" in f))
    prefill = cum(lambda f, l, n: n == "prefill" and f.endswith("sampling.py"))
    parts = {"forward": cum(lambda f, l, n: n == "_wrapped_call_impl" and f.endswith("module.py")),
             "tokenizer_decode": cum(lambda f, l, n: n in ("decode", "batch_decode") and "tokenization" in f),
             "inspect_signature": cum(lambda f, l, n: n == "signature" and f.endswith("inspect.py")),
             "tolist": cum(lambda f, l, n: "tolist" in n)}
    decode_total = total - prefill
    per = {k: v / steps * 1000 for k, v in parts.items()}
    per["forward"] = max(0.0, per["forward"] - 1000 * prefill / steps)  # prefill's forwards are not decode steps (approximate)
    out = {f"{k}_ms_per_step": round(v, 3) for k, v in per.items()}
    out["step_ms_under_profiler"] = round(decode_total / steps * 1000, 3)
    out["rest_ms_per_step"] = round(max(0.0, decode_total / steps * 1000 - sum(per.values())), 3)
    out["tokenizer_decode_calls"] = calls(lambda f, l, n: n == "decode" and "tokenization" in f)
    out["inspect_signature_calls"] = calls(lambda f, l, n: n == "signature" and f.endswith("inspect.py"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="prompts per generate call (rows = prompts x m)")
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the model runs in bfloat16, load_model's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, e.g. from OMP_NUM_THREADS)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "decode_step.json"))
    a = ap.parse_args(argv)

    load_before = os.getloadavg()
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from calm.data import demo_items
    from calm.models import DEFAULT_MODEL, load_model
    from calm.prompts import PromptBuilder
    model, tok = load_model(DEFAULT_MODEL, device=a.device)
    after, before = TransformersBackend(model, tok, name=DEFAULT_MODEL), LegacyBackend(model, tok, name=DEFAULT_MODEL)
    timer = Timed(model, a.device)
    items = [it for it in demo_items("test") if it.lang == "en"][:a.prompts]
    workloads = {}
    for mode in ("fewshot", "chat"):
        b = PromptBuilder.auto(tok, mode, languages=["en"])
        workloads[f"{mode}_sampled"] = ([b(it) for it in items], dict(n=a.m, temperature=1.0, top_p=0.9, max_new_tokens=a.max_new_tokens,
                                                                      stop=b.stop_strings("en") or None))
    after.generate(workloads["chat_sampled"][0][:1], 1, max_new_tokens=4)       # warm-up
    report = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]) if argv is None else None,
              "device": a.device, "model": DEFAULT_MODEL, "dtype": str(model.dtype).replace("torch.", ""),
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "load_avg_before": [round(x, 2) for x in load_before], "workloads": {}}
    for name, (prompts, kw) in workloads.items():
        rounds = {"before": [], "after": []}
        for backend in (before, after):                 # warm-up
            backend.generate(prompts[:1], **{**kw, "n": 1, "max_new_tokens": 2})
        for r in range(a.rounds):
            kw_r = {**kw, "seed": r}
            order = [("before", before), ("after", after)] if r % 2 == 0 else [("after", after), ("before", before)]
            got = {}
            for label, backend in order:
                res, step_s, prefill_s, steps = timer.run(backend, prompts, kw_r)
                got[label] = res
                rounds[label].append({"step_ms": round(step_s * 1000, 3), "prefill_ms": round(prefill_s * 1000, 1), "decode_steps": steps})
            if got["before"] != got["after"]:
                raise SystemExit(f"{name}, seed {r}: the vectorised loop's completions differ from the old loop's")
            print(f"{name} round {r}: before {rounds['before'][-1]['step_ms']:.1f} ms/step, after {rounds['after'][-1]['step_ms']:.1f} ms/step",
                  file=sys.stderr, flush=True)
        med = {k: statistics.median(x["step_ms"] for x in v) for k, v in rounds.items()}
        steps = rounds["after"][0]["decode_steps"]
        report["workloads"][name] = {
            "rows": len(prompts) * a.m, "max_new_tokens": a.max_new_tokens, "stop": kw["stop"], "identical_completions": True,
            "step_ms_median": {k: round(v, 2) for k, v in med.items()}, "before_over_after": round(med["before"] / med["after"], 2),
            "rounds": rounds,
            "profile": {"before": profile_split(before, prompts, {**kw, "seed": 0}, rounds["before"][0]["decode_steps"]),
                        "after": profile_split(after, prompts, {**kw, "seed": 0}, steps)}}
    report["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: {"step_ms_median": v["step_ms_median"], "before_over_after": v["before_over_after"]}
                      for k, v in report["workloads"].items()}, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
