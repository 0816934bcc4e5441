"""The offline docs (tools/build_docs.py): pages in pipeline order, API docs from nbdev's processors, and the browser check."""
import html
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import calm.data
import calm.voting
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from build_docs import apply_quarto_options, build_docs, render_reports, report_pages  # noqa: E402
from readme import readme_notebook, render as render_readme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
CHECK = ROOT / "tools" / "check_docs.py"
pytestmark = pytest.mark.xdist_group("docs")      # one pytest-xdist worker builds each module fixture's site once


def _expected_pages():
    "Notebook pages as the docs should list them, worked out here without calm.docs: (href, title) in pipeline order."
    top = sorted(p for p in NBS.glob("*.ipynb") if p.name != "index.ipynb" and not p.name.startswith(("_", ".")))
    sub = sorted(p for p in NBS.glob("*/*.ipynb") if not any(s.startswith(("_", ".")) for s in p.relative_to(NBS).parts))
    rels = [p.relative_to(NBS) for p in top + sub]
    names = [r.with_name(re.sub(r"^\d+[a-zA-Z0-9]*_", "", r.name.lower())).with_suffix(".html").as_posix() for r in rels]
    hrefs = [r.with_suffix(".html").as_posix().lower() if names.count(n) > 1 else n for r, n in zip(rels, names)]
    titles = []
    for p in top + sub:
        first_md = next(c for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "markdown")
        titles.append(re.search(r"^#\s+(.+?)\s*$", "".join(first_md["source"]), re.M).group(1))
    return list(zip(hrefs, titles))


def _text(page_html: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page_html))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The docs built from nbs/ without execution (and with an empty reports folder) into a temporary folder."
    out = tmp_path_factory.mktemp("docs") / "_docs"
    written = build_docs(NBS, out, execute=False, reports=tmp_path_factory.mktemp("no-reports"))
    return out, written


@pytest.mark.slow
def test_index_links_every_notebook_in_pipeline_order(site):
    out, written = site
    index = (out / "index.html").read_text()
    assert written[0] == out / "index.html"
    toc = index.split('<h2 id="notebooks">', 1)[1].split("</ol>", 1)[0]
    links = [(h, html.unescape(t)) for h, t in re.findall(r'<li><a href="([^"]+)">(.*?)</a>', toc)]
    expected = _expected_pages()
    assert len(expected) >= 15
    assert links == expected
    hrefs = [h for h, _ in expected]
    assert hrefs[0] == "files.html" and "experiments/release.html" in hrefs
    assert sorted(hrefs, key=lambda h: "/" in h) == hrefs  # subfolders (the experiments) after the numbered notebooks
    for href, _ in expected: assert (out / href).is_file(), href
    assert [p["href"] for p in json.loads((out / "pages.json").read_text())["notebooks"]] == ["index.html"] + [h for h, _ in expected]


@pytest.mark.slow
def test_api_page_has_show_doc_signature_of_check_item(site):
    out, _ = site
    page = (out / "data.html").read_text()
    assert '<h3 id="check_item">' in page
    text = _text(page)
    sig = re.search(r"def check_item\((.*?)\)\s*->\s*MCItem:", text, re.S)
    assert sig, "no show_doc signature for check_item"
    assert [a.split("=")[0].split(":")[0].strip() for a in sig.group(1).split(",")] == list(inspect.signature(calm.data.check_item).parameters)
    assert inspect.getdoc(calm.data.check_item).splitlines()[0].replace("`", "") in text


@pytest.mark.slow
def test_every_exported_function_has_api_docs(site):
    out, _ = site
    for module, page in ((calm.data, "data.html"), (calm.voting, "voting.html")):
        ids = set(re.findall(r'<h3 id="([^"]+)">', (out / page).read_text()))
        defs = {n for n in module.__all__ if inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n))}
        assert defs and defs <= ids, (page, defs - ids)


