"""Set (or clear) the one setting for where the book lives: ``repository.url`` in _config.yml.

    python3 dev.py repository https://github.com/OWNER/REPO   # buttons on; setup cells install mmlearn
    python3 dev.py repository --clear                          # no repository: no launch buttons
    python3 dev.py repository                                  # show the current setting

With a URL, every notebook's setup cell starts with three lines that install the book's package
from that repository when it is missing (a fresh Colab or Binder kernel), and the book shows the
repository and launch buttons (book/_ext/book_tweaks.py). Without one, neither.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MARK = "# Colab/Binder: install the book's package when missing (set by `python3 dev.py repository`)"
URL_LINE = re.compile(r'^(repository:\n  url: )"?([^"\n]*)"?$', re.M)


def install_lines(url: str) -> str:
    return (f"{MARK}\nimport importlib.util, subprocess, sys  # noqa: E401\n"
            f"if importlib.util.find_spec(\"mmlearn\") is None:\n"
            f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", "
            f"\"mmlearn-book @ git+{url}\"], check=True)\n\n")


def current_url(root: Path = ROOT) -> str:
    match = URL_LINE.search((root / "_config.yml").read_text(encoding="utf-8"))
    return match.group(2).strip() if match else ""


def setup_cell_guard(source: str) -> str | None:
    """The URL the setup cell installs from, or None when it has no install lines."""
    match = re.search(r'"mmlearn-book @ git\+([^"]+)"', source) if MARK in source else None
    return match.group(1) if match else None


def set_url(url: str, root: Path = ROOT) -> None:
    if url and not re.fullmatch(r"https://\S+", url):
        raise ValueError(f"repository URL must start with https://, got {url!r}")
    config = root / "_config.yml"
    config.write_text(URL_LINE.sub(lambda m: f'{m.group(1)}"{url}"', config.read_text(encoding="utf-8")),
                      encoding="utf-8")
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        body = cell.source.split("\n\n", 1)[1] if MARK in cell.source else cell.source
        cell.source = (install_lines(url) if url else "") + body
        path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")  # as tools/nbclean.py writes it


def main(argv: list[str]) -> int:
    if not argv:
        print(current_url() or "(no repository set: no launch buttons)")
        return 0
    set_url("" if argv[0] == "--clear" else argv[0])
    print(f"repository.url = {current_url()!r}; setup cells updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
