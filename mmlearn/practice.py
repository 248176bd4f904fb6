"""Tools for a complete project (chapter 8): evaluation, early stopping, checkpoints, and a toy
multimodal "diagnosis" dataset.

* :func:`confusion_matrix` — counts of (true class, predicted class) pairs;
* :class:`EarlyStopping` — stop when the validation score has not improved for ``patience`` epochs;
* :func:`save_checkpoint` / :func:`load_checkpoint` — ``torch.save`` a state dict and restore it with
  ``torch.load(weights_only=True)`` (never unpickle arbitrary objects from a file);
* :func:`fit_early_stopping` — the training loop of :func:`mmlearn.train.fit` plus validation-based
  early stopping and a checkpoint of the best epoch; :func:`markdown_table` for result tables;
* :func:`make_patients` — **a teaching toy, not medical data and not medical advice**: synthetic
  "patients" made from the real MRI slice that ships with matplotlib (:func:`mmlearn.data.load_mri`),
  randomly warped, with or without a synthetic lesion, plus a short record text and three lab values.
  The label needs more than one modality: ``positive = lesion AND (marker high OR seizure)``;
* :func:`roc_auc` and :func:`membership_advantage` — scoring a membership-inference attack (the AUC and the
  best TPR − FPR); :func:`integrated_gradients` — attributions along a straight path from a baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmlearn._validate import require_int, require_positive, require_rank, require_tensor
from mmlearn.device import get_device
from mmlearn.train import History, evaluate

__all__ = [
    "confusion_matrix", "EarlyStopping", "save_checkpoint", "load_checkpoint", "fit_early_stopping", "markdown_table",
    "Patients", "make_patients", "radiology_note", "lab_report", "stringify", "LAB_NAMES", "LAB_UNITS",
    "MARKER_HIGH", "NOTE_MIN_RADIUS_MM", "SYMPTOMS",
    "roc_auc", "membership_advantage", "integrated_gradients",
]

# ---- evaluation ----------------------------------------------------------------------------------


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``M[i, j]`` = number of examples of true class ``i`` predicted as class ``j``: ``(C, C)`` int64.

    .. math:: M_{ij} = \\sum_n \\mathbb{1}[y_n = i]\\,\\mathbb{1}[\\hat y_n = j]

    ``pred`` is predicted labels ``(N,)`` or logits ``(N, C)``; ``target`` is ``(N,)``. The diagonal
    holds the correct predictions, so ``M.trace() / M.sum()`` is the accuracy.
    """
    require_tensor(pred, "pred")
    target = require_rank(target, "target", 1, "(N,) class indices")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred = pred.argmax(-1) if pred.ndim == 2 else pred
    if pred.shape != target.shape:
        raise ValueError(f"pred must be (N,) labels or (N, C) logits with N = {len(target)}, got {tuple(pred.shape)}")
    both = torch.cat([pred.flatten(), target.flatten()])
    if both.numel() and (both.min() < 0 or both.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(both.min())}, {int(both.max())}]")
    flat = target.long() * num_classes + pred.long()                    # (N,) cell index i*C + j
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


