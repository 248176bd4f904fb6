"""mmlearn — the helper package of *Multimodal Models from Scratch*.

Every chapter of the book builds a piece from scratch, checks it against a reference, and then
uses the version kept here. Submodules are imported lazily, so ``import mmlearn`` stays fast::

    import mmlearn
    device = mmlearn.get_device()
    mmlearn.seed_everything(0)
    mmlearn.attention.scaled_dot_product_attention(q, k, v)
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from mmlearn.checks import check
from mmlearn.claims import claim, glue
from mmlearn.device import get_device, seed_everything

__version__ = "0.1.0"

_SUBMODULES = (
    "alignment", "attention", "autograd", "checks", "claims", "data", "device", "features", "fusion", "generation",
    "language_model", "losses",
    "metrics", "models", "optim", "preprocess", "speech", "train", "viz",
)

__all__ = ["__version__", "check", "claim", "full_run", "get_device", "glue", "seed_everything", *_SUBMODULES]


def full_run() -> bool:
    """True when the environment asks for the full-size experiments (``MMLEARN_FULL=1``)."""
    return os.environ.get("MMLEARN_FULL", "0").strip().lower() in {"1", "true", "yes"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"mmlearn.{name}")
    raise AttributeError(f"module 'mmlearn' has no attribute {name!r}")
