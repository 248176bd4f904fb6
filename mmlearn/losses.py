"""Loss functions built from scratch (chapter 5): cross-entropy, KL divergence, InfoNCE, CLIP, SigLIP.

All are numerically stable: they work in log space through the log-sum-exp trick
``logsumexp(x) = m + log Σ exp(x − m)`` with ``m = max x``, so logits of ±1e4 give finite losses.
"""

from __future__ import annotations

import torch

from mmlearn._validate import (
    require_floating,
    require_in,
    require_min_rank,
    require_positive,
    require_rank,
    require_tensor,
)

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    require_in(reduction, "reduction", _REDUCTIONS)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def _shift_by_max(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x − m, m)`` with ``m = max x`` along ``dim`` (kept); rows that are all −inf shift by 0."""
    x = require_floating(require_min_rank(x, "x", 1, "(..., C)"), "x")
    m = x.amax(dim=dim, keepdim=True).detach()          # the gradient of lse does not depend on m
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return x - m, m


def logsumexp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log Σ_j exp(x_j)`` along ``dim`` without overflow.

    .. math:: \\operatorname{lse}(x) = m + \\log \\sum_j e^{x_j - m}, \\qquad m = \\max_j x_j

    Every ``exp`` argument is ≤ 0, so nothing overflows, and the largest term is exactly 1, so the
    sum is ≥ 1 and its log never underflows to −inf. Rows that are all −inf give −inf.
    """
    shifted, m = _shift_by_max(x, dim)
    return (m + shifted.exp().sum(dim=dim, keepdim=True).log()).squeeze(dim)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log softmax(z)_i = z_i − lse(z) = (z_i − m) − log Σ_j e^{z_j − m}`` — stable, unlike ``softmax(z).log()``.

    Subtracting ``m`` first (rather than ``lse``) keeps small differences exact when the logits are huge.
    """
    shifted, _ = _shift_by_max(logits, dim)
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class scores against targets, from logits (equals ``F.cross_entropy``).

    .. math:: \\ell_n = -\\log \\operatorname{softmax}(z_n)_{y_n} = \\operatorname{lse}(z_n) - z_{n, y_n}

    ``logits`` is ``(N, C)``. ``target`` is either class indices ``(N,)`` (integer dtype, values in
    ``[0, C)``) or class probabilities ``(N, C)`` (floating), for which
    ``ℓ_n = −Σ_c p_{nc} log softmax(z_n)_c``. ``reduction``: ``"mean"`` (default), ``"sum"``, ``"none"``.
    The gradient with respect to the logits is ``(softmax(z_n) − onehot(y_n)) / N`` for the mean.
    """
    logits = require_floating(require_rank(logits, "logits", 2, "(N, C)"), "logits")
    target = require_tensor(target, "target")
    n, c = logits.shape
    log_p = log_softmax(logits, dim=-1)                                   # (N, C)
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"probability targets must be (N, C) = {(n, c)} like logits, got {tuple(target.shape)}")
        loss = -(target * log_p).sum(dim=-1)                              # (N,)
    else:
        if target.shape != (n,):
            raise ValueError(f"class-index target must be (N,) = ({n},), got shape {tuple(target.shape)}")
        if n and (target.min() < 0 or target.max() >= c):
            raise ValueError(f"target classes must be in [0, {c}), got values in "
                             f"[{int(target.min())}, {int(target.max())}]")
        loss = -log_p.gather(1, target.long()[:, None]).squeeze(1)        # (N,)
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(logits: torch.Tensor, target: torch.Tensor,
                                     reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy from a logit ``z`` (equals ``F.binary_cross_entropy_with_logits``).

    .. math:: \\ell = -[y \\log \\sigma(z) + (1-y) \\log(1 - \\sigma(z))] = \\max(z, 0) - z y + \\log(1 + e^{-|z|})

    The right-hand form never evaluates ``exp`` of a positive number. Shapes of ``logits`` and
    ``target`` must match; targets are probabilities in [0, 1].
    """
    logits = require_floating(require_tensor(logits, "logits"), "logits")
    target = require_tensor(target, "target")
    if target.shape != logits.shape:
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    target = target.to(logits.dtype)
    loss = logits.clamp(min=0) - logits * target + torch.log1p((-logits.abs()).exp())
    return _reduce(loss, reduction)


def _require_distribution(p: torch.Tensor, name: str, atol: float) -> torch.Tensor:
    p = require_floating(require_min_rank(p, name, 1, "(..., K)"), name)
    if (p < 0).any():
        raise ValueError(f"{name} must be probabilities ≥ 0, got a minimum of {float(p.min()):.4g}")
    total = p.sum(dim=-1)
    bad = (total - 1).abs() > atol
    if bad.any():
        worst = float(total[bad].flatten()[0])
        raise ValueError(f"{name} must sum to 1 along the last dimension (within {atol:g}), got a sum of {worst:.6g}")
    return p


def kl_divergence(p: torch.Tensor, q: torch.Tensor, *, atol: float = 1e-4) -> torch.Tensor:
    """KL(p ‖ q) between discrete distributions along the last dimension, in nats.

    .. math:: D_{\\mathrm{KL}}(p \\,\\|\\, q) = \\sum_i p_i \\log \\frac{p_i}{q_i}, \\qquad 0 \\log 0 = 0

    ``p`` and ``q`` are probabilities of the same shape ``(..., K)`` that each sum to 1 (within
    ``atol``); returns ``(...)``: one divergence per distribution. It is ``+inf`` where q_i = 0 < p_i.
    Relation to torch: ``kl_divergence(p, q) == F.kl_div(q.log(), p, reduction="none").sum(-1)``, and
    its mean over a batch ``(N, K)`` is ``F.kl_div(q.log(), p, reduction="batchmean")``.
    Not symmetric: KL(p‖q) ≠ KL(q‖p) in general.
    """
    p = _require_distribution(p, "p", atol)
    q = _require_distribution(q, "q", atol)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got p {tuple(p.shape)} and q {tuple(q.shape)}")
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim=-1)          # xlogy(0, ·) = 0


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / ‖x‖₂`` row-wise (equals ``F.normalize(x, dim=-1)``, eps 1e-12)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.1, *,
             normalize: bool = True) -> torch.Tensor:
    """InfoNCE: classify, for each query, its own key among all keys (van den Oord et al.).

    .. math:: \\mathcal{L} = -\\frac1N \\sum_{i=1}^N \\log
              \\frac{\\exp(s(q_i, k_i)/\\tau)}{\\sum_{j=1}^{M} \\exp(s(q_i, k_j)/\\tau)}

    ``query`` is ``(N, d)``, ``keys`` is ``(M, d)`` with ``M ≥ N``: ``keys[i]`` is the positive of
    ``query[i]``, every other key a negative. ``s`` is cosine similarity (``normalize=True``) or the dot
    product. It is ``cross_entropy(logits, arange(N))`` with ``logits = s(q, k) / τ``; for
    uninformative embeddings it is about ``log M``.
    """
    query = require_floating(require_rank(query, "query", 2, "(N, d)"), "query")
    keys = require_rank(keys, "keys", 2, "(M, d)")
    require_positive(temperature, "temperature")
    n, d = query.shape
    if keys.shape[1] != d or keys.shape[0] < n:
        raise ValueError(f"keys must be (M, d) with M ≥ N = {n} and d = {d}, got shape {tuple(keys.shape)}")
    if normalize:
        query, keys = _normalize(query), _normalize(keys)
    logits = query @ keys.T / temperature                                # (N, M)
    return cross_entropy(logits, torch.arange(n, device=query.device))


def _require_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``(N, d)`` float tensors of the same shape (row i of each is pair i)."""
    image_emb = require_floating(require_rank(image_emb, "image_emb", 2, "(N, d)"), "image_emb")
    text_emb = require_rank(text_emb, "text_emb", 2, "(N, d)")
    if text_emb.shape != image_emb.shape:
        raise ValueError(f"text_emb must have the shape of image_emb {tuple(image_emb.shape)}, "
                         f"got {tuple(text_emb.shape)}")
    return image_emb, text_emb


def _require_scalar(value: torch.Tensor | float, name: str, like: torch.Tensor) -> torch.Tensor:
    """A one-element tensor (kept, so it can be a learnable parameter) or a float made into one."""
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), dtype=like.dtype, device=like.device)
    if value.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
    return value


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """The symmetric contrastive loss of CLIP (Radford et al.).

    .. math::
        S = e^{s}\\, \\hat I \\hat T^\\top, \\qquad
        \\mathcal{L} = \\tfrac12 \\bigl[\\operatorname{CE}(S, \\text{arange}(N))
        + \\operatorname{CE}(S^\\top, \\text{arange}(N))\\bigr]

    ``image_emb`` and ``text_emb`` are ``(N, d)``, pair ``i`` matching; ``Î``, ``T̂`` are their rows
    L2-normalised. ``logit_scale`` ``s`` is the LOG of the multiplier (CLIP learns ``s``, initialised to
    ``log(1/0.07)``); a scalar tensor (learnable) or a float.
    """
    image_emb, text_emb = _require_pairs(image_emb, text_emb)
    logit_scale = _require_scalar(logit_scale, "logit_scale", image_emb)
    logits = logit_scale.exp() * _normalize(image_emb) @ _normalize(text_emb).T    # (N, N): image i vs text j
    target = torch.arange(len(logits), device=logits.device)
    return (cross_entropy(logits, target) + cross_entropy(logits.T, target)) / 2


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float) -> torch.Tensor:
    """The pairwise sigmoid loss of SigLIP (Zhai et al., 2023).

    .. math::
        \\mathcal{L} = -\\frac1N \\sum_{i=1}^N \\sum_{j=1}^N
        \\log \\sigma\\bigl(z_{ij}\\,(e^{s}\\, \\hat x_i^\\top \\hat y_j + b)\\bigr),
        \\qquad z_{ii} = +1,\\; z_{ij} = -1 \\;(i \\ne j)

    ``image_emb`` and ``text_emb`` are ``(N, d)``, pair ``i`` matching; ``x̂``, ``ŷ`` are their rows
    L2-normalised. Every one of the N² (image, text) pairs is an independent binary question, "do these
    match?" — no softmax over the batch. ``logit_scale`` ``s`` is the log of the multiplier and
    ``logit_bias`` ``b`` a bias (SigLIP starts at ``s = log 10``, ``b = -10``); scalar tensors or floats.
    Computed with ``logsigmoid``, stable for any logit.
    """
    image_emb, text_emb = _require_pairs(image_emb, text_emb)
    logit_scale = _require_scalar(logit_scale, "logit_scale", image_emb)
    logit_bias = _require_scalar(logit_bias, "logit_bias", image_emb)
    logits = logit_scale.exp() * _normalize(image_emb) @ _normalize(text_emb).T + logit_bias  # (N, N)
    n = len(logits)
    z = 2 * torch.eye(n, dtype=logits.dtype, device=logits.device) - 1              # +1 diagonal, -1 elsewhere
    return -torch.nn.functional.logsigmoid(z * logits).sum() / n


