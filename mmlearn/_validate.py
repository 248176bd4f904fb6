"""Input checks shared by every module: clear ``ValueError``s naming expected vs got."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch


def require_tensor(x: object, name: str) -> torch.Tensor:
    """Raise unless ``x`` is a ``torch.Tensor``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def require_rank(x: object, name: str, ranks: int | Iterable[int], layout: str) -> torch.Tensor:
    """Raise unless ``x`` is a tensor whose ``ndim`` is in ``ranks``; ``layout`` names the axes."""
    x = require_tensor(x, name)
    allowed = {ranks} if isinstance(ranks, int) else set(ranks)
    if x.ndim not in allowed:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
    return x


def require_min_rank(x: object, name: str, min_rank: int, layout: str) -> torch.Tensor:
    """Raise unless ``x`` is a tensor with at least ``min_rank`` dimensions."""
    x = require_tensor(x, name)
    if x.ndim < min_rank:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
    return x


def require_floating(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise unless ``x`` has a floating-point dtype."""
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must have a floating-point dtype, got {x.dtype}")
    return x


def require_dim(x: torch.Tensor, name: str, axis: int, size: int, what: str) -> torch.Tensor:
    """Raise unless ``x.shape[axis] == size``; ``what`` says which size it must match."""
    if x.shape[axis] != size:
        raise ValueError(f"{name} must have size {size} on axis {axis} ({what}), got shape {tuple(x.shape)}")
    return x


def require_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Raise unless ``value`` > 0 (or ≥ 0 with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def require_in(value: object, name: str, choices: Iterable[object]) -> object:
    """Raise unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def require_int(value: object, name: str, low: int = 1, high: int | None = None) -> int:
    """Raise unless ``value`` is an integer (not a bool) with ``low <= value`` (``<= high`` if given)."""
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int {bound}, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)
