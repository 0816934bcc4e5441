"""Build the offline docs: the notebooks (API docs included, examples executed) and the reports as static HTML, without Quarto.

    python tools/build_docs.py [--out _docs] [--no-execute] [--reports reports] [--workers N]

`make docs` runs it where Quarto is absent (with Quarto, `nbdev_docs` builds the Quarto site). Examples are
executed while building, as Quarto does (cells flagged with the project's `tst_flags`, e.g. `slow`, are not
run); `--no-execute` renders the notebooks as stored. `tools/check_docs.py` checks the result in headless
Chromium. The builder lives here, not in the `calm` package: it is a development tool, not shipped in the wheel.
"""

from __future__ import annotations

import html
import json
import multiprocessing
import os
import posixpath
import re
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import sys

from fastcore.xtras import working_directory

ROOT = Path(__file__).resolve().parents[1]


def project_root(nbs="nbs") -> Path:
    "The folder at or above `nbs` that holds nbdev's `settings.ini`."
    nbs = Path(nbs).resolve()
    for d in (nbs, *nbs.parents):
        if (d / "settings.ini").exists(): return d
    raise FileNotFoundError(f"no settings.ini in {nbs} or above: not an nbdev project")

@dataclass(frozen=True)
class Page:
    "One page of the site: its source (relative to `nbs` or the project), title, summary and HTML file (relative to the site)."
    src: str
    title: str
    summary: str
    href: str

def _cell_text(source) -> str: return "".join(source) if isinstance(source, list) else (source or "")

def notebook_title(path) -> tuple[str, str]:
    "Title and one-line summary from the first Markdown cell of the notebook at `path` (`# Title`, `> summary`)."
    from nbdev.frontmatter import _md2dict
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    first_md = next((c for c in cells if c["cell_type"] == "markdown"), None)
    fm = _md2dict(_cell_text(first_md["source"])) if first_md else {}
    return fm.get("title", Path(path).stem), fm.get("description", "")

def pipeline_key(rel: str) -> tuple:
    "Sort key of a notebook path relative to `nbs`: `index.ipynb` first, then top-level notebooks by name, then subfolders."
    parts = Path(rel).parts
    return (rel != "index.ipynb", len(parts) > 1, parts)

def docs_pages(nbs="nbs") -> list[Page]:
    "A `Page` for every notebook nbdev documents under `nbs`, in pipeline order; fails if two would share a file."
    from nbdev.doclinks import _nbpath2html, nbglob
    nbs = Path(nbs).resolve()
    with working_directory(project_root(nbs)):
        rels = sorted((p.relative_to(nbs).as_posix() for p in nbglob(nbs, func=Path)), key=pipeline_key)
    hrefs = [_nbpath2html(Path(rel)).as_posix() for rel in rels]
    clash = sorted({h for h in hrefs if hrefs.count(h) > 1})
    if clash:
        warnings.warn(f"nbdev names several notebooks {clash} (Quarto would write one over the other); they keep their numbers here")
        hrefs = [Path(rel).with_suffix(".html").as_posix().lower() if h in clash else h for rel, h in zip(rels, hrefs)]
    return [Page(rel, *notebook_title(nbs / rel), href) for rel, href in zip(rels, hrefs)]

from nbdev.processors import FilterDefaults, exec_show_docs

_doc_dirs = {"export", "exports", "exporti", "exec_doc"}

def mixes_imports(cell) -> bool:
    "Whether the code cell `cell` (of an nbdev `NBProcessor`) imports something and also does other things, outside exported cells."
    if cell.cell_type != "code" or _doc_dirs & set(getattr(cell, "directives_", {}) or {}): return False
    import ast
    trees = cell.parsed_() or []
    is_import = [isinstance(t, (ast.Import, ast.ImportFrom)) for t in trees]
    return any(is_import) and not all(is_import)

class exec_show_docs_only(exec_show_docs):
    "nbdev's `exec_show_docs`, except that cells mixing imports with other code (examples, tests) are not run."
    def __call__(self, cell):
        if not mixes_imports(cell): super().__call__(cell)

class DocsFilter(FilterDefaults):
    "nbdev's docs processors (`FilterDefaults`) with `exec_show_docs_only` in place of `exec_show_docs`."
    def base_procs(self): return [exec_show_docs_only if p is exec_show_docs else p for p in super().base_procs()]

