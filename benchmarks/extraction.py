"""Time answer extraction: the whole release, and how the time grows with the length of a completion.

    python benchmarks/extraction.py [--release DIR] [--repeat 5] [--out reports/bench/extraction.json]

Speed is measured here, not asserted in tests (a busy machine must not fail CI). Writes (and prints) JSON with:
  release_completions, release_s      extract_records on every released completion (median of --repeat runs)
  per_completion_us                   release_s / release_completions, in microseconds
  growth                              seconds to extract one completion of n characters (padding of prose
                                      before a final "Answer: C"), for n = 1k, 4k, 16k, 64k, 256k; each the median
                                      of --repeat runs
  growth_ratio_per_4x                 time(4n) / time(n) for consecutive sizes: about 4 means linear, about 16
                                      quadratic
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from calm.extraction import extract_answer, extract_records
from calm.loaders import read_release_samples

OPTIONS = (("A", "bank"), ("B", "library"), ("C", "classroom"), ("D", "office"), ("E", "park"))
FILLER = "The question asks where one would find this; a library keeps books, a bank keeps money. "


def median_seconds(f, repeat: int) -> float:
    "Median wall time of `repeat` calls of `f()`."
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); f(); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--release", default=None, help="release folder (default: ../shared/calm-release or $CALM_RELEASE_DIR)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default="reports/bench/extraction.json")
    args = p.parse_args(argv)
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_1m": os.getloadavg()[0]},
              "repeat": args.repeat}
    try:
        records, items = read_release_samples(args.release)
        result["release_completions"] = len(records)
        result["release_s"] = round(median_seconds(lambda: extract_records(records, items), args.repeat), 4)
        result["per_completion_us"] = round(1e6 * result["release_s"] / len(records), 2)
    except Exception as e:  # no release copy: say so, keep going
        result["release_error"] = f"{type(e).__name__}: {e}"
    growth = {}
    for n in (1_000, 4_000, 16_000, 64_000, 256_000):
        text = (FILLER * (n // len(FILLER) + 1))[:n] + "\nAnswer: C"
        assert extract_answer(text, "en", OPTIONS).letter == "C"
        growth[n] = median_seconds(lambda: extract_answer(text, "en", OPTIONS), args.repeat)
    sizes = sorted(growth)
    result["growth"] = {str(n): round(s, 6) for n, s in growth.items()}
    result["growth_ratio_per_4x"] = [round(growth[b] / growth[a], 2) for a, b in zip(sizes, sizes[1:])]
    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
