"""Install output: the license is an SPDX string (no setuptools deprecation), `make setup` says what it installs;
package data: an installed calm reads its demo set, corpus and profiles without a checkout."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_without_deprecation_warnings():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert py["project"]["license"] == "Apache-2.0"
    req = next(r for r in py["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(re.search(r">=(\d+)", req).group(1)) >= 77          # SPDX strings need setuptools 77 (PEP 639)
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message)[:200] for w in caught]


def test_setup_says_what_it_installs():
    mk = (ROOT / "Makefile").read_text()
    recipe = mk.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    steps = re.findall(r'echo "setup (\d)/(\d): ([^"]+)"', recipe)
    assert [s[0] for s in steps] == ["1", "2", "3", "4", "5"] and all(s[1] == "5" for s in steps)
    assert any("MB" in s[2] or "GB" in s[2] for s in steps)
    for line in recipe.splitlines():                                 # every pip install is announced by the step before it
        if "pip install" in line: assert line.strip().startswith("@")


# --- package data: what calm reads ships inside the package and is found without a checkout ---
RESOURCE_MODULES = ("cli", "data", "loaders", "notebooks", "passages", "profile")


def test_package_data_covers_every_shipped_file():
    import fnmatch
    tables = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, folder, must in (("calm", ROOT / "calm", {"profiles/demo.yaml", "profiles/paper.yaml", "templates/main_job.md.j2",
                                                              "templates/testbed_report.md.j2"}),
                                  ("calm.datasets", ROOT / "data", {"demo/train.jsonl", "demo/test.jsonl",
                                                                    "corpus/questions.jsonl", "testbed/test.jsonl"})):
        tops = {g.split("/")[0] for g in tables[package]}
        shipped = [p.relative_to(folder).as_posix() for d in tops for p in (folder / d).rglob("*") if p.is_file()]
        assert must <= set(shipped), package
        assert [f for f in shipped if not any(fnmatch.fnmatch(f, g.replace("**/", "*")) for g in tables[package])] == []


def test_resources_are_not_found_through_checkout_paths():
    for m in RESOURCE_MODULES:
        assert "__file__" not in (ROOT / "calm" / f"{m}.py").read_text(encoding="utf-8"), f"calm/{m}.py finds files relative to its own file"


@pytest.mark.slow
def test_an_installed_copy_works_outside_a_checkout(tmp_path):
    "pip-install a copy of the package (no checkout around it) and read the demo set, the corpus and a profile from an unrelated folder."
    src = tmp_path / "src"; src.mkdir()
    for f in ("pyproject.toml", "README.md"): shutil.copy(ROOT / f, src / f)
    for d in ("calm", "data"):                                  # data/ is installed as calm.datasets
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"; elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALM_")} | {"PYTHONPATH": str(site)}
    code = """
import calm, pytest
from calm.data import DataError, demo_items
from calm.loaders import release_dir
from calm.notebooks import notebook_path
from calm.passages import bundled_questions
from calm.profile import load_profile
from calm.testbed_data import testbed_items
assert len(testbed_items("validation", ["en", "es"])) > 0
from importlib import resources
assert resources.files("calm").joinpath("templates", "main_job.md.j2").is_file()
print(calm.__file__)
print(len(demo_items("test")), len(bundled_questions()) > 0, load_profile("demo").name, load_profile("paper").name)
with pytest.raises(DataError, match="CALM_RELEASE_DIR"): release_dir()
with pytest.raises(FileNotFoundError, match="CALM_NOTEBOOKS"): notebook_path("table1")
from calm.cli import main
from calm.data import demo_path
assert main(["validate", str(demo_path("test")), "--all-languages"]) == 0
assert main(["reproduce", "--profile", "demo", "--dry-run", "--only", "table1"]) == 2   # no notebooks here: a one-line error
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    where, found = r.stdout.splitlines()[:2]
    assert where.startswith(str(site)) and found == "120 True demo paper"
    assert "calm reproduce: error: experiment notebooks not found" in r.stderr and "CALM_NOTEBOOKS" in r.stderr