class EarlyStopping:
    """Track a validation score; ``step(score)`` returns True when it improved (save a checkpoint then).

    An improvement is ``score > best + min_delta`` (``mode="max"``) or ``score < best - min_delta``
    (``mode="min"``). ``should_stop`` becomes True after ``patience`` epochs without one.
    """

    def __init__(self, patience: int = 3, *, mode: str = "max", min_delta: float = 0.0) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int, got {patience!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        require_positive(min_delta, "min_delta", allow_zero=True)
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.best_epoch, self.epoch, self.bad_epochs = -1, -1, 0

    def step(self, score: float) -> bool:
        self.epoch += 1
        score = float(score)
        sign = 1.0 if self.mode == "max" else -1.0
        improved = self.best is None or sign * (score - self.best) > self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = score, self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra: Any) -> Path:
    """``torch.save`` the model's (and optimiser's) state dict plus ``extra`` plain values.

    ``extra`` must hold what ``torch.load(weights_only=True)`` accepts: numbers, strings, lists,
    dicts and tensors (turn a config dataclass into a dict with ``dataclasses.asdict``).
    """
    path = Path(path)
    state = {"model": model.state_dict(), "extra": extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    *, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """Restore a :func:`save_checkpoint` file into ``model`` (and ``optimizer``); return its ``extra``.

    Uses ``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain values, never code.
    """
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return state["extra"]


# ---- training with early stopping ----------------------------------------------------------------


def _train_one_epoch(model: nn.Module, loader: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                     device: torch.device, history: History) -> float:
    """One pass over ``loader`` (batches ``(*inputs, target)``); returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        *inputs, target = (t.to(device) for t in batch)
        loss = loss_fn(model(*inputs), target)       # 1. forward
        optimizer.zero_grad(set_to_none=True)
        loss.backward()                              # 2. backward
        optimizer.step()                             # 3. update
        value = loss.item()
        history.step_loss.append(value)
        total, count = total + value * len(target), count + len(target)
    return total / max(count, 1)


def fit_early_stopping(model: nn.Module, train_loader: Iterable, val_loader: Iterable, loss_fn: Callable,
                       optimizer: torch.optim.Optimizer, *, max_epochs: int, patience: int = 3,
                       checkpoint: str | Path, metrics: Mapping[str, Callable] | None = None,
                       device: torch.device | None = None, progress: bool = True) -> History:
    """Train until the validation loss has not improved for ``patience`` epochs, saving the best model
    to ``checkpoint`` (:func:`save_checkpoint`) and restoring it at the end; returns the :class:`History`."""
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
    device = device or get_device()
    model.to(device)
    history, stopper = History(), EarlyStopping(patience, mode="min")
    start = time.perf_counter()
    with tqdm(range(max_epochs), disable=not progress, desc="epochs", unit="epoch") as bar:
        for epoch in bar:
            history.train_loss.append(_train_one_epoch(model, train_loader, loss_fn, optimizer, device, history))
            scores = evaluate(model, val_loader, loss_fn, device=device, metrics=metrics)
            history.val_loss.append(scores.pop("loss"))
            for name, value in scores.items():
                history.val_metrics.setdefault(name, []).append(value)
            if stopper.step(history.val_loss[-1]):
                save_checkpoint(checkpoint, model, optimizer, epoch=epoch)
            bar.set_postfix(val_loss=f"{history.val_loss[-1]:.4f}", best_epoch=stopper.best_epoch)
            if stopper.should_stop:
                break
    load_checkpoint(checkpoint, model, map_location=device)
    history.seconds = time.perf_counter() - start
    return history


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, digits: int = 3) -> str:
    """A Markdown table (show it with ``IPython.display.Markdown``); floats rounded to ``digits``."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row must have {len(header)} cells, got lengths {[len(r) for r in rows]}")
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


# ---- a toy multimodal diagnosis dataset (synthetic; not medical data, not medical advice) ---------

LAB_NAMES = ("marker", "glucose", "wbc")
LAB_UNITS = ("mg/L", "mmol/L", "10^9/L")
MARKER_HIGH = 5.0          # upper limit of the marker's reference range: "high" above it
NOTE_MIN_RADIUS_MM = 10.0  # the templated radiology note only mentions lesions at least this large
MM_PER_BASE_PIXEL = 1.0    # the 256-pixel MRI slice is taken to span 256 mm
SYMPTOMS = ("headache", "nausea", "dizziness", "fatigue", "blurred vision", "fever")
_BRAIN = (-0.30, -0.02, 0.24, 0.34)  # ellipse (y, x, semi-axis y, semi-axis x) inside the brain, in [-1, 1]
_WINDOW = (-0.02, -0.30, 0.45)       # the view: centre x, centre y, half-width, in the slice's [-1, 1]


@dataclass
class Patients:
    """Synthetic patients: image ``(N, 1, S, S)`` in [0, 1], ``records``, ``labs`` ``(N, 3)``, ``notes``.

    Ground truth: ``lesion`` (bool), ``lesion_mm`` (radius; 0 without lesion), ``marker_high``,
    ``seizure`` (bool) and ``labels`` = lesion AND (marker_high OR seizure), int64 in {0, 1}.
    """

    images: torch.Tensor
    records: list[str]
    labs: torch.Tensor
    notes: list[str]
    lesion: torch.Tensor
    lesion_mm: torch.Tensor
    marker_high: torch.Tensor
    seizure: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int | slice | torch.Tensor | list[int]) -> Patients:
        """A subset (an int gives a subset of one patient)."""
        rows = torch.arange(len(self))[idx].reshape(-1)                             # (M,)
        pick = lambda v: v[rows] if isinstance(v, torch.Tensor) else [v[i] for i in rows.tolist()]
        return Patients(*(pick(getattr(self, f.name)) for f in fields(self)))


