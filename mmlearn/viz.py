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
            ax.imshow(img.squeeze(-1), cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
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
