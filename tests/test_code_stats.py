"tools/code_stats.py --check: passes on the repository as it is, fails on each kind of new violation."
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def copy(tmp_path):
    "The modules, notebooks, README and baseline that tools/code_stats.py reads, copied to a temporary root."
    (tmp_path / "calm").mkdir()
    for py in (ROOT / "calm").glob("*.py"):
        shutil.copy(py, tmp_path / "calm" / py.name)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_*"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "code_stats_baseline.json", tmp_path / "tools" / "code_stats_baseline.json")
    return tmp_path


def check(root):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "code_stats.py"), "--root", str(root), "--check"],
                          capture_output=True, text=True)


def append_to_module(root, code):
    with open(root / "calm" / "prompts.py", "a") as f: f.write(code)


def append_export_cell(root, body, cell_id):
    p = root / "nbs" / "10_prompts.ipynb"
    nb = json.loads(p.read_text())
    nb["cells"].append({"cell_type": "code", "id": cell_id, "metadata": {}, "execution_count": None,
                        "outputs": [], "source": body.splitlines(keepends=True)})
    p.write_text(json.dumps(nb))


def import_first_in_data(root, line):
    p = root / "calm" / "data.py"
    p.write_text(p.read_text().replace("from __future__ import annotations\n",
                                       f"from __future__ import annotations\n{line}\n", 1))


def add_in_function_import(root):
    append_to_module(root, "\n\ndef _added():\n    from .data import DataError\n    return DataError\n")


def add_cycle(root): import_first_in_data(root, "from .prompts import PromptTemplate")


def add_big_cell(root):
    append_export_cell(root, "#| export\ndef added():\n" + "".join(f"    x{i} = {i}\n" for i in range(90)), "added0cell")


def add_long_line(root): append_export_cell(root, "#| export\nADDED = " + repr("x" * 130), "added1cell")


def add_long_docstring(root):
    append_to_module(root, '\n\ndef _documented():\n    """One line.\n\n    And a second paragraph."""\n')


def add_unexplained_import(root):
    append_to_module(root, "\n\ndef _late():\n    import textwrap\n    return textwrap\n")


def add_upward_import(root): import_first_in_data(root, "from .cli import main")


def test_repository_passes(copy):
    r = check(copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "code-stats check passed" in r.stdout


@pytest.mark.parametrize("violate,message", [(add_in_function_import, "new in function calm imports: prompts._added"),
                                             (add_cycle, "new cycles: data <-> "),
                                             (add_big_cell, "new export cells over 80: 10_prompts.ipynb added0cell"),
                                             (add_long_line, "new exported lines over 120: 10_prompts.ipynb added1cell"),
                                             (add_long_docstring, "new long docstrings: prompts._documented"),
                                             (add_unexplained_import, "new imports in functions without a reason: "
                                                                      "prompts: import textwrap"),
                                             (add_upward_import, "new upward imports: data (01_data.ipynb) -> cli")])
def test_new_violation_fails(copy, violate, message):
    violate(copy)
    r = check(copy)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stdout
