"README.md is the front page notebook rendered by tools/readme.py, and fits on a screen or two."
import importlib.util, json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "readme.py"


def _readme_module():
    spec = importlib.util.spec_from_file_location("readme_tool", SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_readme_is_the_rendered_front_page():
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines: move the long sections into the notebooks they describe"
    assert _readme_module().readme_notebook(ROOT) == ROOT / "nbs" / "index.ipynb"


def test_readme_keeps_the_front_page_sections():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for heading in ("## Two commands", "## Does CALM work here?", "## Where everything else is"):
        assert heading in text, heading
    assert "make demo" in text and "make test" in text and "calm demo --profile testbed_demo --out reports/testbed_demo" in text


def test_render_hides_hidden_cells_strips_directives_and_drops_outputs():
    cells = [
        {"cell_type": "markdown", "source": ["# calm\n", "\n", "> What it is."]},
        {"cell_type": "code", "source": ["#| hide\n", "import secret"], "outputs": []},
        {"cell_type": "code", "source": ["#| export\n", "def f(): pass"], "outputs": []},
        {"cell_type": "code", "source": ["# | include: false\n", "x = 1"], "outputs": []},
        {"cell_type": "code", "source": ["#| eval: false\n", "print(1)"],
         "outputs": [{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]},
        {"cell_type": "markdown", "source": "## Next\n\nText.\n"},
    ]
    mod = _readme_module()
    out = mod.render({"cells": cells})
    assert out == f"# calm\n\n{mod.WARNING}\n\n> What it is.\n\n```python\nprint(1)\n```\n\n## Next\n\nText.\n"


def test_check_fails_with_a_diff_when_readme_is_out_of_step(tmp_path):
    nb = tmp_path / "index.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["# t\n", "\n", "Body."]}]}))
    out = tmp_path / "README.md"
    assert subprocess.run([sys.executable, str(SCRIPT), "--nb", str(nb), "--out", str(out)]).returncode == 0
    ok = subprocess.run([sys.executable, str(SCRIPT), "--check", "--nb", str(nb), "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0
    out.write_text(out.read_text() + "a hand edit\n")
    bad = subprocess.run([sys.executable, str(SCRIPT), "--check", "--nb", str(nb), "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and "-a hand edit" in bad.stdout and "make readme" in bad.stderr
