"""The book's execution cache: fill it in parallel, so that the book build only renders.

    python tools/bookcache.py [-j JOBS]     # execute every notebook of _toc.yml that the cache lacks

Jupyter Book executes the notebooks it cannot find in its cache (`_build/.jupyter_cache`) one after
the other. On a machine with several cores that wastes most of them, so `python3 dev.py book` first
runs this script: it executes the missing notebooks ``JOBS`` at a time (each with one thread, in a fresh
kernel, exactly as the book would) and stores each result in the cache the way myst-nb stores it. The
build that follows finds every notebook cached. A notebook that fails is not stored: the build then
executes it itself and reports the error in the strict build's usual way. The notebook test
(tests/test_notebooks.py) stores what it executes through the same function.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nbformat
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "_build" / ".jupyter_cache"  # execute.cache in _config.yml


def execute(nb: nbformat.NotebookNode, log: Path, timeout: int = 300) -> float:
    """Execute ``nb`` in a fresh kernel from notebooks/ with check verdicts logged to ``log``; return seconds."""
    os.environ["MMLEARN_CHECK_LOG"] = str(log)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # several notebooks run at once, one per core
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return time.perf_counter() - start


def readers_configuration() -> bool:
    """Outputs worth showing in the book: the default seed, the default device choice, no overrides."""
    return all(os.environ.get(k, "").strip() in ("", "0") for k in ("MMLEARN_SEED", "MMLEARN_TF32")) \
        and not os.environ.get("MMLEARN_DEVICE") and not os.environ.get("MMLEARN_FULL")


def _locked_cache():
    """The cache with a file lock held (two processes may write at once); use as a context manager."""
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    return open(CACHE.parent / ".jupyter_cache.lock", "w")


def store_in_book_cache(nb: nbformat.NotebookNode, path: Path, seconds: float) -> None:
    """Add an executed notebook to the book's jupyter-cache, as myst-nb would."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # nbclient's timestamps: cell metadata is part of the cache's hash
    with _locked_cache() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        get_cache(str(CACHE)).cache_notebook_bundle(
            CacheBundleIn(nb, str(path), data={"execution_seconds": seconds}), check_validity=False, overwrite=True)


def is_cached(path: Path) -> bool:
    """True when the cache holds an execution of the notebook's current source."""
    if not CACHE.exists():
        return False
    with _locked_cache() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            get_cache(str(CACHE)).match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            return False
    return True


def _run_one(path: Path) -> tuple[str, float | None, str]:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            seconds = execute(nb, Path(tmp) / "checks.jsonl", timeout=600)
        except Exception as error:  # noqa: BLE001 (reported; the book build re-runs it and fails loudly)
            return path.name, None, f"{type(error).__name__}: {str(error).splitlines()[-1] if str(error) else ''}"
    store_in_book_cache(nb, path, seconds)
    return path.name, seconds, ""


def prefill(jobs: int) -> int:
    """Execute every notebook of the table of contents that the cache lacks; return how many failed."""
    sys.path.insert(0, str(ROOT / "tools"))
    from classroom import toc_notebooks

    if not readers_configuration():
        print("bookcache: seed, device or precision overridden; not filling the book's cache")
        return 0
    missing = [p for p in toc_notebooks(ROOT) if not is_cached(p)]
    print(f"bookcache: {len(missing)} notebooks to execute, {jobs} at a time", flush=True)
    failed, start = 0, time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for future in as_completed([pool.submit(_run_one, p) for p in missing]):
            name, seconds, error = future.result()
            failed += seconds is None
            print(f"  {name}: " + (f"{seconds:.0f} s" if seconds is not None else f"FAILED ({error})"), flush=True)
    print(f"bookcache: done in {time.perf_counter() - start:.0f} s", flush=True)
    return failed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    prefill(parser.parse_args().jobs)
