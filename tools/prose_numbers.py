"""Find numbers typed by hand in prose, and control characters, in notebooks and book pages.

    python tools/prose_numbers.py [notebooks/x.ipynb book/y.md ...]   # default: all of them

The rule (CONTRIBUTING.md, "Numbers in prose"): a decimal number (``0.84``) or a percentage
(``95 %``) in a markdown cell or a book page is either inserted from the code that computes it,
with myst-nb's ``{glue:text}`name` ``, or declared a constant of the text (a threshold, a
definition, a bound, a value the reader is told to use) in an HTML comment in the same cell::

    <!-- constants: 0.5 0.95 -->

Code spans and fences, glue roles, link targets and version strings (``2.13.0``) are not prose.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CONSTANTS = re.compile(r"<!--\s*constants:(.*?)-->", re.S)
NUMBER = re.compile(r"(?<![\w.\\])(\d+\.\d+|\d+(?:\.\d+)?\s?\\?%)(?![\w.]*\d)")
NOT_PROSE = [
    re.compile(r"```.*?```|~~~.*?~~~", re.S),  # fenced code
    re.compile(r"`[^`\n]*`"),  # code spans and role targets ({glue:text}`name`)
    re.compile(r"\]\([^)]*\)|https?://\S+"),  # link targets and URLs
    re.compile(r"<!--.*?-->", re.S),  # comments (the constants declaration itself)
    re.compile(r"\d+\.\d+\.\d+[\w.]*"),  # version strings
]


def typed_numbers(markdown: str) -> list[str]:
    """Decimal numbers and percentages in ``markdown`` that are neither glued nor declared constants."""
    declared = {tok.strip().rstrip("%").strip() for m in CONSTANTS.finditer(markdown) for tok in m.group(1).split()}
    text = markdown
    for pattern in NOT_PROSE:
        text = pattern.sub(" ", text)
    found = [m.group(1) for m in NUMBER.finditer(text)]
    return [n for n in found if n.replace("\\", "").rstrip("%").strip() not in declared]


def control_characters(markdown: str) -> list[str]:
    """Control characters other than newline (e.g. a BEL from ``"\\a"`` in ``\\approx``, a TAB from ``\\t``)."""
    return [f"U+{ord(ch):04X}" for ch in markdown if unicodedata.category(ch) == "Cc" and ch != "\n"]


def prose_units(path: Path) -> list[tuple[str, str]]:
    """(where, markdown) for each markdown cell of a notebook, or the whole text of a book page."""
    if path.suffix == ".md":
        return [(path.name, path.read_text(encoding="utf-8"))]
    nb = nbformat.read(path, as_version=4)
    return [(f"{path.name} cell {i}", c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]


def report(paths: list[Path]) -> list[str]:
    problems = []
    for path in paths:
        for where, text in prose_units(path):
            if numbers := typed_numbers(text):
                problems.append(f"{where}: typed numbers {numbers}")
            if controls := control_characters(text):
                problems.append(f"{where}: control characters {controls}")
    return problems


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]] or [*sorted((ROOT / "notebooks").glob("*.ipynb")),
                                              *sorted((ROOT / "book").glob("*.md"))]
    found = report(args)
    print("\n".join(found) or "no typed numbers, no control characters")
    sys.exit(1 if found else 0)
