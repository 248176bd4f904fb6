"""Classroom tools: student notebooks, the solutions bundle, and grading.

    python tools/classroom.py student [--out student] [--solutions solutions]
    python tools/classroom.py grade SUBMISSIONS [--out grades/grades.csv] [--timeout 300]

The exercise convention (CONTRIBUTING.md §3): a solution is every cell from the markdown cell
holding ``{solution-start} <label>`` to the one holding ``{solution-end}``, inclusive. A student
notebook is the chapter notebook with those cells removed; the removed cells, with the id of the
cell they followed, form the solutions bundle, so a teacher (and the tests) can put them back.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
START = re.compile(r"\{solution-start\}\s+(\S+)")
END = re.compile(r"\{solution-end\}")
CHECK_CALL = re.compile(r"mmlearn\.check\(\s*[\"']([^\"']+)[\"']")
STUDENT_NOTE = (
    "**Student version.** The solutions of the exercises have been removed. Fill in each starting cell "
    "(tagged `exercise`), then run the check cell below it: `mmlearn.check` says what is wrong, or that "
    "your answer is correct."
)


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """Notebooks listed in _toc.yml, in reading order."""
    entries = re.findall(r"file:\s*(notebooks/\S+)", (root / "_toc.yml").read_text(encoding="utf-8"))
    return [root / (e if e.endswith(".ipynb") else e + ".ipynb") for e in entries]


def split_solutions(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[dict]]:
    """Return (student notebook, solutions) where each solution is {label, after, cells}."""
    student = copy.deepcopy(nb)
    kept, solutions, current = [], [], None
    for cell in nb.cells:
        text = cell.source if cell.cell_type == "markdown" else ""
        start = START.search(text)
        if current is None and start:
            current = {"label": start.group(1), "after": kept[-1].id if kept else None, "cells": []}
        if current is not None:
            current["cells"].append(cell)
            if END.search(text):
                solutions.append(current)
                current = None
            continue
        kept.append(cell)
    if current is not None:
        raise ValueError(f"solution {current['label']!r} has a solution-start but no solution-end")
    student.cells = [copy.deepcopy(c) for c in kept]
    return student, solutions


def insert_solutions(student: nbformat.NotebookNode, solutions: list[dict]) -> nbformat.NotebookNode:
    """Put removed solutions back after the cells they followed (the inverse of split_solutions)."""
    merged = copy.deepcopy(student)
    for solution in reversed(solutions):
        ids = [c.id for c in merged.cells]
        if solution["after"] not in ids:
            raise ValueError(f"cannot place solution {solution['label']!r}: cell {solution['after']!r} is missing")
        at = ids.index(solution["after"]) + 1
        merged.cells[at:at] = [nbformat.from_dict(c) for c in solution["cells"]]
    return merged


def exercise_labels(nb: nbformat.NotebookNode) -> list[str]:
    """Labels of every check call, in order."""
    return [m for c in nb.cells if c.cell_type == "code" for m in CHECK_CALL.findall(c.source)]


NOTEBOOK_STATE = "uses-notebook-state"  # tag: a solution cell of an open experiment that reads the notebook's models


def exercises_only(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The setup cell plus the Exercises section: what the convention says exercises may use.

    A solution cell tagged ``uses-notebook-state`` (an open experiment on the models the notebook trained)
    runs only in the full notebook, so it is left out here, as the grader leaves it out.
    """
    out = copy.deepcopy(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    heads = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and re.match(r"##\s+Exercises\b", c.source)]
    if not code or not heads:
        raise ValueError("notebook needs a setup cell and a '## Exercises' section")
    refs = [i for i, c in enumerate(nb.cells) if i > heads[0] and c.cell_type == "markdown"
            and re.match(r"##\s+References\b", c.source)]
    end = refs[0] if refs else len(nb.cells)
    out.cells = [copy.deepcopy(code[0])] + [copy.deepcopy(c) for c in nb.cells[heads[0]:end]
                                            if NOTEBOOK_STATE not in c.metadata.get("tags", [])]
    return out


def make_student(out_dir: Path, solutions_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    solutions_dir.mkdir(parents=True, exist_ok=True)
    bundle, written = {}, []
    for path in toc_notebooks():
        student, solutions = split_solutions(nbformat.read(path, as_version=4))
        student.cells.insert(1, nbformat.v4.new_markdown_cell(STUDENT_NOTE, id="student-note"))
        nbformat.write(student, out_dir / path.name)
        bundle[path.name] = [{**s, "cells": [dict(c) for c in s["cells"]]} for s in solutions]
        written.append(out_dir / path.name)
        print(f"{path.name}: {len(solutions)} solutions removed")
    (solutions_dir / "solutions.json").write_text(json.dumps(bundle, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"student notebooks in {out_dir}/, solutions bundle in {solutions_dir / 'solutions.json'}")
    return written


# ---- grading -----------------------------------------------------------------------------------

def _run_one(notebook: Path, log: Path, cell_timeout: int) -> int:
    """Execute one notebook (in this process's kernel); exit 0 ok, 3 if a cell raised."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ["MMLEARN_CHECK_LOG"] = str(log)
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    try:
        client.execute()
    except CellExecutionError:
        return 3
    return 0


def _isolated(cmd: list[str]) -> list[str]:
    """Run without network when the OS allows it (a fresh network namespace, loopback only)."""
    if sys.platform.startswith("linux") and subprocess.call(["unshare", "-n", "true"], stderr=subprocess.DEVNULL) == 0:
        return ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh", *cmd]
    return cmd


def grade_notebook(notebook: Path, timeout: int) -> tuple[str, dict[str, str], float]:
    """Run a submission in a fresh kernel; return (outcome, {label: status}, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "checks.jsonl"
        log.touch()
        cmd = _isolated([sys.executable, __file__, "_run-one", str(notebook), str(log), str(timeout)])
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            outcome = {0: "completed", 3: "crashed"}.get(proc.wait(timeout=timeout), "crashed")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            outcome = "timeout"
        verdicts = {}
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            verdicts[entry["label"]] = entry["status"]
        return outcome, verdicts, time.perf_counter() - start


def grade(submissions: Path, out: Path, timeout: int) -> list[dict]:
    """Grade every notebook under ``submissions`` (student = first folder, or the file's stem prefix)."""
    rows = []
    for notebook in sorted(submissions.rglob("*.ipynb")):
        rel = notebook.relative_to(submissions)
        student = rel.parts[0] if len(rel.parts) > 1 else rel.stem.split("__")[0]
        try:
            expected = exercise_labels(nbformat.read(notebook, as_version=4))
        except Exception:  # unreadable file: record it and go on
            rows.append({"student": student, "notebook": rel.name, "exercise": "*", "status": "unreadable",
                         "seconds": 0})
            continue
        outcome, verdicts, seconds = grade_notebook(notebook, timeout)
        missing = "missing" if outcome == "completed" else outcome
        for label in dict.fromkeys(expected + list(verdicts)):
            rows.append({"student": student, "notebook": rel.name, "exercise": label,
                         "status": verdicts.get(label, missing), "seconds": round(seconds, 1)})
        passed = sum(v == "passed" for v in verdicts.values())
        print(f"{student}/{rel.name}: {outcome}, {passed}/{len(expected)} passed")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["student", "notebook", "exercise", "status", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows)")
    return rows


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_run-one":
        return _run_one(Path(argv[1]), Path(argv[2]), int(argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("student", help="write student notebooks and the solutions bundle")
    s.add_argument("--out", type=Path, default=ROOT / "student")
    s.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    g = sub.add_parser("grade", help="grade a folder of submitted notebooks")
    g.add_argument("submissions", type=Path)
    g.add_argument("--out", type=Path, default=ROOT / "grades" / "grades.csv")
    g.add_argument("--timeout", type=int, default=int(os.environ.get("GRADE_TIMEOUT", "300")))
    args = parser.parse_args(argv)
    if args.command == "student":
        make_student(args.out, args.solutions)
    else:
        grade(args.submissions, args.out, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
