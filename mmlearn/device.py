"""Where tensors live, and how to make runs repeatable.

The book's notebooks never assume a CPU: they ask :func:`get_device` and put every tensor and
model there, so the same notebook runs unchanged on a laptop, a CUDA GPU or Apple silicon.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_KNOWN = ("cpu", "cuda", "mps")


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(prefer: str | None = None) -> torch.device:
    """Return the device to compute on: ``cuda`` > ``mps`` > ``cpu``.

    Order of precedence: the argument ``prefer``, then the environment variable
    ``MMLEARN_DEVICE``, then the fastest available device. Asking for a device that is
    unknown or not available raises ``ValueError`` (we never silently fall back).
    """
    wanted = prefer if prefer is not None else os.environ.get("MMLEARN_DEVICE") or None
    if wanted is None:
        for kind in ("cuda", "mps"):
            if _available(kind):
                return torch.device(kind)
        return torch.device("cpu")
    kind = str(wanted).strip().lower().split(":")[0]
    if kind not in _KNOWN:
        raise ValueError(f"unknown device {wanted!r}: expected one of {', '.join(_KNOWN)} (optionally 'cuda:N')")
    if not _available(kind):
        source = "argument prefer" if prefer is not None else "MMLEARN_DEVICE"
        raise ValueError(f"device {wanted!r} (from {source}) is not available on this machine; "
                         f"available: {', '.join(k for k in _KNOWN if _available(k))}")
    return torch.device(str(wanted).strip().lower())


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and all GPUs)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
