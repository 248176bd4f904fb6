"""Student notebooks, the solutions bundle and grading (tools/classroom.py)."""

from __future__ import annotations

import csv

import nbformat
import pytest
from classroom import exercise_labels, exercises_only, grade, insert_solutions, make_student, split_solutions
from notebook_utils import NOTEBOOKS, ROOT, execute, verdicts


def _student_then_solved(path):
    """One notebook: the student version's exercises, then the same with the solutions put back."""
    nb = nbformat.read(path, as_version=4)
    student, solutions = split_solutions(nb)
    first = exercises_only(student)
    second = exercises_only(insert_solutions(student, solutions))
    first.cells += second.cells[1:]  # same kernel; the setup cell runs once
    return nb, student, solutions, first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_student_notebook_round_trip(path, tmp_path):
    nb, student, solutions, combined = _student_then_solved(path)
    assert solutions, f"{path.name}: no solutions to remove"
    assert not any("{solution-start}" in c.source for c in student.cells)
    assert sum("exercise" in c.metadata.get("tags", []) for c in student.cells) >= 1
    assert insert_solutions(student, solutions).cells == nb.cells
    execute(combined, tmp_path / "log.jsonl", timeout=300)
    labels = exercise_labels(student)
    got = verdicts(tmp_path / "log.jsonl")
    assert [label for label, _ in got] == labels + labels
    student_part, solved_part = got[: len(labels)], got[len(labels):]
    assert all(status == "not_implemented" for _, status in student_part), student_part
    assert all(status == "passed" for _, status in solved_part), solved_part


def test_make_student_writes_every_notebook(tmp_path):
    written = make_student(tmp_path / "student", tmp_path / "solutions")
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    assert (tmp_path / "solutions" / "solutions.json").stat().st_size > 0


def test_grading_loop_on_the_setup_exercises(tmp_path):
    """student notebook -> wrong answer gets feedback -> right answer passes -> a CSV row per exercise;
    a crashing and an endless submission are recorded and do not stop the others."""
    setup = ROOT / "notebooks" / "00_setup.ipynb"
    student, solutions = split_solutions(nbformat.read(setup, as_version=4))
    base = exercises_only(student)

    def submission(name, answers):
        nb = nbformat.from_dict(base)
        for cell, source in zip([c for c in nb.cells if "exercise" in c.metadata.get("tags", [])], answers):
            cell.source = source
        (tmp_path / "subs" / name).mkdir(parents=True)
        nbformat.write(nb, tmp_path / "subs" / name / "00_setup.ipynb")

    submission("ada", ["answer = 2 * 64 * 32 * 16",
                       "def matmul_dots(A, B):\n    if A.shape[1] != B.shape[0]:\n        raise ValueError('shapes')\n"
                       "    return A @ B"])
    submission("bob", ["answer = 64 * 32 * 16", "def matmul_dots(A, B):\n    return A @ B"])
    submission("cem", ["raise RuntimeError('oops')"])
    submission("dan", ["import time\nwhile True:\n    time.sleep(0.5)"])
    submission("eve", [])  # the untouched student notebook

    rows = grade(tmp_path / "subs", tmp_path / "grades.csv", timeout=30)
    table = {(r["student"], r["exercise"]): r["status"] for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert len(rows) == 10
    assert table[("ada", "ex-ch00-flops")] == "passed" and table[("ada", "ex-ch00-matmul")] == "passed"
    assert table[("bob", "ex-ch00-flops")] == "failed" and table[("bob", "ex-ch00-matmul")] == "failed"
    assert table[("cem", "ex-ch00-flops")] == "crashed"
    assert table[("dan", "ex-ch00-flops")] == "timeout"
    assert table[("eve", "ex-ch00-flops")] == "not_implemented"