@pytest.mark.slow
def test_pages_are_offline_and_hide_build_directives(site):
    out, _ = site
    for p in out.rglob("*.html"):
        page = p.read_text()
        assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//[^"]*\.(js|css)"', page), p
        assert 'href="https://calm.github.io' not in page, p  # links nbdev writes to the published site point into this build
        text = _text(page)
        assert not re.search(r"^#\|", text, re.M), p  # directives are not shown (nbdev's and Quarto's)
        assert not re.search(r"^show_doc\(", text, re.M), p  # show_doc cells show their output, not their code
    assert (out / "style.css").stat().st_size > 1000


def test_reports_render_with_links_and_figures(tmp_path):
    rep = tmp_path / "reports" / "demo"
    rep.mkdir(parents=True)
    (rep / "README.md").write_text("# Demo run\n\n| table | file |\n|---|---|\n| Table 1 | [md](table1.md), [csv](table1.csv) |\n\n![fig 3](fig3.png)\n")
    (rep / "table1.md").write_text("# Table 1\n\n| lang | acc |\n|---|---|\n| en | 0.750 |\n")
    (rep / "table1.csv").write_text("lang,acc\nen,0.75\n")
    (rep / "fig3.png").write_bytes(b"\x89PNG\r\n")
    pages = report_pages(tmp_path / "reports")
    assert [(p.href, p.title) for p in pages] == [("reports/demo/README.html", "Demo run"), ("reports/demo/table1.html", "Table 1")]
    bodies = render_reports(tmp_path / "reports", tmp_path / "site", pages)
    assert '<a href="table1.html">md</a>' in bodies["reports/demo/README.html"]
    assert '<img src="fig3.png" alt="fig 3"' in bodies["reports/demo/README.html"]
    assert "<td>0.750</td>" in bodies["reports/demo/table1.html"]
    assert sorted(p.name for p in (tmp_path / "site" / "reports" / "demo").iterdir()) == ["fig3.png", "table1.csv"]


