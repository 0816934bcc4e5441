"Benchmark scripts run and record their figures; their speed is reported by them, never asserted here."
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_extraction_benchmark_records_release_and_growth(tmp_path):
    out = tmp_path / "extraction.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "extraction.py"), "--repeat", "1", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=1800)
    r = json.loads(out.read_text())
    assert set(r["growth"]) == {"1000", "4000", "16000", "64000", "256000"} and len(r["growth_ratio_per_4x"]) == 4
    assert all(s > 0 for s in r["growth"].values())
    assert ("release_s" in r and r["release_completions"] > 0) or "release_error" in r