def _affines(rng: np.random.Generator, n: int) -> torch.Tensor:
    """Random views (N, 2, 3) of the brain window: rotation ±8°, scale 0.92–1.08, shift ±0.06."""
    angle = np.deg2rad(rng.uniform(-8, 8, n))
    scale = _WINDOW[2] * rng.uniform(0.92, 1.08, n)
    shift = rng.uniform(-0.06, 0.06, (n, 2)) + np.array(_WINDOW[:2])
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)
    return torch.from_numpy(theta).float()


def _lesion_centres(rng: np.random.Generator, n: int) -> torch.Tensor:
    """Uniform points (N, 2) as (x, y) in the brain ellipse, in the slice's [-1, 1] coordinates."""
    r, phi = np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
    cy, cx, ay, ax = _BRAIN
    return torch.from_numpy(np.stack([cx + ax * r * np.cos(phi), cy + ay * r * np.sin(phi)], 1)).float()


def _scans(rng: np.random.Generator, n: int, size: int, lesion: np.ndarray, lesion_mm: np.ndarray) -> torch.Tensor:
    """Warp the MRI slice per patient, paint a bright soft disk where there is a lesion, add noise."""
    from mmlearn.data import load_mri

    base = F.avg_pool2d(load_mri()[None] / 215.0, 2)                            # (1, 1, 128, 128) anti-aliased
    grid = F.affine_grid(_affines(rng, n), [n, 1, size, size], align_corners=False)   # (N, S, S, 2) slice coords
    images = F.grid_sample(base.expand(n, -1, -1, -1), grid, align_corners=False)    # (N, 1, S, S)
    centre = _lesion_centres(rng, n)[:, None, None, :]                           # (N, 1, 1, 2)
    radius = torch.from_numpy(lesion_mm / MM_PER_BASE_PIXEL / 128).float()       # slice units (2 = 256 px)
    dist = (grid - centre).norm(dim=-1)[:, None] - radius[:, None, None, None]   # (N, 1, S, S) signed
    pixel = 2.0 * _WINDOW[2] / size                                              # one output pixel
    disk = (0.5 - dist / pixel).clamp(0, 1) * torch.from_numpy(lesion)[:, None, None, None]
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (n, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.normal(0, 0.03, (n, 1, size, size))).float()
    return (images * gain + 0.45 * disk + noise).clamp(0, 1)


def _record(rng: np.random.Generator, seizure: bool) -> str:
    """A short record: age, sex, symptoms (the seizure, if any, among them), maybe a denial."""
    age, sex, days = int(rng.integers(25, 85)), ("male", "female")[int(rng.integers(2))], int(rng.integers(1, 15))
    symptoms = [s for s in SYMPTOMS if rng.random() < 0.3] or [SYMPTOMS[int(rng.integers(len(SYMPTOMS)))]]
    if seizure:
        symptoms.insert(int(rng.integers(len(symptoms) + 1)), "a seizure")
    verb = ("presenting with", "reports", "complains of")[int(rng.integers(3))]
    text = f"{age}-year-old {sex} {verb} {', '.join(symptoms)} for {days} day{'s' * (days > 1)}."
    if not seizure and rng.random() < 0.3:
        text += " Denies any seizure."
    return text


def radiology_note(lesion_mm: float) -> str:
    """The templated note a hurried reader writes: lesions below NOTE_MIN_RADIUS_MM go unmentioned."""
    if lesion_mm >= NOTE_MIN_RADIUS_MM:
        return f"focal hyperintense lesion, about {2 * round(lesion_mm)} mm."
    return "no acute findings."


def lab_report(labs: torch.Tensor) -> str:
    """Lab values as text, with the laboratory's flag: ``marker 7.3 mg/L (high), glucose ..., wbc ...``."""
    parts = []
    for name, unit, value in zip(LAB_NAMES, LAB_UNITS, labs.tolist()):
        flag = " (high)" if name == "marker" and value > MARKER_HIGH else ""
        parts.append(f"{name} {value:.1f} {unit}{flag}")
    return ", ".join(parts)


