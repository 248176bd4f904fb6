"""Repository hygiene: clean notebooks, TOC <-> files, the template's sections, the exercise convention."""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
import pytest
from notebook_utils import NOTEBOOKS, ROOT
from prose_numbers import control_characters, report, typed_numbers  # tools/ is on sys.path

import mmlearn.checks

ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXERCISE = re.compile(r":::\{exercise\}[^\n]*\n:label:\s*(\S+)")


def _markdown(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


def test_toc_and_files_agree():
    toc_text = (ROOT / "_toc.yml").read_text()
    for entry in re.findall(r"file:\s*(\S+)", toc_text):
        exists = any((ROOT / f"{entry}{ext}").exists() for ext in ("", ".md", ".ipynb"))
        assert exists, f"_toc.yml lists missing {entry}"
    missing = {p.name for p in ALL_NOTEBOOKS} - {p.name for p in NOTEBOOKS}
    assert not missing, f"every notebook must be in _toc.yml; not listed: {sorted(missing)}"
    for page in (ROOT / "book").glob("*.md"):
        assert f"book/{page.stem}" in toc_text, f"book/{page.name} is not in _toc.yml"


def test_notebooks_are_committed_clean():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "nbclean.py"), "--check", *map(str, ALL_NOTEBOOKS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_template_structure(path):
    nb = nbformat.read(path, as_version=4)
    md = _markdown(nb)
    h1 = [line for text in md for line in text.splitlines() if re.match(r"# \S", line)]
    assert len(h1) == 1, f"{path.name}: exactly one H1 title, found {h1}"
    for section in ("Summary", "Exercises", "References"):
        assert any(re.search(rf"^## {section}\b", text, re.M) for text in md), f"{path.name}: no '## {section}'"
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    for needle in ("import mmlearn", "mmlearn.get_device()", "mmlearn.seed_everything("):
        assert needle in setup, f"{path.name}: the first code cell must contain {needle!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_exercise_convention(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(_markdown(nb))
    labels = EXERCISE.findall(text)
    assert labels, f"{path.name}: no exercises"
    registered = set(mmlearn.checks.registered())
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tagged = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    assert tagged, f"{path.name}: no starting cell tagged 'exercise'"
    for label in labels:
        assert re.search(rf"\{{solution-start\}}\s+{re.escape(label)}\b", text), f"{label}: no solution-start"
        if f'mmlearn.check("{label}"' in code:
            assert label in registered, f"{label}: check cell but no check registered in mmlearn/checks/"
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "{solution-end}" in cell.source:
            assert re.fullmatch(r"\s*:::\{solution-end\}\s*\n:::\s*", cell.source), \
                f"{path.name}: a solution-end cell must hold only the directive"


@pytest.mark.parametrize("path", [*ALL_NOTEBOOKS, *sorted((ROOT / "book").glob("*.md"))], ids=lambda p: p.name)
def test_no_typed_numbers_and_no_control_characters_in_prose(path):
    problems = report([path])
    assert not problems, "glue computed numbers, declare constants (CONTRIBUTING.md):\n" + "\n".join(problems)


def test_prose_number_rule_catches_what_it_should():
    assert typed_numbers("accuracy 0.84 and 95 % of it") == ["0.84", "95 %"]
    assert typed_numbers("<!-- constants: 0.84 -->\naccuracy 0.84") == []
    assert typed_numbers("{glue:text}`acc` with `x = 0.5` in code, torch 2.13.0") == []
    assert control_characters(r"$a \approx b$ \text{x}") == []
    assert control_characters("$a \x07pprox b$ \x09ext{x}") == ["U+0007", "U+0009"]


def test_setup_cells_follow_the_repository_setting():
    from repository import current_url, setup_cell_guard

    url = current_url(ROOT) or None
    for path in ALL_NOTEBOOKS:
        setup = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source
        assert setup_cell_guard(setup) == url, f"{path.name}: run `python3 dev.py repository {url or '--clear'}`"


def test_repository_setting_round_trips(tmp_path):
    import shutil

    from repository import current_url, set_url, setup_cell_guard

    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "00_setup.ipynb", tmp_path / "notebooks")
    original = (tmp_path / "notebooks" / "00_setup.ipynb").read_text()
    set_url("https://example.org/me/book", tmp_path)
    setup = next(c for c in nbformat.read(tmp_path / "notebooks" / "00_setup.ipynb", as_version=4).cells
                 if c.cell_type == "code").source
    assert current_url(tmp_path) == "https://example.org/me/book"
    assert setup_cell_guard(setup) == "https://example.org/me/book"
    compile(setup.replace("%", "#"), "setup", "exec")
    set_url("", tmp_path)
    assert current_url(tmp_path) == ""
    assert nbformat.reads((tmp_path / "notebooks" / "00_setup.ipynb").read_text(), as_version=4).cells == \
        nbformat.reads(original, as_version=4).cells
    with pytest.raises(ValueError, match="https://"):
        set_url("github.com/me/book", tmp_path)