def test_asis_show_doc_output_becomes_markdown():
    import nbformat
    out = nbformat.v4.new_output("execute_result", data={"text/markdown": "---\n\n### f\n\n```python\ndef f(x)\n```", "text/plain": "f"})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_raw_cell("---\ntitle: T\noutput-file: t.html\n---\n"),
                                         nbformat.v4.new_code_cell("#| echo: false\n#| output: asis\nshow_doc(f)", outputs=[out])])
    assert apply_quarto_options(nb) == {"title": "T", "output-file": "t.html"}
    assert [(c.cell_type, c.source) for c in nb.cells] == [("markdown", "---\n\n### f\n\n```python\ndef f(x)\n```")]


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a docs build"):
        build_docs(NBS, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_browser_check_skips_without_chromium(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "CHROMIUM": ""}
    r = subprocess.run([sys.executable, str(CHECK), "--docs", str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("SKIPPED: chromium not found"), r.stdout + r.stderr
    r = subprocess.run([sys.executable, str(CHECK), "--docs", str(tmp_path), "--require"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "FAILED: chromium not found" in r.stderr


@pytest.mark.slow
def test_browser_check_in_headless_chromium(site, tmp_path):
    sys.path.insert(0, str(CHECK.parent))
    from check_docs import find_chromium
    if find_chromium() is None: pytest.skip("chromium is not installed (Debian: apt-get install -y chromium): the browser check cannot run")
    out, _ = site
    r = subprocess.run([sys.executable, str(CHECK), "--docs", str(out), "--shots", str(tmp_path), "--require"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK:" in r.stdout and "pipeline order" in r.stdout
    from PIL import Image
    for name in ("index.png", "api.png", "figure_shot.png"):
        img = Image.open(tmp_path / name).convert("L")
        assert img.size == ((1000, 700) if name == "figure_shot.png" else (1280, 1600))
        lo, hi = img.getextrema()
        assert hi - lo > 100, f"{name} looks blank"


@pytest.fixture(scope="module")
def executed_site(tmp_path_factory):
    "Two notebooks built the default way, with their examples executed, in a small copy of the project."
    import shutil
    proj = tmp_path_factory.mktemp("proj")
    shutil.copy(ROOT / "settings.ini", proj)
    (proj / "nbs").mkdir()
    for n in ("40_voting.ipynb", "50_pairs.ipynb"): shutil.copy(NBS / n, proj / "nbs" / n)
    import nbformat
    (proj / "nbs" / "experiments").mkdir()
    (proj / "nbs" / "experiments" / ".notest").touch()                 # as in nbs/experiments: nbdev_test skips it too
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Experiment: writes a report"),
                                                    nbformat.v4.new_code_cell(f"open({str(proj / 'written')!r}, 'w').write('x')")]),
                   proj / "nbs" / "experiments" / "writer.ipynb")
    build_docs(proj / "nbs", proj / "_docs", reports=proj / "reports")
    return proj / "_docs"


@pytest.mark.slow
def test_examples_show_their_outputs(executed_site):
    voting = (executed_site / "voting.html").read_text()
    assert "[[2, 1, 1]," in _text(voting)                       # vote_counts(codes) printed, as Quarto would show it


@pytest.mark.slow
def test_experiment_notebooks_are_not_run(executed_site):
    assert (executed_site / "experiments" / "writer.html").is_file()
    assert not (executed_site.parent / "written").exists()      # a papermill template would write reports and train models


@pytest.mark.slow
def test_signatures_are_whole(executed_site):
    pairs = (executed_site / "pairs.html").read_text()
    sig = lambda name: _text(pairs.split(f'id="{name}"', 1)[1].split("</pre>", 1)[0])
    assert 'id="Translator"' not in pairs                                   # a Protocol's (*args, **kwargs) is not shown
    assert "texts" in sig("Translator.translate") and "target" in sig("Translator.translate")
    assert "*args" not in sig("IdentityTranslator")
    assert "gold" in sig("build_pairs") and sig("build_pairs").rstrip().endswith(")->pd.DataFrame:")
    assert "white-space: pre-wrap" in (executed_site / "style.css").read_text()  # long signatures wrap, not cut off


def test_adapter_readmes_are_not_report_pages(tmp_path):
    reports = tmp_path / "reports"
    (reports / "demo" / "adapters" / "CALM").mkdir(parents=True)
    (reports / "demo" / "adapters" / "CALM" / "adapter_config.json").write_text("{}")
    (reports / "demo" / "adapters" / "CALM" / "README.md").write_text("# Model Card for Model ID\n<!-- x -->")
    (reports / "demo" / "README.md").write_text("# Demo\n")
    assert [p.src for p in report_pages(reports)] == ["reports/demo/README.md"]


def test_front_page_lists_every_notebook_in_pipeline_order():
    "index.ipynb: one table row per notebook, numbered notebooks by number, then the experiments in the order calm reproduce knows them."
    from calm.profile import NOTEBOOKS
    text = "".join("".join(c["source"]) for c in json.loads((NBS / "index.ipynb").read_text())["cells"] if c["cell_type"] == "markdown")
    listed = re.findall(r"^\|[^|]+\| `([^`]+)` \|", text, re.M)
    numbered = sorted(p.stem for p in NBS.glob("*.ipynb") if p.name != "index.ipynb" and not p.name.startswith(("_", ".")))
    experiments = [f"experiments/{n}" for n in NOTEBOOKS]
    assert sorted(p.stem for p in (NBS / "experiments").glob("*.ipynb")) == sorted(NOTEBOOKS)
    assert listed == numbered + experiments


def test_nbdev_readme_renders_the_front_page():
    "settings.ini's readme_nb is the front page, index.ipynb: nbdev_readme (where Quarto exists) and tools/readme.py render it."
    from nbdev.config import get_config
    from nbdev.quarto import _doc_mtime_not_older
    cfg = get_config(path=ROOT)
    assert cfg.readme_nb == "index.ipynb" and (NBS / cfg.readme_nb).is_file()
    assert not _doc_mtime_not_older(ROOT / "missing-README.md", NBS / cfg.readme_nb)   # nbdev finds it, so it would render it
    assert readme_notebook(ROOT) == NBS / cfg.readme_nb
    assert (ROOT / "README.md").read_text(encoding="utf-8") == render_readme(json.loads((NBS / cfg.readme_nb).read_text()))
