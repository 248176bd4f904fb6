"""Run notebooks under other seeds, thread counts or devices, and report every asserted claim.

    python3 dev.py robustness                       # offsets 101 202 303 (1 thread) + offset 0 with 2 threads
    python3 dev.py robustness --seeds 0 1 2 3 4 --threads 1 --record   # the distribution behind each threshold
    python3 dev.py robustness notebooks/07_*.ipynb --seeds 5           # some notebooks only
    python3 dev.py gpu-check                        # every notebook with MMLEARN_DEVICE=cuda (see dev.py)

Each run executes a notebook from a fresh kernel (tools/nbrun.py) with ``MMLEARN_SEED`` (an offset
added to every ``mmlearn.seed_everything`` call) and ``OMP_NUM_THREADS`` set, and collects the JSON
lines that ``mmlearn.claim`` / ``mmlearn.glue`` write. The report (Markdown and JSON, in --out)
gives per notebook and configuration: pass/fail, seconds, the first error, and each claim's value
next to its threshold. ``--record`` also writes min / median / max of every claim over the runs to
benchmarks/results/claims.json (and the table claims.md that the execution-status page shows).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from classroom import toc_notebooks  # noqa: E402


@dataclass
class Run:
    notebook: str
    config: str
    env: dict
    ok: bool = False
    seconds: float = 0.0
    error: str = ""
    claims: list = field(default_factory=list)


def execute(run: Run, timeout: int) -> Run:
    """Execute one notebook in a subprocess with ``run.env``; fill in status, time and claims."""
    log = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **run.env, "MMLEARN_CLAIMS_LOG": str(log)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "nbrun.py"), "--no-images", "--timeout",
                           str(timeout), str(ROOT / "notebooks" / run.notebook)],
                          env=env, capture_output=True, text=True)
    run.seconds = round(time.perf_counter() - start, 1)
    run.ok = proc.returncode == 0
    if not run.ok:
        text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
        lines = [ln for ln in text.splitlines() if "Error" in ln or "claim" in ln]
        run.error = (lines[-1] if lines else (proc.stdout + proc.stderr)[-300:]).strip()[:300]
    run.claims = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    log.unlink()
    return run


def configs(seeds: list[int], threads: list[int], extra_env: dict) -> list[tuple[str, dict]]:
    """Every seed offset with 1 thread, and the default seed with each other thread count."""
    out = [(f"seed+{s} t1", {"MMLEARN_SEED": str(s), "OMP_NUM_THREADS": "1"}) for s in seeds]
    out += [(f"seed+0 t{t}", {"MMLEARN_SEED": "0", "OMP_NUM_THREADS": str(t)}) for t in threads if t != 1]
    return [(name, {**env, **extra_env}) for name, env in out]


def claim_cell(claims: list) -> str:
    asserted = [c for c in claims if "ok" in c]
    return "; ".join(f"{c['name']}={c['value']:.4g}" + ("" if c["ok"] else " (FAILS)") for c in asserted)


def write_report(runs: list[Run], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps([run.__dict__ for run in runs], indent=1))
    lines = ["| notebook | configuration | status | seconds | asserted claims (value) |", "|---|---|---|---|---|"]
    for r in runs:
        status = "pass" if r.ok else f"FAIL: {r.error}"
        lines.append(f"| {r.notebook} | {r.config} | {status} | {r.seconds} | {claim_cell(r.claims)} |")
    failed = sum(not r.ok for r in runs)
    text = "\n".join(lines) + f"\n\n{len(runs) - failed} of {len(runs)} runs passed.\n"
    (out / "report.md").write_text(text)
    return text


def record(runs: list[Run], path: Path) -> None:
    """Write min / median / max (and every value) of each asserted claim over the runs."""
    table: dict[str, dict] = {}
    for r in runs:
        for c in r.claims:
            if "ok" not in c:
                continue
            entry = table.setdefault(f"{r.notebook}::{c['name']}", {"at_least": c["at_least"],
                                                                    "at_most": c["at_most"], "runs": {}})
            entry["runs"][r.config] = c["value"]
    for entry in table.values():
        values = sorted(entry["runs"].values())
        entry.update(n=len(values), min=values[0], median=statistics.median(values), max=values[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several authors may record different notebooks at once
        recorded = {r.notebook for r in runs}  # a notebook recorded now replaces all its old entries
        old = json.loads(path.read_text()) if path.exists() else {}
        merged = {**{k: v for k, v in old.items() if k.split("::")[0] not in recorded}, **table}
        path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        path.with_suffix(".md").write_text(claims_table(merged))


def claims_table(claims: dict) -> str:
    """The Markdown table of every asserted claim's threshold and measured spread (for the book)."""
    rows = ["| notebook | claim | threshold | min | median | max | runs |", "|---|---|---|---|---|---|---|"]
    for key, c in sorted(claims.items()):
        notebook, name = key.split("::")
        bounds = " and ".join(f"{op} {b:g}" for op, b in (("≥", c["at_least"]), ("≤", c["at_most"])) if b is not None)
        rows.append(f"| {notebook.removesuffix('.ipynb')} | `{name}` | {bounds} | {c['min']:.4g} | "
                    f"{c['median']:.4g} | {c['max']:.4g} | {c['n']} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in _toc.yml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[101, 202, 303])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for every run (e.g. MMLEARN_DEVICE=cuda)")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "robustness")
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/claims.json")
    args = parser.parse_args(argv)
    notebooks = [p.name for p in (args.notebooks or toc_notebooks(ROOT))]
    extra = dict(item.split("=", 1) for item in args.env)
    runs = [Run(nb, name, env) for name, env in configs(args.seeds, args.threads, extra) for nb in notebooks]
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda r: execute(r, args.timeout), runs):
            print(f"{r.notebook:50s} {r.config:12s} {'pass' if r.ok else 'FAIL'} {r.seconds:6.1f} s  "
                  f"{claim_cell(r.claims)} {r.error}", flush=True)
    print(write_report(runs, args.out).splitlines()[-1], f"report: {args.out / 'report.md'}")
    if args.record:
        record(runs, ROOT / "benchmarks" / "results" / "claims.json")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