# Chapter 9's CTC loss lives next to its decoders in mmlearn.alignment; it is a loss, so it is here too.
from mmlearn.alignment import ctc_loss  # noqa: E402,F401


def info_nce_bound(scores: torch.Tensor) -> torch.Tensor:
    """The InfoNCE lower bound on mutual information from an ``(N, N)`` matrix of critic scores.

    .. math:: I(X; Y) \\ge \\log N - \\mathcal{L}_{\\text{InfoNCE}}, \\qquad
              \\mathcal{L}_{\\text{InfoNCE}} = -\\frac1N \\sum_{i=1}^N \\log
              \\frac{e^{f(x_i, y_i)}}{\\sum_{j=1}^N e^{f(x_i, y_j)}}

    ``scores[i, j] = f(x_i, y_j)`` for ``N`` pairs ``(x_i, y_i)`` drawn from the joint (van den Oord et
    al., 2018; Poole et al., 2019). In expectation over batches it is at most ``I(X; Y)`` for any critic
    ``f``, and at most ``log N`` whatever the data. Returns a scalar (nats).
    """
    scores = require_floating(require_rank(scores, "scores", 2, "(N, N)"), "scores")
    n = scores.shape[0]
    if scores.shape[1] != n:
        raise ValueError(f"scores must be square (N, N), got shape {tuple(scores.shape)}")
    return torch.log(torch.tensor(float(n), dtype=scores.dtype, device=scores.device)) - cross_entropy(
        scores, torch.arange(n, device=scores.device))
