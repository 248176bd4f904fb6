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
        wanted = next((kind for kind in ("cuda", "mps") if _available(kind)), "cpu")
    kind = str(wanted).strip().lower().split(":")[0]
    if kind not in _KNOWN:
        raise ValueError(f"unknown device {wanted!r}: expected one of {', '.join(_KNOWN)} (optionally 'cuda:N')")
    if not _available(kind):
        source = "argument prefer" if prefer is not None else "MMLEARN_DEVICE"
        raise ValueError(f"device {wanted!r} (from {source}) is not available on this machine; "
                         f"available: {', '.join(k for k in _KNOWN if _available(k))}")
    device = torch.device(str(wanted).strip().lower())
    if device.type == "cuda":
        use_full_float32()
    return device


def use_full_float32() -> None:
    """Make float32 mean float32 on CUDA: switch off TF32 in matmuls and cuDNN convolutions.

    On Ampere and newer GPUs PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa, relative
    error ~1e-3) by default. The book compares its from-scratch code with PyTorch at float32
    tolerances (~1e-5), and its models are small, so exactness is worth more than TF32's speed.
    ``MMLEARN_TF32=1`` leaves PyTorch's defaults alone.
    """
    if os.environ.get("MMLEARN_TF32", "0").strip() == "1":
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def seed_offset() -> int:
    """The offset added to every :func:`seed_everything` call: ``MMLEARN_SEED`` (default 0).

    Setting ``MMLEARN_SEED=3`` reruns every notebook with other random initialisations (the data
    generators keep their own ``seed=`` arguments, so the data stay the same). A claim the book
    asserts must hold under any offset: that is what ``python3 dev.py robustness`` checks.
    """
    raw = os.environ.get("MMLEARN_SEED", "").strip() or "0"
    if not raw.isdigit():
        raise ValueError(f"MMLEARN_SEED must be a non-negative integer, got {raw!r}")
    return int(raw)


def seed_everything(seed: int = 0) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and all GPUs) with ``seed + MMLEARN_SEED``.

    Returns the seed actually used, so a notebook can print it.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed += seed_offset()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed
