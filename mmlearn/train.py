"""A small, readable training loop used from chapter 3 on.

A batch is a tuple ``(*inputs, target)``: the model is called as ``model(*inputs)`` and the loss
as ``loss_fn(output, target)``. Every tensor of the batch is moved to ``device``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from mmlearn.device import get_device

Metric = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass
class History:
    """What :func:`fit` measured: one entry per step (``step_loss``) or per epoch (the rest)."""

    step_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


def _split(batch: Sequence[torch.Tensor], device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(f"a batch must be a tuple (*inputs, target) with at least 2 items, got {type(batch).__name__}")
    *inputs, target = (t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
    return inputs, target


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable, *, device: torch.device | None = None,
             metrics: Mapping[str, Metric] | None = None) -> dict[str, float]:
    """Mean loss (and each metric) over ``loader``, weighted by batch size; the model in eval mode."""
    device = device or get_device()
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {"loss": 0.0, **{k: 0.0 for k in (metrics or {})}}
    count = 0
    for batch in loader:
        inputs, target = _split(batch, device)
        output = model(*inputs)
        n = len(target)
        totals["loss"] += loss_fn(output, target).item() * n
        for name, fn in (metrics or {}).items():
            totals[name] += float(fn(output, target)) * n
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("loader yielded no batches")
    return {k: v / count for k, v in totals.items()}


def _train_epoch(model, loader, loss_fn, optimizer, device, scheduler, history, bar) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        inputs, target = _split(batch, device)
        loss = loss_fn(model(*inputs), target)   # 1. forward
        optimizer.zero_grad(set_to_none=True)
        loss.backward()                          # 2. backward
        optimizer.step()                         # 3. update
        if scheduler is not None:
            scheduler.step()
        value = loss.detach().item()
        history.step_loss.append(value)
        total, count = total + value * len(target), count + len(target)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
    return total / max(count, 1)


def fit(model: nn.Module, train_loader: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer, *,
        epochs: int, device: torch.device | None = None, val_loader: Iterable | None = None,
        metrics: Mapping[str, Metric] | None = None, scheduler=None, progress: bool = True) -> History:
    """Train ``model`` for ``epochs`` epochs; return a :class:`History` (plot it with ``viz.plot_history``)."""
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    device = device or get_device()
    model.to(device)
    history = History()
    start = time.perf_counter()
    steps = epochs * len(train_loader) if hasattr(train_loader, "__len__") else None
    with tqdm(total=steps, disable=not progress, desc="training", unit="step") as bar:
        for _ in range(epochs):
            history.train_loss.append(_train_epoch(model, train_loader, loss_fn, optimizer, device, scheduler,
                                                   history, bar))
            if val_loader is not None:
                scores = evaluate(model, val_loader, loss_fn, device=device, metrics=metrics)
                history.val_loss.append(scores.pop("loss"))
                for name, value in scores.items():
                    history.val_metrics.setdefault(name, []).append(value)
    history.seconds = time.perf_counter() - start
    return history
