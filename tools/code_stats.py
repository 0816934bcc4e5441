"""Counts that say how easy the code is to read: layering of calm's own imports, export cell sizes, long lines.

    python tools/code_stats.py                   # print the counts
    python tools/code_stats.py --json            # the same as JSON
    python tools/code_stats.py --check           # fail on a violation not listed in tools/code_stats_baseline.json
    python tools/code_stats.py --write-baseline  # list today's violations (refuses to add new ones without --force)

Read from calm/*.py (with `ast`) and the notebooks' export cells. Notebook order (the file names under nbs/, sorted) is
the dependency order: a module importing one exported by a later notebook is an *upward* import. An import inside a
function hides the real module graph, so a new in-function import of a calm module fails `--check`, as do a new import
cycle between calm modules (module-level imports only: those run at import time), a new upward import, a new export
cell over 80 lines, a new exported line over 120 characters, a new docstring of more than one line (or over 120
characters) and a new import inside a function without a comment saying why it is there. The baseline lists the ones
that exist already, so it can only shrink.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections import Counter
from pathlib import Path

MAX_CELL_LINES = 80
MAX_LINE_CHARS = 120
BASELINE = Path("tools/code_stats_baseline.json")
_DIRECTIVE = re.compile(r"^\s*#\|\s*(\w+)")
_SOURCE_NB = re.compile(r"File to edit: \.\./nbs/(\S+?\.ipynb)")


def module_notebooks(root: Path) -> dict[str, str]:
    "Each calm module's name -> the notebook that exports it (from the header nbdev writes)."
    out = {}
    for py in sorted((root / "calm").glob("*.py")):
        m = _SOURCE_NB.search(py.read_text()[:2000])
        if m:
            out[py.stem] = m.group(1)
    return out


def _calm_targets(node: ast.AST, package_modules: set[str]) -> list[str]:
    "The calm modules an import statement names (`from .x import`, `from . import x`, `import calm.x`)."
    names = []
    if isinstance(node, ast.ImportFrom):
        if node.level == 1 and node.module:
            names.append(node.module.split(".")[0])
        elif node.level == 1:
            names += [a.name for a in node.names]
        elif node.level == 0 and node.module and node.module.split(".")[0] == "calm":
            parts = node.module.split(".")
            names += [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
    elif isinstance(node, ast.Import):
        for a in node.names:
            parts = a.name.split(".")
            if parts[0] == "calm" and len(parts) > 1:
                names.append(parts[1])
    return [n for n in dict.fromkeys(names) if n in package_modules]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return ((isinstance(t, ast.Name) and t.id == "TYPE_CHECKING")
            or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"))


def module_imports(path: Path, package_modules: set[str]) -> dict:
    "The imports of one module: module-level calm imports, in-function imports (all, and calm's with their function)."
    tree = ast.parse(path.read_text())
    top, in_function, in_function_all = [], [], 0

    def walk(node, scope, in_func, type_only):
        nonlocal in_function_all
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = _calm_targets(child, package_modules)
                if in_func:
                    in_function_all += 1
                    in_function.extend((".".join(scope), t) for t in targets)
                elif not type_only:
                    top.extend(targets)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, scope + [getattr(child, "name", "<lambda>")], True, type_only)
            elif isinstance(child, ast.ClassDef):  # a class body runs when its scope does; its methods are functions
                walk(child, scope + [child.name], in_func, type_only)
            else:
                walk(child, scope, in_func, type_only or (isinstance(child, ast.If) and _is_type_checking(child)))

    walk(tree, [], False, False)
    return {"top": sorted(set(top) - {path.stem}), "in_function": in_function, "in_function_all": in_function_all}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    "Tarjan's strongly connected components with more than one module (or a module importing itself)."
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def export_cells(root: Path) -> list[dict]:
    "Every `#| export`/`#| exports` cell of the notebooks: notebook, cell id, lines (directives left out), long lines."
    cells = []
    for nb in sorted((root / "nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        for i, cell in enumerate(json.loads(nb.read_text()).get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            src = "".join(cell.get("source", [])).splitlines()
            directives = {m.group(1) for line in src if (m := _DIRECTIVE.match(line))}
            if not directives & {"export", "exports"}:
                continue
            code = [line for line in src if not _DIRECTIVE.match(line)]
            cells.append({"notebook": nb.relative_to(root / "nbs").as_posix(), "cell": cell.get("id", f"#{i}"),
                          "lines": len(code), "long_lines": sum(len(line) > MAX_LINE_CHARS for line in code),
                          "first_line": next((line.strip() for line in code if line.strip()), "")[:60]})
    return cells


def long_docstrings(root: Path) -> list[str]:
    "`module.qualname` of every function, class or method docstring in calm/ of more than one line or over 120 chars."
    out = []
    for py in sorted((root / "calm").glob("*.py")):
        def walk(node, scope):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    doc = ast.get_docstring(child, clean=False)
                    if doc is not None and ("\n" in doc.strip() or len(doc) > MAX_LINE_CHARS):
                        out.append(".".join([py.stem, *scope, child.name]))
                    walk(child, scope + [child.name])
        walk(ast.parse(py.read_text()), [])
    return out


def unexplained_imports(root: Path) -> list[str]:
    "`module:line: statement` of every import inside a function with no comment saying why (on it or just above it)."
    out = []
    for py in sorted((root / "calm").glob("*.py")):
        lines = py.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    line, above = lines[child.lineno - 1], lines[child.lineno - 2] if child.lineno > 1 else ""
                    if "#" not in line and not above.strip().startswith("#"):
                        out.append(f"{py.stem}: {line.strip()}")
    return sorted(set(out))


def collect(root: Path) -> dict:
    "All the counts, and the violations `--check` compares with the baseline."
    notebooks = module_notebooks(root)
    modules = set(notebooks)
    order = {m: nb for m, nb in notebooks.items()}
    graph, in_function, in_function_all, upward = {}, Counter(), 0, []
    top_total = 0
    for m in sorted(modules):
        imp = module_imports(root / "calm" / f"{m}.py", modules)
        graph[m] = set(imp["top"])
        top_total += len(imp["top"])
        in_function_all += imp["in_function_all"]
        for func, target in imp["in_function"]:
            if target != m:
                in_function[f"{m}.{func} -> {target}"] += 1
        for target in set(imp["top"]) | {t for _, t in imp["in_function"]}:
            if target != m and order[target] > order[m]:
                where = "top" if target in imp["top"] else "in function"
                upward.append(f"{m} ({order[m]}) -> {target} ({order[target]}) [{where}]")
    cells = export_cells(root)
    big = sorted((c for c in cells if c["lines"] > MAX_CELL_LINES), key=lambda c: -c["lines"])
    exported_lines = sum(c["lines"] for c in cells)
    long_lines = sum(c["long_lines"] for c in cells)
    readme = root / "README.md"
    largest = max(cells, key=lambda c: c["lines"]) if cells else None
    return {
        "calm_imports_total": top_total + sum(in_function.values()),
        "calm_imports_in_function": sum(in_function.values()),
        "imports_in_function_total": in_function_all,
        "cycles": strongly_connected(graph),
        "upward_imports": sorted(upward),
        "export_cells": len(cells),
        "largest_export_cell": largest and {k: largest[k] for k in ("notebook", "cell", "lines", "first_line")},
        "export_cells_over_80": [f"{c['notebook']} {c['cell']} ({c['lines']} lines: {c['first_line']})" for c in big],
        "exported_lines": exported_lines,
        "exported_lines_over_120": long_lines,
        "long_lines_by_cell": [f"{c['notebook']} {c['cell']}" for c in cells for _ in range(c["long_lines"])],
        "long_docstrings": long_docstrings(root),
        "unexplained_imports": unexplained_imports(root),
        "readme_lines": len(readme.read_text().splitlines()) if readme.exists() else 0,
        "in_function_calm_imports": sorted(in_function.elements()),
    }


def violations(stats: dict) -> dict[str, list[str]]:
    "What the baseline tracks: in-function calm imports, cycles, upward imports, big cells, long lines and docstrings."
    return {"in_function_calm_imports": stats["in_function_calm_imports"],
            "cycles": [" <-> ".join(c) for c in stats["cycles"]],
            "upward_imports": [u.rsplit(" [", 1)[0] for u in stats["upward_imports"]],
            "export_cells_over_80": [c.split(" (", 1)[0] for c in stats["export_cells_over_80"]],
            "exported_lines_over_120": stats["long_lines_by_cell"],
            "long_docstrings": stats["long_docstrings"],
            "imports_in_functions_without_a_reason": stats["unexplained_imports"]}


def _new(current: list[str], baseline: list[str], kind: str) -> list[str]:
    "Entries of `current` beyond the baseline (counted: a second identical in-function import is new too)."
    if kind == "cycles":  # a cycle is new unless a baseline cycle contains all its modules
        base = [set(b.split(" <-> ")) for b in baseline]
        return [c for c in current if not any(set(c.split(" <-> ")) <= b for b in base)]
    return sorted((Counter(current) - Counter(baseline)).elements())


def check(stats: dict, baseline: dict) -> list[str]:
    "One message per violation not in the baseline."
    return [f"new {kind.replace('_', ' ')}: {v}" for kind, cur in violations(stats).items()
            for v in _new(cur, baseline.get(kind, []), kind)]


def report(stats: dict) -> str:
    lc = stats["largest_export_cell"] or {}
    pct = 100 * stats["exported_lines_over_120"] / max(stats["exported_lines"], 1)
    lines = [
        f"imports of calm modules:              {stats['calm_imports_total']}",
        f"  inside functions:                   {stats['calm_imports_in_function']}",
        f"imports inside functions (any module): {stats['imports_in_function_total']}",
        f"  without a comment saying why:       {len(stats['unexplained_imports'])}",
        f"import cycles between calm modules:   {len(stats['cycles'])}",
        *[f"  {' <-> '.join(c)}" for c in stats["cycles"]],
        f"upward imports (to a later notebook): {len(stats['upward_imports'])}",
        *[f"  {u}" for u in stats["upward_imports"]],
        f"export cells:                         {stats['export_cells']}",
        f"largest export cell:                  {lc.get('lines')} lines ({lc.get('notebook')} {lc.get('cell')}: "
        f"{lc.get('first_line')})",
        f"export cells over {MAX_CELL_LINES} lines:            {len(stats['export_cells_over_80'])}",
        *[f"  {c}" for c in stats["export_cells_over_80"]],
        f"exported lines over {MAX_LINE_CHARS} characters:   {stats['exported_lines_over_120']} of "
        f"{stats['exported_lines']} ({pct:.1f}%)",
        f"docstrings over one line or {MAX_LINE_CHARS} chars: {len(stats['long_docstrings'])}",
        f"README lines:                         {stats['readme_lines']}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the repository root")
    p.add_argument("--baseline", type=Path, default=None, help=f"default: ROOT/{BASELINE}")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--check", action="store_true", help="fail on a violation the baseline does not list")
    p.add_argument("--write-baseline", action="store_true", help="write today's violations as the baseline")
    p.add_argument("--force", action="store_true", help="with --write-baseline: allow new entries")
    a = p.parse_args(argv)
    root = a.root.resolve()
    baseline_path = a.baseline or root / BASELINE
    stats = collect(root)
    if a.write_baseline:
        old = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
        if old is not None and not a.force and (new := check(stats, old)):
            print("the baseline can only shrink; fix these or pass --force:\n  " + "\n  ".join(new))
            return 1
        baseline_path.write_text(json.dumps(violations(stats), indent=1) + "\n")
        print(f"wrote {baseline_path}")
        return 0
    print(json.dumps(stats, indent=1) if a.json else report(stats))
    if a.check:
        baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
        new = check(stats, baseline)
        gone = [f"{k}: {v}" for k, cur in violations(stats).items() for v in _new(baseline.get(k, []), cur, k)]
        if gone:
            print(f"\n{len(gone)} baseline entries are fixed; shrink the baseline: python tools/code_stats.py "
                  "--write-baseline")
        if new:
            print(f"\ncode-stats check FAILED ({len(new)} new violations; keep imports at the top of modules in"
                  f" notebook order, no cycles, export cells of at most {MAX_CELL_LINES} lines, lines of at most"
                  f" {MAX_LINE_CHARS} characters, one-line docstrings, a reason beside each import in a function):\n  "
                  + "\n  ".join(new))
            return 1
        print("\ncode-stats check passed: no violation beyond the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
