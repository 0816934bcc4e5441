"""Time the main job (`make demo`: `calm demo --profile testbed_demo`) end to end from an empty output folder.

    python benchmarks/demo.py [--profile testbed_demo] [--out-json reports/bench/testbed_demo.json] [--keep DIR]

The model cache (the converted embedded model) is assumed warm, as after `make setup`; everything else
(samples, adapters, evaluation) is computed from scratch in a temporary folder unless --keep names one.
"""
import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from calm.demo import run_demo
from calm.files import package_versions
from calm.profile import load_profile
from calm.report_check import profile_config
from calm.reports import code_version, settings_hash


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="testbed_demo", help="the profile `make demo` runs (testbed_demo), or demo (the chain-of-thought job)")
    p.add_argument("--out-json", default=None, help="where to write the figures (default reports/bench/PROFILE.json)")
    p.add_argument("--keep", default=None, help="run into this folder (kept) instead of a temporary one")
    a = p.parse_args()
    profile = load_profile(a.profile)
    a.out_json = a.out_json or f"reports/bench/{profile.name}.json"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.keep or tmp)
        t0 = time.time()
        res = run_demo(out, profile)
        wall = time.time() - t0
        report = out / ("README.md" if profile.testbed is not None else "results.md")
        results = report.read_text(encoding="utf-8")
    settings = profile_config(profile)         # what `calm check-reports` compares with the demo profile of the day
    fig = {"wall_s": round(wall, 1), "stages_s": res["timings"], "profile": str(profile.file.name),
           "settings": settings, "settings_hash": settings_hash(settings), "code": code_version(),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "target_s": 300 if profile.testbed is not None else 600, "results_md": results.split("\n## ")[0],
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m_at_end": os.getloadavg()[0]},
           "versions": package_versions()}
    Path(a.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out_json).write_text(json.dumps(fig, indent=2, default=str) + "\n", encoding="utf-8")
    fig["within_target"] = wall <= fig["target_s"]
    Path(a.out_json).write_text(json.dumps(fig, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({k: fig[k] for k in ("wall_s", "stages_s", "peak_rss_mb", "within_target")}, indent=2))


if __name__ == "__main__":
    main()
