"""Check the offline docs in a real browser: headless Chromium loads the index and API pages from a local server.

    python tools/check_docs.py [--docs _docs] [--build] [--shots reports/docs] [--require]

Serves the built site (`make docs` / tools/build_docs.py, or `--build` to build it first) on 127.0.0.1 at a free port,
has headless Chromium (Debian's `chromium` package) dump each page's DOM after loading, and checks
that the index links every notebook page in order (from `pages.json`) and that the API pages show
the expected headings and function names. Saves screenshots of the index and the first API page
(`index.png`, `api.png`), and of a figure drawn with `calm.figures` (`figure_shot.png`), whose system
colours must show. Without Chromium it prints `SKIPPED: ...` and exits 0, unless `--require`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]
# API pages and the names each must show as headings: one from the middle of the pipeline (the first: api.png) and the
# first two.
DEFAULT_API = {"voting.html": ["majority_vote", "vote_counts", "encode_letters", "VoteResult"],
               "data.html": ["check_item", "MCItem", "read_items"],
               "files.html": ["DataError", "package_versions"]}


def find_chromium() -> str | None:
    "Path of a Chromium binary: $CHROMIUM, else `chromium` or `chromium-browser` on PATH."
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name): return shutil.which(name)
    return None


class DomSummary(HTMLParser):
    "Headings (tag, id, text), links (href, text) and all text of an HTML document."
    def __init__(self):
        super().__init__()
        self.headings, self.links, self.text, self._open = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h1", "h2", "h3", "h4", "a"): self._open.append([tag, a, []])

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                t, a, parts = self._open.pop(i)
                text = "".join(parts).replace("¶", "").strip()
                if t == "a": self.links.append((a.get("href", ""), text))
                else: self.headings.append((t, a.get("id", ""), text))
                break

    def handle_data(self, data):
        self.text.append(data)
        for o in self._open: o[2].append(data)


def summarize(dom: str) -> DomSummary:
    s = DomSummary(); s.feed(dom); s.close()
    return s


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    "Serve `folder` on 127.0.0.1 at a free port in a background thread; returns the server and its base URL."
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def chromium(binary: str, profile: str, *args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


def dump_dom(binary: str, profile: str, url: str) -> str:
    "The DOM of `url` after Chromium has loaded it."
    r = chromium(binary, profile, "--dump-dom", url)
    if r.returncode != 0 or "<html" not in r.stdout:
        raise RuntimeError(f"chromium --dump-dom {url} failed (exit {r.returncode}): {r.stderr[-800:]}")
    return r.stdout


def screenshot(binary: str, profile: str, url: str, path: Path) -> Path:
    "A 1280x1600 PNG of `url` at `path`."
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists(): path.unlink()
    r = chromium(binary, profile, f"--screenshot={path.resolve()}", "--window-size=1280,1600", url)
    if not path.exists() or path.stat().st_size < 5000:
        raise RuntimeError(f"chromium --screenshot {url} wrote no image (exit {r.returncode}): {r.stderr[-800:]}")
    return path


def check_site(docs: Path, shots: Path, binary: str, api: dict[str, list[str]]) -> list[str]:
    "Load the index and the `api` pages of the site in `docs` in Chromium; returns the problems found (empty: all good)."
    manifest = json.loads((docs / "pages.json").read_text(encoding="utf-8"))
    notebook_pages = [p for p in manifest["notebooks"] if p["href"] != "index.html"]
    problems = []
    server, base = serve(docs)
    try:
        with tempfile.TemporaryDirectory(prefix="calm-chromium-") as profile:
            index = summarize(dump_dom(binary, profile, base + "index.html"))
            h1 = [t for tag, _, t in index.headings if tag == "h1"]
            if not h1 or h1[0] != manifest["site"]: problems.append(f"index: first h1 is {h1[:1]}, expected {manifest['site']!r}")
            if "Notebooks" not in [t for tag, _, t in index.headings if tag == "h2"]: problems.append("index: no 'Notebooks' heading")
            wanted = [(p["href"], p["title"]) for p in notebook_pages]
            toc = [(h, t) for h, t in index.links if (h, t) in set(wanted)]
            # the sidebar links every page too; the list in the page body comes after it
            if toc[-len(wanted):] != wanted: problems.append(f"index: notebook links {toc[-len(wanted):]} are not {wanted}")
            print(f"index.html: h1 {h1[:1]}, {len(wanted)} notebook pages linked in pipeline order" if not problems else "index.html: problems")
            screenshot(binary, profile, base + "index.html", shots / "index.png")
            for n, (page, names) in enumerate(api.items()):
                dom = summarize(dump_dom(binary, profile, base + page))
                ids = {i for _, i, _ in dom.headings}
                texts = {t for _, _, t in dom.headings}
                missing = [nm for nm in names if nm not in ids or nm not in texts]
                if missing: problems.append(f"{page}: no heading for {missing}")
                body = "".join(dom.text)
                sigs = [nm for nm in names if not re.search(rf"\b(def|class)\s+{re.escape(nm)}\b", body)]
                if sigs: problems.append(f"{page}: no signature shown for {sigs}")
                print(f"{page}: headings {[nm for nm in names if nm not in missing]} with signatures, title {[t for g, _, t in dom.headings if g == 'h1'][:1]}")
                if n == 0: screenshot(binary, profile, base + page, shots / "api.png")
    finally:
        server.shutdown(); server.server_close()
    return problems


def check_figure(binary: str, profile: str, shots: Path) -> list[str]:
    "Draw a figure with calm.figures (base, SFT, CALM bars), screenshot it in Chromium, and check the palette's colours show."
    sys.path.insert(0, str(ROOT))
    import pandas as pd
    from PIL import Image
    from calm.figures import SYSTEM_COLORS, accuracy_bars
    shots.mkdir(parents=True, exist_ok=True)
    t = pd.DataFrame({"system": ["base", "SFT", "CALM"], "en": [0.0, 40.0, 60.0], "zh": [20.0, 30.0, 50.0], "ACC_avg": [10.0, 35.0, 55.0]})
    accuracy_bars(t, ["en", "zh"], n=30, k=5, title="tools/check_docs.py: the figure style", path_stem=shots / "figure")
    page = shots / "figure.html"
    page.write_text('<!doctype html><html><body style="margin:0;background:#fff"><img src="figure.png" style="width:1000px"></body></html>')
    shot = shots / "figure_shot.png"
    if shot.exists(): shot.unlink()
    chromium(binary, profile, f"--screenshot={shot.resolve()}", "--window-size=1000,700", page.resolve().as_uri())
    if not shot.exists(): return ["figure: chromium wrote no screenshot"]
    img = Image.open(shot).convert("RGB")
    px = list(img.getdata()) if not hasattr(img, "get_flattened_data") else list(img.get_flattened_data())
    problems = []
    for system in ("base", "SFT", "CALM"):
        want = tuple(int(SYSTEM_COLORS[system][i:i + 2], 16) for i in (1, 3, 5))
        n = sum(1 for p in px if sum(abs(a - b) for a, b in zip(p, want)) < 30)
        print(f"figure: {n} pixels of {system}'s colour {SYSTEM_COLORS[system]}")
        if n < 500: problems.append(f"figure: {system}'s colour {SYSTEM_COLORS[system]} hardly shows ({n} pixels)")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Check the offline docs in headless Chromium and save screenshots.")
    p.add_argument("--docs", type=Path, default=ROOT / "_docs", help="the built site (default: _docs)")
    p.add_argument("--build", action="store_true", help="build the site first with tools/build_docs.py (examples executed)")
    p.add_argument("--shots", type=Path, default=ROOT / "reports" / "docs", help="folder for index.png and api.png (default: reports/docs)")
    p.add_argument("--page", action="append", metavar="PAGE:NAME,NAME",
                   help="an API page and the names it must show, e.g. voting.html:majority_vote,vote_counts (repeatable; "
                        "default: voting.html, data.html and files.html with their main definitions)")
    p.add_argument("--require", action="store_true", help="fail (exit 1) instead of skipping when Chromium is not installed")
    a = p.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        msg = "chromium not found (install Debian's package: apt-get install -y chromium, or set $CHROMIUM)"
        if a.require: print(f"FAILED: {msg}", file=sys.stderr); return 1
        print(f"SKIPPED: {msg}"); return 0
    if a.build:
        sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]
        from build_docs import build_docs
        build_docs(ROOT / "nbs", a.docs)
    if not (a.docs / "pages.json").exists():
        print(f"FAILED: no built site in {a.docs} (run `make docs` or pass --build)", file=sys.stderr); return 1
    api = dict((s.split(":", 1)[0], s.split(":", 1)[1].split(",")) for s in a.page) if a.page else DEFAULT_API
    problems = check_site(a.docs, a.shots, binary, api)
    with tempfile.TemporaryDirectory(prefix="calm-chromium-") as profile: problems += check_figure(binary, profile, a.shots)
    for pr in problems: print(f"FAILED: {pr}", file=sys.stderr)
    if problems: return 1
    print(f"OK: {len(api)} API pages and the index checked in {subprocess.run([binary, '--version'], capture_output=True, text=True).stdout.strip()}; "
          f"screenshots {a.shots / 'index.png'}, {a.shots / 'api.png'}, {a.shots / 'figure_shot.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
