"""Numbers the prose quotes, and claims the notebooks assert: one mechanism for both.

Every number a page quotes comes from the code that computes it::

    mmlearn.glue("val_acc", acc, "{:.2f}")            # prose: {glue:text}`val_acc`
    mmlearn.claim("exact_match", exact, at_least=0.95) # assert + glue + log

:func:`glue` hands the formatted value to myst-nb's ``glue``, so the page and the output can never
disagree. :func:`claim` also asserts a threshold, with a message that says what was measured and
what was required. When ``MMLEARN_CLAIMS_LOG`` names a file, both append one JSON line per call
(name, value, thresholds); ``python3 dev.py robustness`` reads those lines to report every
asserted metric under other seeds and thread counts, and ``--record`` keeps their distribution in
``benchmarks/results/claims.json``, from which the thresholds are set.
"""

from __future__ import annotations

import json
import math
import os
from numbers import Real

__all__ = ["claim", "glue"]


class _Shown:
    """A value whose text representation is the book's chosen format (what ``{glue:text}`` prints).

    myst-nb passes the stored text through ``ast.literal_eval`` before printing it, which would turn
    ``0.930`` into ``0.93`` and ``1,000`` into ``(1, 0)``: the repr is therefore the *quoted* string,
    which literal_eval turns back into exactly the formatted text.
    """

    def __init__(self, value: object, fmt: str) -> None:
        self.value, self.fmt = value, fmt

    def __repr__(self) -> str:
        return repr(self.fmt.format(self.value))


def _as_number(name: str, value: object) -> float | object:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()  # a one-element tensor or NumPy scalar
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value) if not isinstance(value, int) else value
    if isinstance(value, str):
        return value
    raise ValueError(f"{name}: expected a number or a string, got {type(value).__name__}")


def _log(record: dict) -> None:
    path = os.environ.get("MMLEARN_CLAIMS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def glue(name: str, value: object, fmt: str = "{}") -> object:
    """Store ``value`` under ``name`` for the prose (``{glue:text}`name` ``), formatted with ``fmt``.

    Returns ``value`` unchanged. Outside a myst-nb build (e.g. on Colab without myst-nb) only the
    log line is written; the notebook's own printed output still shows the number.
    """
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"glue name must be letters, digits, '_' or '-', got {name!r}")
    number = _as_number(name, value)
    text = fmt.format(number)
    _log({"name": name, "value": number, "text": text})
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:
        return value
    _myst_glue(name, _Shown(number, fmt), display=False)
    return value


def claim(name: str, value: object, *, at_least: float | None = None, at_most: float | None = None,
          fmt: str = "{:.3g}") -> object:
    """Assert ``at_least <= value <= at_most``, glue ``value`` under ``name`` and log it.

    The thresholds are constants of the text, set from the value's distribution over seeds
    (``benchmarks/results/claims.json``) with a margin. Returns ``value``.
    """
    if at_least is None and at_most is None:
        raise ValueError(f"claim {name!r}: give at_least, at_most or both")
    number = _as_number(name, value)
    if not isinstance(number, (int, float)) or math.isnan(number):
        raise ValueError(f"claim {name!r}: expected a real number, got {value!r}")
    ok = (at_least is None or number >= at_least) and (at_most is None or number <= at_most)
    _log({"name": name, "value": number, "at_least": at_least, "at_most": at_most, "ok": ok})
    glue(name, number, fmt)
    if not ok:
        bounds = " and ".join(f"{op} {b}" for op, b in ((">=", at_least), ("<=", at_most)) if b is not None)
        raise AssertionError(f"claim {name!r} does not hold: measured {fmt.format(number)}, required {bounds}")
    return value
