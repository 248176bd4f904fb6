"""Plotting helpers shared by the chapters (matplotlib only)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from mmlearn._validate import require_rank
from mmlearn.train import History


def show_images(images: torch.Tensor, titles: Sequence[str] | None = None, *, ncols: int = 8,
                size: float = 1.6) -> plt.Figure:
    """Show a batch of images ``(N, C, H, W)`` (C = 1 or 3, values in [0, 1]) in a grid."""
    images = require_rank(images, "images", (3, 4), "(N, C, H, W) or (C, H, W)")
    if images.ndim == 3:
        images = images[None]
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles must have one entry per image ({len(images)}), got {len(titles)}")
    n = len(images)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
            gray = img.shape[-1] == 1
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def plot_history(history: History, *, title: str | None = None) -> plt.Figure:
    """Loss per step and per epoch (train and validation), plus every validation metric."""
    if not isinstance(history, History):
        raise ValueError(f"history must be an mmlearn.train.History, got {type(history).__name__}")
    ncols = 2 if history.val_metrics else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.4), squeeze=False)
    ax = axes[0, 0]
    steps_per_epoch = max(len(history.step_loss) // max(history.epochs, 1), 1)
    ax.plot([s / steps_per_epoch for s in range(len(history.step_loss))], history.step_loss,
            alpha=0.35, lw=0.8, label="train (per step)")
    epochs = range(1, history.epochs + 1)
    ax.plot(epochs, history.train_loss, "o-", label="train (epoch mean)")
    if history.val_loss:
        ax.plot(epochs, history.val_loss, "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="loss", title=title or "loss")
    ax.legend()
    if history.val_metrics:
        ax = axes[0, 1]
        for name, values in history.val_metrics.items():
            ax.plot(epochs, values, "o-", label=name)
        ax.set(xlabel="epoch", title="validation metrics")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_computation_graph(root, *, ax: plt.Axes | None = None, show_grad: bool = True,
                           title: str | None = None) -> plt.Figure:
    """Draw the graph behind an ``mmlearn.autograd.Value``: inputs on the left, ``root`` on the right.

    Each node is a box with its label and operation, its ``data`` and (``show_grad``) its ``grad``;
    lines join each operation to its inputs. Column = length of the longest path from an input.
    """
    if not hasattr(root, "topological_order"):
        raise ValueError(f"root must be an mmlearn.autograd.Value, got {type(root).__name__}")
    order = root.topological_order()                       # every input before the nodes that use it
    depth: dict[int, int] = {}
    for node in order:
        depth[id(node)] = 1 + max((depth[id(c)] for c in node._prev), default=-1)
    columns: dict[int, list] = {}
    for node in order:
        columns.setdefault(depth[id(node)], []).append(node)
    pos = {id(n): (d, (len(col) - 1) / 2 - i) for d, col in columns.items() for i, n in enumerate(col)}
    if ax is None:
        height = max(len(col) for col in columns.values())
        _, ax = plt.subplots(figsize=(2.1 * len(columns) + 0.5, 1.1 * height + 0.8))
    for node in order:
        for child in node._prev:
            (x0, y0), (x1, y1) = pos[id(child)], pos[id(node)]
            ax.plot([x0, x1], [y0, y1], color="0.55", lw=1, zorder=1)
            ax.annotate("", xy=((x0 + x1) / 2, (y0 + y1) / 2), xytext=(x0, y0), zorder=1,
                        arrowprops=dict(arrowstyle="-|>", color="0.55", lw=1))
    for node in order:
        head = " ".join(s for s in (node.label, f"[{node._op}]" if node._op else "") if s) or "const"
        text = f"{head}\ndata {node.data:.4g}" + (f"\ngrad {node.grad:.4g}" if show_grad else "")
        color = "#dbe9f6" if not node._prev else ("#fde2c8" if node is root else "#e8e8e8")
        ax.text(*pos[id(node)], text, ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round,pad=0.35", fc=color, ec="0.4"))
    ax.set_xlim(-0.6, max(columns) + 0.6)
    ax.set_ylim(min(p[1] for p in pos.values()) - 0.6, max(p[1] for p in pos.values()) + 0.6)
    ax.axis("off")
    ax.set_title(title or "computation graph (inputs left, output right)")
    return ax.figure


def plot_attention(weights: torch.Tensor, *, rows: Sequence[str] | None = None, cols: Sequence[str] | None = None,
                   title: str | None = None, ax: plt.Axes | None = None, cmap: str = "viridis",
                   annotate: bool = False, colorbar: bool = True) -> plt.Figure:
    """Heatmap of attention weights (or a boolean mask) ``(L, S)``: row i = query i, column j = key j.

    ``rows`` / ``cols`` label the queries and keys (e.g. tokens); ``annotate`` writes each value in its cell.
    """
    weights = require_rank(weights, "weights", 2, "(L, S)").detach().float().cpu().numpy()
    L, S = weights.shape
    if rows is not None and len(rows) != L:
        raise ValueError(f"rows must have one label per query ({L}), got {len(rows)}")
    if cols is not None and len(cols) != S:
        raise ValueError(f"cols must have one label per key ({S}), got {len(cols)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(2.5, 0.45 * S + 1.5), max(2.0, 0.4 * L + 1.0)))
    image = ax.imshow(weights, cmap=cmap, vmin=0, vmax=max(1.0, float(weights.max())), aspect="auto")
    ax.set_xticks(range(S), cols if cols is not None else range(S), rotation=90 if cols is not None else 0)
    ax.set_yticks(range(L), rows if rows is not None else range(L))
    ax.set(xlabel="key", ylabel="query")
    if title:
        ax.set_title(title)
    if annotate:
        for i in range(L):
            for j in range(S):
                value = float(weights[i, j])
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.5 else "black")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax.figure


def plot_confusion_matrix(matrix: torch.Tensor, labels: Sequence[str], *, title: str | None = None,
                          ax: plt.Axes | None = None) -> plt.Figure:
    """A confusion matrix ``(C, C)`` (row = true class, column = predicted), shaded by row fraction, with counts."""
    matrix = require_rank(matrix, "matrix", 2, "(C, C)")
    if matrix.shape[0] != matrix.shape[1] or len(labels) != matrix.shape[0]:
        raise ValueError(f"matrix must be (C, C) with one label per class, got shape {tuple(matrix.shape)} "
                         f"and {len(labels)} labels")
    counts = matrix.detach().cpu()
    rows = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)        # fraction of each true class
    if ax is None:
        size = 1.0 + 0.55 * len(labels)
        _, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "confusion matrix")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.figure.tight_layout()
    return ax.figure
