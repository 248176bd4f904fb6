"""Helpers shared by the notebook, hygiene and classroom tests."""

from __future__ import annotations

import json
from pathlib import Path

from bookcache import execute  # noqa: F401 (re-exported for the tests)  tools/ is on sys.path (tests/conftest.py)
from classroom import toc_notebooks

ROOT = Path(__file__).resolve().parent.parent

NOTEBOOKS = toc_notebooks(ROOT)


def verdicts(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [(e["label"], e["status"]) for e in map(json.loads, log.read_text().splitlines())]
