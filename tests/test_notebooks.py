"""Every notebook in _toc.yml executes top to bottom from a fresh kernel, and its checks pass.

The time of each run is written to _build/notebook-times/<name>.json (and shown by `pytest -rA`).
A notebook executed in the reader's configuration (seed offset 0, the CPU, PyTorch's default
float32 settings) is also stored in the book's execution cache, `_build/.jupyter_cache`, exactly as
the book build would store it: `python3 dev.py book` afterwards renders these outputs instead of
executing every notebook a second time (CI relies on it: each notebook executes once per run).
"""

from __future__ import annotations

import fcntl
import json
import os

import nbformat
import pytest
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from notebook_utils import NOTEBOOKS, ROOT, execute, verdicts

CACHE = ROOT / "_build" / ".jupyter_cache"  # execute.cache in _config.yml


def readers_configuration() -> bool:
    """Outputs worth showing in the book: the default seed, the default device choice, no overrides."""
    return all(os.environ.get(k, "").strip() in ("", "0") for k in ("MMLEARN_SEED", "MMLEARN_TF32")) \
        and not os.environ.get("MMLEARN_DEVICE") and not os.environ.get("MMLEARN_FULL")


def store_in_book_cache(nb: nbformat.NotebookNode, path, seconds: float) -> None:
    """Add an executed notebook to the book's jupyter-cache (one writer at a time: xdist runs two)."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # nbclient's timestamps: cell metadata is part of the cache's hash
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / ".jupyter_cache.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        get_cache(str(CACHE)).cache_notebook_bundle(
            CacheBundleIn(nb, str(path), data={"execution_seconds": seconds}), check_validity=False, overwrite=True)


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
