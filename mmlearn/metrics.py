"""Evaluation metrics."""

from __future__ import annotations

import torch

from mmlearn._validate import require_tensor


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of correct predictions: mean(argmax(output) == target).

    ``output`` is either logits ``(N, C)`` or predicted labels ``(N,)``; ``target`` is ``(N,)``.
    """
    output, target = require_tensor(output, "output"), require_tensor(target, "target")
    pred = output.argmax(dim=-1) if output.ndim == target.ndim + 1 else output
    if pred.shape != target.shape:
        raise ValueError(f"output must be (N, C) logits or (N,) labels matching target {tuple(target.shape)}, "
                         f"got shape {tuple(output.shape)}")
    if target.numel() == 0:
        raise ValueError("accuracy of an empty batch is undefined: got 0 targets")
    return (pred == target).float().mean().item()
