"""The exercise-check mechanism: verdicts, feedback, the log used by the grader, and every registered check."""

from __future__ import annotations

import json

import pytest
import torch

import mmlearn
from mmlearn import checks
from mmlearn.checks import (
    CheckFailed,
    call_student,
    expect_close,
    expect_equal,
    expect_number,
    expect_value_error,
    register,
)


@pytest.fixture
def temp_check():
    label = "ex-test-double"

    def run(fn):
        for x in (torch.arange(3.0), torch.tensor([-1.5, 2.0])):
            expect_close(fn(x), 2 * x, what=f"input {x.tolist()}")

    register(label, hint="multiply by two")(run)
    yield label
    checks._REGISTRY.pop(label)


def test_verdicts_and_feedback(temp_check, capsys, tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("MMLEARN_CHECK_LOG", str(log))

    def stub(x):
        raise NotImplementedError

    assert mmlearn.check(temp_check, stub) is False
    assert "not implemented yet" in capsys.readouterr().out
    assert mmlearn.check(temp_check, ...) is False
    assert "not implemented yet" in capsys.readouterr().out
    assert mmlearn.check(temp_check, lambda x: 3 * x) is False
    out = capsys.readouterr().out
    assert "input [0.0, 1.0, 2.0]" in out and "expected 4, got 6" in out and "Hint: multiply by two" in out
    assert mmlearn.check(temp_check, lambda x: x.reshape(1, -1)) is False
    assert "expected shape (3,)" in capsys.readouterr().out
    assert mmlearn.check(temp_check, lambda x: 1 / 0) is False
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert mmlearn.check(temp_check, lambda x: x + x) is True
    assert "correct" in capsys.readouterr().out
    statuses = [json.loads(line)["status"] for line in log.read_text().splitlines()]
    assert statuses == ["not_implemented", "not_implemented", "failed", "failed", "error", "passed"]


def test_unknown_label():
    with pytest.raises(ValueError, match="unknown exercise label"):
        mmlearn.check("ex-no-such-exercise", 1)


def test_duplicate_registration(temp_check):
    with pytest.raises(ValueError, match="already registered"):
        register(temp_check)(lambda answer: None)


def test_expect_helpers():
    expect_number(4.0, 4.2, what="x", tol=0.5)
    with pytest.raises(CheckFailed, match="too high"):
        expect_number(5.0, 4.0, what="x", tol=0.5)
    with pytest.raises(CheckFailed, match="expected a number"):
        expect_number("four", 4.0, what="x", tol=0.5)
    with pytest.raises(CheckFailed, match="expected a tensor"):
        expect_close([1.0], torch.ones(1), what="x")
    with pytest.raises(CheckFailed, match="not within tolerance"):
        expect_close(1.5, 1.0, what="x")
    with pytest.raises(CheckFailed, match="expected 'a'"):
        expect_equal("b", "a", what="x")
    assert call_student(lambda a, b: a + b, 1, 2, what="x") == 3
    with pytest.raises(CheckFailed, match="case 1: your function raised ZeroDivisionError"):
        call_student(lambda: 1 / 0, what="case 1")
    with pytest.raises(NotImplementedError):
        call_student(lambda: (_ for _ in ()).throw(NotImplementedError), what="x")

    def strict(x):
        if x < 0:
            raise ValueError("negative")
        return x

    expect_value_error(strict, -1, what="-1")
    with pytest.raises(CheckFailed, match="-1 should raise a ValueError, but your function returned"):
        expect_value_error(abs, -1, what="-1")
    with pytest.raises(CheckFailed, match="raised TypeError; expected a ValueError"):
        expect_value_error(strict, "a", what="'a'")


def test_every_registered_check_rejects_a_stub():
    """Each chapter's check must answer 'not implemented yet' for a stub, never crash."""
    labels = checks.registered()
    assert "ex-ch00-matmul" in labels

    def stub(*args, **kwargs):
        raise NotImplementedError

    for label in labels:
        status, _ = checks._verdict(checks._REGISTRY[label], stub)
        assert status in {"not_implemented", "failed", "error"}, label
        status, _ = checks._verdict(checks._REGISTRY[label], ...)
        assert status == "not_implemented", label
