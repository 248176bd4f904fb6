"""Every notebook in _toc.yml executes top to bottom from a fresh kernel, and its checks pass.

The time of each run is written to _build/notebook-times/<name>.json (and shown by `pytest -rA`).
A notebook executed in the reader's configuration (seed offset 0, the CPU, PyTorch's default
float32 settings) is also stored in the book's execution cache, `_build/.jupyter_cache`, exactly as
the book build would store it: `python3 dev.py book` afterwards renders these outputs instead of
executing every notebook a second time (CI relies on it: each notebook executes once per run).
"""

from __future__ import annotations

import json

import nbformat
import pytest
from bookcache import readers_configuration, store_in_book_cache  # tools/ (tests/conftest.py)
from notebook_utils import NOTEBOOKS, ROOT, execute, verdicts


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    seconds = execute(nb, tmp_path / "checks.jsonl", timeout=600)
    times = ROOT / "_build" / "notebook-times"
    times.mkdir(parents=True, exist_ok=True)
    (times / f"{path.stem}.json").write_text(json.dumps({"notebook": path.name, "seconds": round(seconds, 1)}))
    print(f"{path.name}: {seconds:.1f} s")
    failed = [(label, status) for label, status in verdicts(tmp_path / "checks.jsonl") if status != "passed"]
    assert not failed, f"checks that do not pass with the solutions in place: {failed}"
    assert seconds < 90 * 2, f"{path.name} took {seconds:.0f} s (budget 90 s on a 2-core CPU)"
    if readers_configuration():
        store_in_book_cache(nb, path, seconds)
