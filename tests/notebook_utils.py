"""Helpers shared by the notebook, hygiene and classroom tests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
from classroom import toc_notebooks  # tools/ is on sys.path (tests/conftest.py)
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent

NOTEBOOKS = toc_notebooks(ROOT)


def execute(nb: nbformat.NotebookNode, log: Path, timeout: int = 300) -> float:
    """Execute ``nb`` in a fresh kernel from notebooks/ with check verdicts logged to ``log``; return seconds."""
    os.environ["MMLEARN_CHECK_LOG"] = str(log)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # two notebooks run at once under xdist on 2 cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return time.perf_counter() - start


def verdicts(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [(e["label"], e["status"]) for e in map(json.loads, log.read_text().splitlines())]