def _execute_notebook(src: Path, dest: Path, skip_flags) -> Path:
    "Run the notebook `src` in its folder (cells flagged with any of `skip_flags` are not run) and save it with outputs to `dest`."
    from execnb.nbio import write_nb
    from execnb.shell import CaptureShell
    from nbdev.process import NBProcessor
    nb = NBProcessor(src, rm_directives=False).nb
    def skip(cell):
        if cell.cell_type != "code": return True
        d = getattr(cell, "directives_", {}) or {}
        return d.get("eval:", [""])[0].lower() == "false" or bool(set(skip_flags) & d.keys())
    shell = CaptureShell(src)
    with working_directory(src.parent):
        try: shell.run_all(nb, exc_stop=True, preproc=skip)
        except Exception as e: raise RuntimeError(shell.prettytb(fname=src)) from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dest)
    return dest

def _process_notebook(job: tuple) -> str | None:
    "Worker: nbdev's docs processors on one notebook `(src, dst, execute, skip_flags)`; returns an error message or None."
    src, dst, execute, skip_flags = Path(job[0]), Path(job[1]), job[2], job[3]
    import nbdev.serve_drv
    warnings.filterwarnings("ignore", message="Found cells containing imports")
    try:
        with working_directory(src.parent):
            if execute: src = _execute_notebook(src, dst.parent / "_executed" / src.name, skip_flags)
            dst.parent.mkdir(parents=True, exist_ok=True)
            nbdev.serve_drv.main((src, dst, DocsFilter))
    except Exception as e:
        cause = f"\n{e.__cause__}" if e.__cause__ else ""
        return f"{job[0]}: {type(e).__name__}: {e}{cause}"
    return None

def process_notebooks(pages: list[Page], nbs, dest, execute: bool = False, n_workers: int | None = None) -> list[Path]:
    "Run nbdev's docs processors (as `nbdev_proc_nbs` does) on each page's notebook in `nbs`; the processed copies go to `dest`."
    from nbdev.config import get_config
    nbs, dest = Path(nbs).resolve(), Path(dest).resolve()
    with working_directory(project_root(nbs)): skip_flags = get_config().get("tst_flags", "").split()
    # folders with a `.notest` file are skipped by nbdev_test, and not executed here either: nbs/experiments/ holds
    # papermill templates whose runs write reports and train models (`calm reproduce` runs them); the docs show them as stored
    notest = lambda src: any((d / ".notest").exists() for d in (nbs / src).parents if d == nbs or nbs in d.parents)
    jobs = [(str(nbs / p.src), str(dest / p.src), execute and not notest(p.src), skip_flags) for p in pages]
    if not jobs: return []
    n = max(1, min(n_workers or 4, os.cpu_count() or 1, len(jobs)))
    from build_docs import _process_notebook as worker  # by module, so spawned workers can import it
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
        errors = [e for e in pool.map(worker, jobs) if e]
    if errors: raise RuntimeError("nbdev's processors failed on:\n" + "\n\n".join(errors))
    return [dest / p.src for p in pages]

def read_processed(path):
    "The processed notebook at `path` as an nbformat notebook, without the marks nbdev leaves on cells (`has_sd`)."
    import nbformat
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    for c in d["cells"]: c.pop("has_sd", None)
    return nbformat.reads(json.dumps(d), as_version=4)

_quarto_option = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")

def quarto_options(source: str) -> tuple[dict, str]:
    "Split the leading `#| key: value` lines (Quarto cell options) of a code cell from its code."
    lines, opts, i = source.splitlines(True), {}, 0
    while i < len(lines) and lines[i].startswith("#|"):
        m = _quarto_option.match(lines[i].rstrip("\n"))
        if m: opts[m.group(1)] = m.group(2).strip("'\"")
        i += 1
    return opts, "".join(lines[i:])

def apply_quarto_options(nb) -> dict:
    "Do to the nbformat notebook `nb` what Quarto does: take out the front matter (returned), honour `include`, `echo` and `output`."
    import nbformat
    from nbdev.frontmatter import _fm2dict
    front, cells = {}, []
    for cell in nb.cells:
        if cell.cell_type == "raw" and not front and _fm2dict(cell.source):
            front = _fm2dict(cell.source); continue
        if cell.cell_type != "code": cells.append(cell); continue
        opts, code = quarto_options(cell.source)
        if opts.get("include") == "false": continue
        show_code = opts.get("echo") != "false" and code.strip() != ""
        if opts.get("output") == "false": cell.outputs = []
        if opts.get("output") == "asis":
            md = "\n\n".join(_cell_text(o.get("data", {}).get("text/markdown", "")) for o in cell.outputs)
            if show_code: cells.append(nbformat.v4.new_code_cell(code))
            if md.strip(): cells.append(nbformat.v4.new_markdown_cell(md))
            continue
        if not show_code and not cell.outputs: continue
        cell.source = code if show_code else ""
        if not show_code: cell.metadata.setdefault("tags", []).append("remove-input")
        cells.append(cell)
    nb.cells = cells
    return front

