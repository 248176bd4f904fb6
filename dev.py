#!/usr/bin/env python3
"""One entry point for readers, authors and CI; needs only python3 (3.10+).

    python3 dev.py book          build the book (every notebook executed; cached) and print index.html
    python3 dev.py test          lint, hygiene, unit tests and notebook execution
    python3 dev.py book --force  strict build with an empty execution cache (what CI runs)
    python3 dev.py browser-test  open every built page in Chromium (needs `dev.py book` first)
    python3 dev.py lab           JupyterLab on the notebooks
    python3 dev.py student       student notebooks in student/, solutions in solutions/
    python3 dev.py grade DIR     grade submitted notebooks; writes grades/grades.csv
    python3 dev.py strip         remove outputs from the committed notebooks
    python3 dev.py repository URL  set where the book lives (launch buttons, Colab install line)
    python3 dev.py robustness    every notebook under 3 other seed offsets and with 1 and 2 threads
    python3 dev.py gpu-check     the tests and every notebook with MMLEARN_DEVICE=cuda; writes a report

The first command creates .venv and installs requirements.txt and mmlearn (editable) into it;
later commands reuse it (it is refreshed when requirements.txt changes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".requirements.sha256"
# The book's models are small: one intra-op thread that sleeps when idle is faster than two that
# spin and compete with the Jupyter machinery for 2 cores (measured: some training cells 10x faster).
QUIET_THREADS = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                 "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def run(*cmd: str | Path, env: dict | None = None, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT, env={**os.environ, **(env or {})})
    if check and code != 0:
        sys.exit(code)
    return code


KERNEL_CONFIG = '''# Written by dev.py. The book's kernels run locally and briefly; ipykernel 7 logs on every start
# that its TCP transport is unencrypted, which would add one line per notebook to every build log.
# Drop that one notice; every other kernel message still shows.
import logging


class _DropPlainTcpNotice(logging.Filter):
    def filter(self, record):
        return "without encryption" not in record.getMessage()


logging.getLogger("IPKernelApp").addFilter(_DropPlainTcpNotice())
'''


def write_kernel_config() -> None:
    """Install the kernel configuration above into the environment (.venv/etc/ipython/)."""
    path = VENV / "etc" / "ipython" / "ipython_kernel_config.py"
    if not path.exists() or path.read_text() != KERNEL_CONFIG:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(KERNEL_CONFIG)


def ensure_env() -> None:
    """Create .venv and install the pinned requirements + mmlearn (editable), once per requirements.txt."""
    if sys.version_info < (3, 10):  # noqa: UP036 (dev.py is run by whatever python3 the reader has)
        sys.exit(f"python >= 3.10 is required, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == digest:
        write_kernel_config()
        return
    start = time.perf_counter()
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
    run(PY, "-m", "pip", "install", "--quiet", "-r", "requirements.txt")
    run(PY, "-m", "pip", "install", "--quiet", "--no-deps", "-e", ".")
    write_kernel_config()
    STAMP.write_text(digest)
    print(f"environment ready in {time.perf_counter() - start:.0f} s", flush=True)


def book(force: bool = False) -> None:
    if force:
        shutil.rmtree(ROOT / "_build", ignore_errors=True)
    start = time.perf_counter()
    # Jupyter Book executes uncached notebooks one at a time: fill its cache first, one notebook per core.
    run(PY, "tools/bookcache.py", "-j", str(os.cpu_count() or 1), env=QUIET_THREADS)
    run(BIN / "jupyter-book", "build", ".", "-W", "-n", "--keep-going", env=QUIET_THREADS)
    print(f"book built in {time.perf_counter() - start:.0f} s")
    print(f"open: {ROOT / '_build' / 'html' / 'index.html'}")


def test(extra: list[str]) -> None:
    run(BIN / "ruff", "check", "mmlearn", "tests", "notebooks", "tools", "benchmarks", "dev.py")
    run(PY, "tools/nbclean.py", "--check", *sorted(str(p) for p in (ROOT / "notebooks").glob("*.ipynb")))
    run(PY, "-m", "pytest", "-m", "not browser", "-n", "2", "--dist", "loadgroup", "-q", *extra, env=QUIET_THREADS)


def gpu_check(extra: list[str]) -> None:
    """The unit tests and every notebook on CUDA; report in _build/gpu-check/ (about 10 min on one GPU)."""
    out = ROOT / "_build" / "gpu-check"
    out.mkdir(parents=True, exist_ok=True)
    cuda = {"MMLEARN_DEVICE": "cuda", "OMP_NUM_THREADS": "4"}
    start = time.perf_counter()
    code = run(PY, "-m", "pytest", "-m", "not browser and not notebook", "-q", "-n", "4", "-p", "no:cacheprovider",
               f"--junitxml={out / 'unit-tests.xml'}", env=cuda, check=False)
    print(f"unit tests on cuda: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    code |= run(PY, "tools/robustness.py", "--seeds", "0", "--threads", "1", "-j", "4", "--env",
                "MMLEARN_DEVICE=cuda", "--out", out, *extra, check=False)
    print(f"report: {out / 'report.md'} (unit tests: {out / 'unit-tests.xml'})")
    sys.exit(code)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    ensure_env()
    if command == "setup":
        return
    if command == "book":
        book(force="--force" in rest)
    elif command == "test":
        test(rest)
    elif command == "browser-test":
        run(PY, "-m", "pytest", "-m", "browser", "-q", "-p", "no:xdist", *rest)
    elif command == "lab":
        run(BIN / "jupyter", "lab", "notebooks")
    elif command == "student":
        run(PY, "tools/classroom.py", "student", *rest)
    elif command == "grade":
        run(PY, "tools/classroom.py", "grade", *rest)
    elif command == "repository":
        run(PY, "tools/repository.py", *rest)
    elif command == "robustness":
        run(PY, "tools/robustness.py", *rest)
    elif command == "gpu-check":
        gpu_check(rest)
    elif command == "strip":
        run(PY, "tools/nbclean.py", *sorted(str(p) for p in (ROOT / "notebooks").glob("*.ipynb")))
    else:
        sys.exit(f"unknown command {command!r}; try: python3 dev.py --help")


if __name__ == "__main__":
    main(sys.argv[1:])