def make_patients(n: int, *, image_size: int = 32, seed: int = 0, p_lesion: float = 0.5,
                  p_seizure: float = 0.3) -> Patients:
    """``n`` synthetic patients (a teaching toy). Lesion radius U(4, 16) mm; marker log-normal around 5."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    lesion = rng.random(n) < p_lesion
    lesion_mm = np.where(lesion, rng.uniform(4.0, 16.0, n), 0.0)
    seizure = rng.random(n) < p_seizure
    marker = np.exp(rng.normal(math.log(MARKER_HIGH), 0.5, n))
    labs = torch.from_numpy(np.stack([marker, rng.normal(5.5, 0.8, n), rng.normal(7.0, 1.8, n).clip(1)], 1)).float()
    images = _scans(rng, n, image_size, lesion, lesion_mm)
    high = torch.from_numpy(marker > MARKER_HIGH)
    t = lambda a: torch.from_numpy(a)
    labels = (t(lesion) & (high | t(seizure))).long()
    return Patients(images, [_record(rng, bool(s)) for s in seizure], labs,
                    [radiology_note(float(r)) for r in lesion_mm], t(lesion), t(lesion_mm).float(),
                    high, t(seizure), labels)


def stringify(patients: Patients) -> list[str]:
    """The "paste everything into a prompt" view of each patient (source 003's approach)."""
    return [f"Diagnose the following patient: {r} MRI image: {note} Blood test: {lab_report(lab)}."
            for r, note, lab in zip(patients.records, patients.notes, patients.labs)]


# ---- privacy and interpretability (08_practice_trust) ---------------------------------------------


def _scores_and_labels(scores: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    scores = require_rank(scores, "scores", 1, "(N,)")
    labels = require_rank(labels, "labels", 1, "(N,)")
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same shape, got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must contain only 0 and 1")
    if int(labels.sum()) in (0, len(labels)):
        raise ValueError(f"labels must contain both classes, got {int(labels.sum())} ones out of {len(labels)}")
    return scores.double(), labels.bool()


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve, by the Mann–Whitney statistic (ties count one half):

    AUC = (1 / (n_1 n_0)) Σ_{i: y_i = 1} Σ_{j: y_j = 0} ( [s_i > s_j] + ½ [s_i = s_j] ),

    the probability that a random positive scores above a random negative. ``scores`` ``(N,)``,
    ``labels`` ``(N,)`` of 0/1 with both classes present.
    """
    s, y = _scores_and_labels(scores, labels)
    pos, neg = s[y], s[~y]                                                  # (n1,), (n0,)
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return ((greater + 0.5 * ties) / (len(pos) * len(neg))).item()


def membership_advantage(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Best advantage of a threshold attack: max over thresholds t of TPR(t) − FPR(t), where the attack says
    "positive" when s ≥ t, TPR(t) = #{y = 1, s ≥ t} / n_1 and FPR(t) = #{y = 0, s ≥ t} / n_0
    (Youden's J statistic; 0 for the attack that never says "positive")."""
    s, y = _scores_and_labels(scores, labels)
    thresholds = torch.unique(s)                                            # (K,) every distinct score
    hit = s[None, :] >= thresholds[:, None]                                 # (K, N)
    tpr = (hit & y).double().sum(1) / y.sum()
    fpr = (hit & ~y).double().sum(1) / (~y).sum()
    return max(0.0, (tpr - fpr).max().item())


def integrated_gradients(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor,
                         steps: int = 64) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al., 2017) of a scalar-per-example function ``f``:

    IG_i(x) = (x_i − x'_i) ∫_0^1 ∂f(x' + α (x − x')) / ∂x_i dα,

    the integral by the trapezoid rule on ``steps`` equal intervals. ``x`` and ``baseline`` ``(B, ...)``;
    ``f`` maps ``(B, ...)`` to ``(B,)``. Completeness: Σ_i IG_i = f(x) − f(x') up to the quadrature error.
    """
    x, baseline = require_tensor(x, "x"), require_tensor(baseline, "baseline")
    if x.shape != baseline.shape:
        raise ValueError(f"baseline must have the shape of x {tuple(x.shape)}, got {tuple(baseline.shape)}")
    steps = require_int(steps, "steps")
    alphas = torch.linspace(0, 1, steps + 1, dtype=x.dtype, device=x.device)
    weights = torch.full_like(alphas, 1.0 / steps)
    weights[0] = weights[-1] = 0.5 / steps                                  # trapezoid weights, sum to 1
    total = torch.zeros_like(x)
    for a, w in zip(alphas, weights):
        point = (baseline + a * (x - baseline)).detach().requires_grad_(True)
        out = f(point)
        if out.shape != x.shape[:1]:
            raise ValueError(f"f must return one value per example, shape {tuple(x.shape[:1])}, got {tuple(out.shape)}")
        total += w * torch.autograd.grad(out.sum(), point)[0]
    return (x - baseline) * total
