"""Exercise checks: ``mmlearn.check("<exercise label>", answer)``.

Each chapter registers its checks in ``mmlearn/checks/chNN_<topic>.py`` with :func:`register`.
A check runs the student's answer on fresh random cases (or compares a number with a
tolerance) and raises :class:`CheckFailed` with specific, kind feedback — which case failed,
expected vs got — and never the solution. :func:`check` prints the verdict and returns a bool.

When the environment variable ``MMLEARN_CHECK_LOG`` names a file, every verdict is appended to
it as one JSON line; the grading tool (``tools/grade.py``) reads those lines.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


class CheckFailed(Exception):
    """Raised by a check with a message for the student (what failed, expected vs got)."""


@dataclass(frozen=True)
class Check:
    label: str
    run: Callable[[Any], None]
    hint: str


_REGISTRY: dict[str, Check] = {}
_LOADED = False
STATUSES = ("passed", "failed", "not_implemented", "error")


def register(label: str, *, hint: str = "") -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Decorator: register ``fn(answer)`` as the check of exercise ``label``."""
    def decorate(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        if label in _REGISTRY and _REGISTRY[label].run is not fn:
            raise ValueError(f"a check for exercise {label!r} is already registered")
        _REGISTRY[label] = Check(label, fn, hint)
        return fn
    return decorate


def _load_all() -> None:
    """Import every ``mmlearn.checks.*`` module once, so their checks register themselves."""
    global _LOADED
    if _LOADED:
        return
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    _LOADED = True


def registered() -> list[str]:
    """All exercise labels that have a check."""
    _load_all()
    return sorted(_REGISTRY)


def _is_stub(answer: Any) -> bool:
    return answer is Ellipsis or answer is None


def _verdict(spec: Check, answer: Any) -> tuple[str, str]:
    """Run one check; return (status, message)."""
    if _is_stub(answer):
        return "not_implemented", "not implemented yet: fill in the starting cell above, then run this cell again."
    try:
        spec.run(answer)
    except NotImplementedError:
        return "not_implemented", "not implemented yet: your function still raises NotImplementedError."
    except CheckFailed as failure:
        return "failed", str(failure)
    except Exception as error:  # the student's code crashed: say where, kindly, without a traceback
        return "error", f"your code raised {type(error).__name__}: {error}"
    return "passed", "correct — well done!"


def _log(label: str, status: str) -> None:
    path = os.environ.get("MMLEARN_CHECK_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"label": label, "status": status}) + "\n")


def check(label: str, answer: Any) -> bool:
    """Check the answer to exercise ``label``; print specific feedback; return True if it passes."""
    _load_all()
    if label not in _REGISTRY:
        raise ValueError(f"unknown exercise label {label!r}; expected one of {sorted(_REGISTRY)}")
    spec = _REGISTRY[label]
    status, message = _verdict(spec, answer)
    symbol = {"passed": "✅", "not_implemented": "⏳"}.get(status, "❌")
    print(f"{symbol} [{label}] {message}")
    if status in ("failed", "error") and spec.hint:
        print(f"   Hint: {spec.hint}")
    _log(label, status)
    return status == "passed"


# ---- helpers for writing checks ----------------------------------------------------------------

def fresh_generator() -> torch.Generator:
    """A torch.Generator with a fresh random seed: new cases on every call, without touching (and so
    without breaking the determinism of) the global RNG the notebook seeded."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def call_student(fn: Callable, *args: Any, what: str) -> Any:
    """Call the student's function; a crash becomes specific feedback (NotImplementedError passes through)."""
    try:
        return fn(*args)
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        raise CheckFailed(f"{what}: your function raised {type(error).__name__}: {error}") from None


def expect_value_error(fn: Callable, *args: Any, what: str) -> None:
    """Fail unless ``fn(*args)`` raises ValueError (bad input must be rejected loudly)."""
    try:
        fn(*args)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as error:
        raise CheckFailed(f"{what} raised {type(error).__name__}; expected a ValueError") from None
    raise CheckFailed(f"{what} should raise a ValueError, but your function returned")


def expect_close(got: Any, expected: Any, *, what: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Fail with a precise message unless ``got`` ≈ ``expected`` (numbers or tensors)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what}: expected a tensor of shape {tuple(expected.shape)}, got {_describe(got)}")
        if got.shape != expected.shape:
            raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
        got_c = got.detach().to(expected.device, expected.dtype)
        if not torch.allclose(got_c, expected, atol=atol, rtol=rtol, equal_nan=False):
            err = (got_c - expected).abs()
            i = int(torch.nan_to_num(err, nan=float("inf")).flatten().argmax())
            idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), expected.shape))
            raise CheckFailed(f"{what}: values differ; at index {idx} expected {expected[idx].item():.6g}, "
                              f"got {got_c[idx].item():.6g}")
        return
    try:
        g = float(got)
    except (TypeError, ValueError):
        raise CheckFailed(f"{what}: expected a number close to the right value, got {_describe(got)}") from None
    e = float(expected)
    if not abs(g - e) <= atol + rtol * abs(e):
        raise CheckFailed(f"{what}: got {g:.6g}, which is not within tolerance of the expected value")


def expect_number(got: Any, expected: float, *, what: str, tol: float) -> None:
    """Fail unless ``got`` is within ``tol`` of ``expected``; say whether it is too high or too low."""
    try:
        g = float(got)
    except (TypeError, ValueError):
        raise CheckFailed(f"{what}: expected a number, got {_describe(got)}") from None
    if abs(g - expected) > tol:
        direction = "too high" if g > expected else "too low"
        raise CheckFailed(f"{what}: {g:.6g} is {direction} (tolerance ±{tol:g})")


def expect_equal(got: Any, expected: Any, *, what: str) -> None:
    """Fail unless ``got == expected`` (exact, for ints, strings, lists)."""
    if got != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {got!r}")