def notebook_body(nb) -> str:
    "HTML of the cells of the plain nbformat notebook `nb` (nbconvert's `basic` template: no prompts, no scripts)."
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {"remove-input"}
    exporter = HTMLExporter(config=c, template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    return exporter.from_notebook_node(nb)[0]

def relink(body: str, href: str, targets: dict, site_url: str = "") -> str:
    "Rewrite `href`s in the HTML `body` of the page at `href`: `site_url` links and links to the sources in `targets` (`{src: page href}`) become relative."
    up = "../" * href.count("/")
    here = posixpath.dirname(href)
    def fix(m):
        url = html.unescape(m.group(1))
        path, hash_, frag = url.partition("#")
        if site_url and url.startswith(site_url.rstrip("/") + "/"): new = up + url[len(site_url.rstrip("/")) + 1:]
        elif not re.match(r"^[a-zA-Z][\w+.-]*:|^/", path) and path in targets: new = up + targets[path] + hash_ + frag
        elif not re.match(r"^[a-zA-Z][\w+.-]*:|^/", path) and posixpath.normpath(posixpath.join(here, path)) in targets:
            new = up + targets[posixpath.normpath(posixpath.join(here, path))] + hash_ + frag
        else: return m.group(0)
        return f'href="{html.escape(new)}"'
    return re.sub(r'href="([^"]*)"', fix, body)

_page_template = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {site}</title>
<link rel="stylesheet" href="{up}style.css">
</head>
<body>
<nav class="sidebar">
<a class="site" href="{up}index.html">{site}</a>
{nav}
</nav>
<main>
<header class="page-header">
<h1 class="title">{title_html}</h1>
{summary}
</header>
{body}
<footer>Source: <code>{src}</code>. Rendered offline by <code>tools/build_docs.py</code> (nbdev processors + nbconvert, examples executed).</footer>
</main>
</body>
</html>
"""

_style = """
body { margin: 0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #212529; display: flex; }
.sidebar { width: 260px; flex: none; min-height: 100vh; box-sizing: border-box; padding: 1.2rem 1rem; background: #f5f6f8;
  border-right: 1px solid #dee2e6; font-size: 0.92rem; }
.sidebar a { color: #2c3e50; text-decoration: none; } .sidebar a:hover { text-decoration: underline; }
.sidebar .site { display: block; font-size: 1.3rem; font-weight: 700; margin-bottom: 1rem; }
.sidebar h2 { font-size: 0.8rem; text-transform: uppercase; letter-spacing: .05em; color: #6c757d; margin: 1.2rem 0 .4rem; }
.sidebar ol { list-style: none; padding: 0; margin: 0; } .sidebar li { margin: .25rem 0; overflow-wrap: anywhere; }
.sidebar li.current > a { font-weight: 700; color: #0d6efd; }
main { flex: 1; min-width: 0; max-width: 980px; padding: 1.5rem 2.5rem 3rem; }
h1.title { font-size: 2.2rem; margin: .2rem 0 .3rem; } .summary { font-size: 1.15rem; color: #555; margin-top: 0; }
h2 { border-bottom: 1px solid #dee2e6; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 1.2rem; margin-top: .6rem; }
a.anchor-link { visibility: hidden; margin-left: .3em; text-decoration: none; color: #adb5bd; }
h1:hover a.anchor-link, h2:hover a.anchor-link, h3:hover a.anchor-link { visibility: visible; }
hr { border: 0; border-top: 1px solid #dee2e6; margin: 2rem 0 .5rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; background: #f1f3f5; padding: .05em .25em; border-radius: 3px; }
pre code { background: none; padding: 0; }
.highlight, pre { background: #f8f9fa; border: 1px solid #e9ecef; border-radius: 4px; padding: .6rem .8rem; overflow-x: auto; font-size: .88rem; line-height: 1.4; }
.highlight pre { border: 0; padding: 0; margin: 0; background: none; white-space: pre-wrap; overflow-wrap: anywhere; }
.jp-Cell, .cell { margin: .6rem 0; }
.output_area pre, .jp-OutputArea-output pre { background: #fff; border-color: #f1f3f5; }
.output_stderr pre { background: #fff5f5; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #dee2e6; padding: .3rem .6rem; text-align: left; }
th { background: #f1f3f5; }
img { max-width: 100%; }
ol.toc li { margin: .35rem 0; } ol.toc .src { color: #6c757d; font-size: .85em; }
footer { margin-top: 3rem; color: #6c757d; font-size: .85rem; border-top: 1px solid #dee2e6; padding-top: .6rem; }
"""

def site_style() -> str:
    "The site's one stylesheet: page layout plus Pygments' colours for highlighted code."
    from pygments.formatters import HtmlFormatter
    return _style + HtmlFormatter(style="default").get_style_defs(".highlight")

def _nav(pages: list[Page], current: str, up: str, heading: str) -> str:
    items = "".join(f'<li class="{"current" if p.href == current else ""}"><a href="{up}{html.escape(p.href)}">{html.escape(_plain(p.title))}</a></li>'
                    for p in pages)
    return f"<h2>{heading}</h2><ol>{items}</ol>" if pages else ""

def page_html(page: Page, body: str, site: str, nbs_pages: list[Page], report_pages: list[Page] = ()) -> str:
    "A whole HTML page for `page`: title, summary, `body`, and a sidebar linking every notebook page and report page."
    up = "../" * page.href.count("/")
    nav = _nav([p for p in nbs_pages if p.href != "index.html"], page.href, up, "Notebooks") + _nav(list(report_pages), page.href, up, "Reports")
    summary = f'<p class="summary">{_inline_md(page.summary)}</p>' if page.summary else ""
    return _page_template.format(title=html.escape(_plain(page.title)), title_html=_inline_md(page.title), site=html.escape(site), up=up,
                                 nav=nav, summary=summary, body=body, src=html.escape(page.src))

def _plain(title: str) -> str:
    "A Markdown title as plain text (for the window title and the sidebar): code spans without their backticks."
    return re.sub(r"`([^`]*)`", r"\1", title)

def _inline_md(text: str) -> str:
    from markdown_it import MarkdownIt
    return MarkdownIt("commonmark", {"html": False}).renderInline(text)

def markdown_html(text: str) -> str:
    "CommonMark plus tables and strikethrough (markdown-it-py) as HTML; raw HTML in the text is escaped."
    from markdown_it import MarkdownIt
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"]).render(text)

def _md_title(text: str, fallback: str) -> str:
    m = re.search(r"^#\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
    return m.group(1) if m else fallback

def report_pages(reports) -> list[Page]:
    "A `Page` for every Markdown file under `reports` (skipping hidden and `_` folders): `README.md` files first, then by path."
    reports = Path(reports)
    if not reports.is_dir(): return []
    adapters = {p.parent for p in reports.rglob("adapter_config.json")}          # PEFT adapter folders: their model cards are not reports
    files = [p for p in reports.rglob("*.md") if not any(s.startswith((".", "_")) for s in p.relative_to(reports).parts)
             and not any(a == p.parent or a in p.parents for a in adapters)]
    files.sort(key=lambda p: (p.name != "README.md", p.relative_to(reports).as_posix()))
    base = reports.name
    srcs = [f"{base}/{p.relative_to(reports).as_posix()}" for p in files]
    return [Page(src, _md_title(p.read_text(encoding="utf-8"), src), "", posixpath.splitext(src)[0] + ".html") for src, p in zip(srcs, files)]

def render_reports(reports, out, pages: list[Page]) -> dict:
    "HTML bodies `{href: html}` of the report `pages` (from `report_pages(reports)`); files they link to are copied under `out`."
    reports, out = Path(reports).resolve(), Path(out)
    bodies = {}
    for page in pages:
        md_file = reports.parent / page.src
        text = md_file.read_text(encoding="utf-8")
        m = re.match(r"\s*#\s+(.+?)\s*#*\s*(\n|$)", text)
        if m and m.group(1) == page.title: text = text[m.end():]  # the page header shows the title already
        body = markdown_html(text)
        def fix(m, md_file=md_file):
            attr, url = m.group(1), html.unescape(m.group(2))
            path, hash_, frag = url.partition("#")
            if not path or re.match(r"^[a-zA-Z][\w+.-]*:|^/", path): return m.group(0)
            target = (md_file.parent / path).resolve()
            if not target.is_file() or not target.is_relative_to(reports): return m.group(0)
            if target.suffix == ".md": path = posixpath.splitext(path)[0] + ".html"
            else:
                dest = out / reports.name / target.relative_to(reports)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target, dest)
            return f'{attr}="{html.escape(path + hash_ + frag)}"'
        bodies[page.href] = re.sub(r'(href|src)="([^"]*)"', fix, body)
    return bodies

_marker = ".calm-docs"

def _clear_out(out: Path):
    "Empty `out` if it is missing, empty, or a docs build (ours or Quarto's); refuse anything else."
    if out.exists() and any(out.iterdir()):
        if not ((out / _marker).exists() or (out / "site_libs").is_dir()):
            raise FileExistsError(f"{out} exists and is not a docs build (no {_marker}): remove it or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _marker).write_text("made by tools/build_docs.py; the folder is replaced on each build\n")

def _toc(pages: list[Page], up: str = "") -> str:
    items = "".join(f'<li><a href="{up}{html.escape(p.href)}">{html.escape(_plain(p.title))}</a>'
                    f'{" – " + _inline_md(p.summary) if p.summary else ""} <span class="src">{html.escape(p.src)}</span></li>' for p in pages)
    return f'<ol class="toc">{items}</ol>'

def build_docs(nbs="nbs", out="_docs", execute: bool = True, reports=None, n_workers: int | None = None) -> list[Path]:
    "Render the notebooks in `nbs` (API docs included) and the Markdown under `reports` (default: the project's `reports/`) to static HTML in `out`; returns the pages written, index first."
    from nbdev.config import get_config
    nbs, out = Path(nbs).resolve(), Path(out).resolve()
    root = project_root(nbs)
    with working_directory(root): cfg = get_config()
    site = cfg.get("title", cfg.get("lib_name", "docs"))
    site_url = cfg.get("doc_host", "").rstrip("/") + "/" + cfg.get("doc_baseurl", "").strip("/")
    reports = Path(reports) if reports is not None else root / "reports"
    _clear_out(out)
    pages = docs_pages(nbs)
    rep_pages = report_pages(reports)
    targets = {p.src: p.href for p in pages}
    written = {}
    with tempfile.TemporaryDirectory(prefix="calm-docs-") as tmp:
        for page, processed in zip(pages, process_notebooks(pages, nbs, tmp, execute=execute, n_workers=n_workers)):
            nb = read_processed(processed)
            apply_quarto_options(nb)
            body = relink(notebook_body(nb), page.href, targets, site_url)
            if page.href == "index.html":
                body += f'<h2 id="notebooks">Notebooks</h2>{_toc([p for p in pages if p.href != "index.html"])}'
                if rep_pages: body += f'<h2 id="reports">Reports</h2>{_toc(rep_pages)}'
            written[page.href] = page_html(page, body, site, pages, rep_pages)
    if "index.html" not in written:
        home = Page("settings.ini", site, cfg.get("description", ""), "index.html")
        body = f'<h2 id="notebooks">Notebooks</h2>{_toc(pages)}' + (f'<h2 id="reports">Reports</h2>{_toc(rep_pages)}' if rep_pages else "")
        written = {"index.html": page_html(home, body, site, pages, rep_pages), **written}
    for page in rep_pages:
        body = render_reports(reports, out, [page])[page.href]
        written[page.href] = page_html(page, body, site, pages, rep_pages)
    paths = []
    for href, text in written.items():
        p = out / href
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    (out / "style.css").write_text(site_style(), encoding="utf-8")
    (out / "pages.json").write_text(json.dumps({"site": site, "notebooks": [asdict(p) for p in pages],
                                                "reports": [asdict(p) for p in rep_pages]}, indent=1, ensure_ascii=False), encoding="utf-8")
    return paths


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description="Render the notebooks (API docs included, examples executed) and the reports to static HTML, without Quarto.")
    p.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="the notebooks folder (default: nbs)")
    p.add_argument("--out", type=Path, default=ROOT / "_docs", help="output folder, replaced on each build (default: _docs)")
    p.add_argument("--reports", type=Path, default=None, help="Markdown reports to render (default: the project's reports/)")
    p.add_argument("--no-execute", dest="execute", action="store_false",
                   help="render the notebooks as stored, without running their examples (faster; outputs are then missing)")
    p.add_argument("--workers", type=int, default=None, help="notebooks processed at once (default: up to 4)")
    a = p.parse_args(argv)
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))     # the project's calm, for show_doc and the examples
    written = build_docs(a.nbs, a.out, execute=a.execute, reports=a.reports, n_workers=a.workers)
    print(f"docs: {len(written)} pages in {a.out}; open {written[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
