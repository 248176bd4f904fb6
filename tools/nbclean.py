"""Make notebooks ready to commit: no outputs, no execution counts, standard metadata.

    python tools/nbclean.py notebooks/*.ipynb          # rewrite in place
    python tools/nbclean.py --check notebooks/*.ipynb  # exit 1 if any would change

Keeps cell ids and tags; drops editor-only metadata (jupytext, collapsed, lines_to_next_cell...);
sets the kernelspec every notebook of the book executes with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python"}
KEEP_CELL_METADATA = ("tags",)


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": LANGUAGE_INFO})
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA})
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not clean")
    args = parser.parse_args()
    dirty = []
    for path in args.notebooks:
        before = path.read_text(encoding="utf-8")
        nb = clean(nbformat.reads(before, as_version=4))
        nbformat.validate(nb)
        after = nbformat.writes(nb) + "\n"
        if after != before:
            dirty.append(path)
            if not args.check:
                path.write_text(after, encoding="utf-8")
    if args.check and dirty:
        print("not clean (run tools/nbclean.py):", *map(str, dirty), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
