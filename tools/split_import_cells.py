"""Split notebook cells that mix top-level imports with other code into an import cell and the rest.

nbdev's docs processors execute every cell that contains an import (so that `show_doc` can see the
names); a cell that also uses names defined by earlier, unexecuted cells then fails the docs build.
Usage: python tools/split_import_cells.py nbs/*.ipynb   (rewrites the notebooks in place; prints what it split)
"""
import re
import sys

import nbformat

FLAG = re.compile(r"^#\|")
IMPORT = re.compile(r"^(import |from \S+ import )")


def split(path) -> int:
    nb = nbformat.read(path, as_version=4)
    cells, n = [], 0
    for c in nb.cells:
        lines = c.source.split("\n")
        flags = [l for l in lines if FLAG.match(l)]
        if c.cell_type != "code" or any(re.match(r"#\|\s*(export|exports|exporti|default_exp)", l) for l in flags):
            cells.append(c); continue
        imports = [l for l in lines if IMPORT.match(l)]
        rest = [l for l in lines if not FLAG.match(l) and l not in imports]
        if not imports or not any(l.strip() and not l.startswith("#") for l in rest):
            cells.append(c); continue
        first = nbformat.v4.new_code_cell("\n".join(flags + imports))
        second = nbformat.v4.new_code_cell("\n".join(flags + rest).strip("\n"), metadata=c.metadata)
        second.outputs = c.get("outputs", [])
        cells += [first, second]; n += 1
    if n:
        nb.cells = cells
        nbformat.write(nb, path)
    return n


if __name__ == "__main__":
    for p in sys.argv[1:]:
        k = split(p)
        if k: print(f"{p}: split {k} cell(s)")
