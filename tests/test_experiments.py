"""Experiment notebooks open and run from anywhere with checked parameters."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "nbs" / "experiments").glob("*.ipynb"))
CHECKED = EXPERIMENTS
OWN_LIBRARY = ["50_pairs", "56_adapters", "80_reports", "81_figures"]


def cells(path): return json.loads(path.read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("path", EXPERIMENTS + sorted((ROOT / "nbs").glob("*.ipynb")), ids=lambda p: p.stem)
def test_kernelspec_is_shipped(path):
    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    ks = meta.get("kernelspec") or {}
    assert ks.get("name") == "python3" and ks.get("language") == "python"
    # the kernel's own language_info: without it JupyterLab adds it on open and the tab shows unsaved changes at once
    # (seen in headless Chromium on JupyterLab 4; with it the tab stays clean)
    li = meta.get("language_info") or {}
    assert (li.get("name"), li.get("pygments_lexer"), li.get("mimetype"), li.get("file_extension")) == ("python", "ipython3", "text/x-python", ".py")


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_parameters_are_typed_and_checked(path):
    import papermill as pm
    import ast
    params = pm.inspect_notebook(str(path))
    assert params and all(p["inferred_type_name"] not in ("None", None) for p in params.values()), params
    cs = cells(path)
    i = next(i for i, c in enumerate(cs) if "parameters" in (c.get("metadata", {}).get("tags") or []))
    declared = [n.target.id for n in ast.parse("".join(cs[i]["source"])).body if isinstance(n, ast.AnnAssign)]
    assert declared == list(params)          # papermill sees every one (it cannot parse `X | None`: Optional[X] it can)
    after = "".join(cs[i + 1]["source"])
    assert "notebook_parameters(globals()" in after
    for name, p in params.items():                      # defaults never point outside the project with ../..
        assert not str(p["default"]).strip('"').startswith("../"), (name, p["default"])


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_sources_keep_no_outputs(path):
    assert all(not c.get("outputs") for c in cells(path) if c["cell_type"] == "code")


def run_papermill(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "nbs/experiments/fig3.ipynb"), str(tmp_path / "o.ipynb"),
                           "--cwd", str(tmp_path), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)   # generous: only a hang should fail


@pytest.mark.slow
def test_papermill_rejects_unknown_names_and_missing_inputs_before_writing(tmp_path):
    r = run_papermill(tmp_path, "-p", "langs", "en")
    assert r.returncode != 0 and "unknown parameter(s) langs" in r.stdout + r.stderr
    r = run_papermill(tmp_path, "-p", "run_dir", "no/such/run", "-p", "out", "written")
    assert r.returncode != 0 and "no/such/run does not exist" in r.stdout + r.stderr
    assert not (tmp_path / "written").exists() and not (ROOT / "written").exists()
