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


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_name_a_benchmark_imports_from_calm_exists(script):
    "A benchmark imports from calm inside functions too (its vLLM worker runs in another environment), so a moved name only fails when that path runs: check every `from calm.x import y` statically."
    import ast
    import importlib
    tree = ast.parse((ROOT / "benchmarks" / script).read_text())
    missing = [f"{n.module}.{a.name} (line {n.lineno})" for n in ast.walk(tree)
               if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "calm"
               for a in n.names if not hasattr(importlib.import_module(n.module), a.name)]
    assert not missing, f"benchmarks/{script} imports names calm no longer has: {missing}"
