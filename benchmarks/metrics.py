"""Time voting and metrics on the release answers and on a large random array.

    python benchmarks/metrics.py [--questions N] [--out reports/bench/metrics.json]

Writes (and prints) JSON with:
  release_s            vote_table + winning shares + metrics_table (1000 bootstrap resamples) + vote accuracy
                       on the release's X-CSQA samples (899 questions x 6 languages x 3 samples); reading the
                       files and extracting letters is timed apart (release_load_s).
  large_s              majority vote (tie="order") + accuracy + ACC_avg + Consistency_s for s=2..L + AC3_s
                       on seeded random codes, Q x 16 languages x 8 samples (Q = --questions, default 1,000,000);
                       generating the codes is timed apart (large_generate_s).
  large_peak_mb        peak resident set size of the whole process (resource.getrusage ru_maxrss), which
                       includes the interpreter, numpy/pandas and the Q x 16 x 8 int8 input array.
  closed_form_speedup  enumeration time / closed-form time for Consistency_s, all s, measured in this run on
                       the same 10,000 x 6 random answers (and closed_form_speedup_16 on 1,000 x 16).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from calm.loaders import parse_gold, parse_question, read_release_rows, release_dir, xcsqa_file
from calm.metrics import (acc_avg, accuracy, ac3, consistency_by_enumeration, consistency_curve, metrics_table)
from calm.voting import encode_letters, majority_vote, vote_table, winning_share_by_language

RELEASE_LANGS = ["en", "zh", "fr", "de", "it", "ja"]


def peak_rss_mb() -> float:
    "Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- release answers
_LABELS = {"en": "Answer", "zh": "答案", "fr": "Réponse", "de": "Antwort", "it": "Risposta", "ja": "答え"}


def _fallback_letter(text, lang, options=None):
    "FALLBACK extractor (calm.extraction missing): the first A-E after the last answer label."
    if not text: return None
    m = re.findall(_LABELS[lang] + r"\s*[:：]\s*\W*([A-E])\b", text)
    return m[-1] if m else None


def _extractor():
    "calm.extraction.extract_answer if it exists, else the labelled regex fallback."
    try:
        from calm.extraction import extract_answer
    except ImportError:
        return _fallback_letter, "fallback regex (calm.extraction not available)"
    return (lambda text, lang, options: extract_answer(text, lang, options).letter), "calm.extraction.extract_answer"


def load_release(root=None):
    "Sample records (qid, lang, sample, letter) and gold codes from the release's X-CSQA samples."
    extract, how = _extractor()
    root = release_dir(root)
    recs, gold = [], None
    for lang in RELEASE_LANGS:
        rows = read_release_rows(xcsqa_file(root, lang, split="train"))
        if gold is None: gold = encode_letters([parse_gold(r.get("output")) for r in rows])
        for i, r in enumerate(rows):
            options = parse_question(r["input"])[1]
            for j, text in enumerate(r.get("pred") or []):
                recs.append({"qid": f"xcsqa-train-{i}", "lang": lang, "sample": j, "letter": extract(text, lang, options)})
    return pd.DataFrame(recs), gold, how


def bench_release(root=None) -> dict:
    t0 = time.perf_counter()
    records, gold, how = load_release(root)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    votes = vote_table(records, RELEASE_LANGS, tie="order")
    shares = winning_share_by_language(records, votes, RELEASE_LANGS)
    first = records[records["sample"] == 0].pivot(index="qid", columns="lang", values="letter")
    qorder = votes["qid"].to_numpy()
    first = first.reindex(index=qorder, columns=RELEASE_LANGS)
    pred = encode_letters(first.to_numpy())
    qrow = np.array([int(q.rsplit("-", 1)[1]) for q in qorder])
    g = gold[qrow]
    table = metrics_table(pred, g, RELEASE_LANGS, n_boot=1000)
    vote_acc = float((encode_letters(votes["winner"].to_numpy()) == g).mean())
    release_s = time.perf_counter() - t0
    return {
        "release_s": release_s, "release_load_s": load_s, "release_extractor": how,
        "release_questions": int(len(votes)), "release_records": int(len(records)),
        "release_unparsed_share": float(records["letter"].isna().mean()),
        "release_ties": int(votes["tie"].sum()), "release_vote_accuracy": vote_acc,
        "release_first_sample_metrics": {k: round(float(v), 4) for k, v in table["value"].items()},
        "release_winning_share": dict(zip(shares["lang"], shares["share"].round(4).tolist())),
    }


# ---------------------------------------------------------------- closed form vs enumeration
def _best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t0)
    return best


def bench_speedup(questions: int, languages: int, seed: int, repeat_enum: int) -> dict:
    rng = np.random.default_rng(seed)
    pred = rng.integers(-1, 5, size=(questions, languages), dtype=np.int8)
    s_values = range(2, languages + 1)
    closed = consistency_curve(pred).to_numpy()
    enum = np.array([consistency_by_enumeration(pred, s) for s in s_values])
    if not np.allclose(closed, enum, rtol=0, atol=1e-12): raise AssertionError("closed form != enumeration")
    t_closed = _best_time(lambda: consistency_curve(pred), 7)
    t_enum = _best_time(lambda: [consistency_by_enumeration(pred, s) for s in s_values], repeat_enum)
    return {"questions": questions, "languages": languages, "s": [2, languages],
            "closed_s": t_closed, "enumeration_s": t_enum, "speedup": t_enum / t_closed}


# ---------------------------------------------------------------- large random array
def bench_large(questions: int, languages: int, samples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    codes = rng.integers(-1, 5, size=(questions, languages, samples), dtype=np.int8)  # 1 in 6 unparsed
    gold = rng.integers(0, 5, size=questions, dtype=np.int8)
    generate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    votes = majority_vote(codes, tie="order")
    t_vote = time.perf_counter()
    pred = np.ascontiguousarray(codes[:, :, 0])  # the first sample of each language is its answer
    acc = accuracy(pred, gold); avg = acc_avg(pred, gold)
    vote_acc = float((votes.winner == gold).mean())
    t_acc = time.perf_counter()
    curve = consistency_curve(pred)
    scores = ac3(avg, curve.to_numpy())
    t_end = time.perf_counter()
    return {
        "large_s": t_end - t0, "large_vote_s": t_vote - t0, "large_accuracy_s": t_acc - t_vote,
        "large_consistency_ac3_s": t_end - t_acc, "large_generate_s": generate_s,
        "large_shape": [questions, languages, samples], "large_ties": int(votes.tie.sum()),
        "large_acc_avg": round(avg, 4), "large_vote_accuracy": round(vote_acc, 4),
        "large_consistency": {int(s): float(f"{v:.6g}") for s, v in curve.items()},
        "large_ac3": {int(s): float(f"{v:.6g}") for s, v in zip(curve.index, scores)},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=1_000_000, help="questions in the large random array")
    p.add_argument("--languages", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--release", default=None, help="release folder (default: ../shared/calm-release)")
    p.add_argument("--out", default="reports/bench/metrics.json")
    args = p.parse_args(argv)

    result = {"machine": {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                          "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__},
              "questions": args.questions, "seed": args.seed,
              "peak_memory_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss: peak RSS of the whole process"}
    try:
        result.update(bench_release(args.release))
    except Exception as e:  # no release copy: say so, keep going
        result.update({"release_s": None, "release_error": f"{type(e).__name__}: {e}"})
    sp6 = bench_speedup(10_000, 6, args.seed, repeat_enum=3)
    sp16 = bench_speedup(1_000, 16, args.seed, repeat_enum=1)
    result.update({"closed_form_speedup": sp6["speedup"], "closed_form_speedup_detail": sp6,
                   "closed_form_speedup_16": sp16["speedup"], "closed_form_speedup_16_detail": sp16})
    result["peak_rss_before_large_mb"] = peak_rss_mb()
    result.update(bench_large(args.questions, args.languages, args.samples, args.seed))
    result["large_peak_mb"] = peak_rss_mb()
    result["targets_met"] = {"release_lt_1s": result["release_s"] is not None and result["release_s"] < 1,
                             "large_lt_60s": result["large_s"] < 60}

    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
