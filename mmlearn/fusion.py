"""Modality fusion (chapter 4): how two or more feature vectors become one.

Every operator is an ``nn.Module`` built as ``XFusion(in_dims, out_dim=None, **options)`` — ``in_dims``
holds one feature size per modality — and called as ``fusion(x_1, ..., x_M)`` with one ``(B, d_m)``
tensor per modality. ``fusion.out_dim`` is the size of what comes out, so a head is simply
``nn.Linear(fusion.out_dim, n_classes)``.

Two families, and the lesson of the chapter:

* **additive** operators — sum, concatenation followed by a linear layer, late fusion — compute
  ``g_1(x_1) + ... + g_M(x_M)`` and therefore cannot represent an *interaction* between modalities
  (the multimodal XOR);
* **multiplicative** operators — product, bilinear, tensor, low-rank, gated, FiLM, cross-attention over
  several positions — contain products of features of different modalities and can.

Also here: :class:`FusionClassifier` (encoders → fusion → head), :class:`ModalityDropout`
(ModDrop, Neverova et al. 2016), :func:`emap` (the additive projection of Hessel & Lee 2020) and
:func:`agreement_pairs` (agreement tasks on which each modality alone is exactly at chance).

Bilinear pooling, modality competition and information decomposition (notebook 04_fusion_competition):
:func:`count_sketch` and :class:`MCBFusion` (Fukui et al. 2016), :class:`MutanFusion` (Ben-younes et al.
2017; MLB of Kim et al. 2017 is :class:`ProductFusion` followed by a linear head),
:func:`ogm_ge_coefficients` (Peng et al. 2022) and :func:`partial_information` (Williams & Beer 2010).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mmlearn._validate import require_floating, require_min_rank, require_rank
from mmlearn.attention import MultiHeadAttention

__all__ = [
    "SumFusion", "ProductFusion", "ConcatFusion", "GatedFusion", "BilinearFusion", "TensorFusion",
    "LowRankFusion", "FiLM", "CrossAttentionFusion", "LateFusion", "FusionClassifier", "ModalityDropout",
    "emap", "agreement_pairs", "count_sketch", "MCBFusion", "MutanFusion", "ogm_ge_coefficients",
    "partial_information",
]


# ---- shared checks ---------------------------------------------------------------------------------

def _check_in_dims(in_dims: Sequence[int], owner: str, n_modalities: int | None) -> tuple[int, ...]:
    """``in_dims`` must be a sequence of >= 2 positive ints (exactly ``n_modalities`` when given)."""
    if isinstance(in_dims, int) or not isinstance(in_dims, Sequence):
        raise ValueError(f"{owner}: in_dims must be a sequence with one feature size per modality, got {in_dims!r}")
    dims = tuple(in_dims)
    if any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in dims):
        raise ValueError(f"{owner}: in_dims must hold positive ints, got {dims}")
    if n_modalities is not None and len(dims) != n_modalities:
        raise ValueError(f"{owner} fuses exactly {n_modalities} modalities, got in_dims={dims}")
    if len(dims) < 2:
        raise ValueError(f"{owner}: fusion needs at least 2 modalities, got in_dims={dims}")
    return dims


def _check_out_dim(out_dim: int | None, owner: str) -> int | None:
    if out_dim is not None and (not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim <= 0):
        raise ValueError(f"{owner}: out_dim must be a positive int or None, got {out_dim!r}")
    return out_dim


def _with_one(x: torch.Tensor) -> torch.Tensor:
    """Append a constant 1 to the last axis: ``[x; 1]``, on x's device and dtype."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


def _projections(in_dims: tuple[int, ...], out_dim: int | None, owner: str) -> nn.ModuleList | None:
    """One ``Linear(d_m, out_dim)`` per modality; ``None`` (identity) when out_dim is None and dims agree."""
    if out_dim is None:
        if len(set(in_dims)) > 1:
            raise ValueError(f"{owner}: in_dims differ {in_dims}; give out_dim so that each modality is "
                             f"projected to a common size")
        return None
    return nn.ModuleList(nn.Linear(d, out_dim) for d in in_dims)


class _Fusion(nn.Module):
    """Base class: stores ``in_dims``/``out_dim`` and validates the features given to ``forward``."""

    n_modalities: int | None = None      # exactly this many (None: any number >= 2)

    def __init__(self, in_dims: Sequence[int], out_dim: int | None) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_dims = _check_in_dims(in_dims, name, self.n_modalities)
        self.out_dim = _check_out_dim(out_dim, name)

    def _check(self, features: Sequence[torch.Tensor | None], *, sequences: Sequence[int] = (),
               allow_missing: bool = False) -> list[torch.Tensor]:
        """Raise ``ValueError`` on a wrong number of modalities, ranks, feature sizes or batch sizes.

        Modalities listed in ``sequences`` may be ``(B, L, d)``; with ``allow_missing`` a ``None`` passes.
        """
        name = type(self).__name__
        if len(features) != len(self.in_dims):
            raise ValueError(f"{name} expects {len(self.in_dims)} modalities (in_dims={self.in_dims}), "
                             f"got {len(features)} tensors")
        for m, (x, d) in enumerate(zip(features, self.in_dims)):
            if x is None and allow_missing:
                continue
            seq = m in sequences
            require_rank(x, f"modality {m}", (2, 3) if seq else 2, f"(B, {d}) or (B, L, {d})" if seq else f"(B, {d})")
            require_floating(x, f"modality {m}")
            if x.shape[-1] != d:
                raise ValueError(f"{name}: modality {m} must have feature size in_dims[{m}]={d} on its last axis, "
                                 f"got shape {tuple(x.shape)}")
        batch = [x.shape[0] for x in features if x is not None]
        if len(set(batch)) > 1:
            raise ValueError(f"{name}: all modalities must have the same batch size, got {batch}")
        return list(features)

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}"


# ---- additive operators ----------------------------------------------------------------------------

class SumFusion(_Fusion):
    r"""Sum, or weighted sum, of the modalities after projecting them to a common size.

    .. math:: z = \sum_{m=1}^{M} \alpha_m \,(W_m x_m + b_m), \qquad
              \alpha = \operatorname{softmax}(a) \text{ if ``weighted`` else } \alpha_m = 1.

    With ``out_dim=None`` the projections are the identity (all ``in_dims`` must then be equal) and
    the operator has no parameters besides the optional weight logits ``a``. Additive: the output is a
    sum of functions of one modality each.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None, *, weighted: bool = False) -> None:
        super().__init__(in_dims, out_dim)
        self.proj = _projections(self.in_dims, out_dim, type(self).__name__)
        self.out_dim = out_dim or self.in_dims[0]
        self.weight_logits = nn.Parameter(torch.zeros(len(self.in_dims))) if weighted else None

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        xs = self._check(features)
        if self.proj is not None:
            xs = [p(x) for p, x in zip(self.proj, xs)]                   # each (B, out_dim)
        z = torch.stack(xs)                                              # (M, B, out_dim)
        if self.weight_logits is not None:
            z = z * torch.softmax(self.weight_logits, 0).view(-1, 1, 1)  # alpha_m x_m
        return z.sum(0)                                                  # (B, out_dim)


class ConcatFusion(_Fusion):
    r"""Concatenation, optionally followed by a linear layer.

    .. math:: z = [x_1; x_2; \dots; x_M] \quad\text{or}\quad z = W [x_1; \dots; x_M] + b
              = \sum_m W_m x_m + b,

    where :math:`W = [W_1 \; W_2 \; \dots \; W_M]` split by columns. The second form shows that a
    linear layer on a concatenation is *additive* in the modalities. ``out_dim=None`` returns the
    plain concatenation (size :math:`\sum_m d_m`).
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None) -> None:
        super().__init__(in_dims, out_dim)
        total = sum(self.in_dims)
        self.proj = nn.Linear(total, out_dim) if out_dim is not None else None
        self.out_dim = out_dim or total

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        z = torch.cat(self._check(features), dim=-1)                     # (B, sum d_m)
        return z if self.proj is None else self.proj(z)                  # (B, out_dim)


class LateFusion(_Fusion):
    r"""Late (decision-level) fusion: one head per modality, logits averaged or weighted.

    .. math:: z = \sum_{m=1}^{M} w_m\, f_m(x_m), \qquad
              w_m = \tfrac{1}{M} \text{ (default), fixed ``weights``, or } \operatorname{softmax}(a)_m.

    ``f_m`` is ``Linear(d_m, out_dim)``, or a one-hidden-layer MLP when ``hidden`` is given. However
    deep the heads, ``z`` is additive in the modalities. A modality passed as ``None`` is missing: the
    weights of the present ones are renormalised to sum to 1 — late fusion's natural robustness.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None, *, hidden: int | None = None,
                 weights: Sequence[float] | None = None, learn_weights: bool = False) -> None:
        super().__init__(in_dims, out_dim)
        if out_dim is None:
            raise ValueError("LateFusion: out_dim (the number of outputs of each head, e.g. classes) is required")
        M = len(self.in_dims)
        if weights is not None and (len(weights) != M or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"LateFusion: weights must be {M} non-negative numbers with a positive sum, "
                             f"got {weights!r}")
        self.heads = nn.ModuleList(_head(d, out_dim, hidden) for d in self.in_dims)
        w = torch.tensor(weights if weights is not None else [1.0] * M, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())
        self.weight_logits = nn.Parameter(torch.zeros(M)) if learn_weights else None

    def forward(self, *features: torch.Tensor | None) -> torch.Tensor:
        self._check(features, allow_missing=True)
        present = [m for m, x in enumerate(features) if x is not None]
        if not present:
            raise ValueError("LateFusion: at least one modality must be present, got only None")
        w = torch.softmax(self.weight_logits, 0) if self.weight_logits is not None else self.weights
        w = w[present] / w[present].sum()                                # renormalise over present modalities
        logits = torch.stack([self.heads[m](features[m]) for m in present])   # (M', B, out_dim)
        return (w.view(-1, 1, 1).to(logits.dtype) * logits).sum(0)          # (B, out_dim)


def _head(d_in: int, d_out: int, hidden: int | None) -> nn.Module:
    """``Linear(d_in, d_out)``, or ``Linear -> ReLU -> Linear`` with ``hidden`` units."""
    if hidden is None:
        return nn.Linear(d_in, d_out)
    if not isinstance(hidden, int) or hidden <= 0:
        raise ValueError(f"hidden must be a positive int or None, got {hidden!r}")
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


# ---- multiplicative operators ----------------------------------------------------------------------

class ProductFusion(_Fusion):
    r"""Element-wise (Hadamard) product of the modalities after projecting them to a common size.

    .. math:: z = \bigodot_{m=1}^{M} (W_m x_m + b_m), \qquad z_k = \prod_m (W_m x_m + b_m)_k .

    Each :math:`z_k` is a product of one linear function per modality: a rank-1 bilinear form per
    output unit, which is what lets it represent interactions (XOR). ``out_dim=None``: no projection.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None) -> None:
        super().__init__(in_dims, out_dim)
        self.proj = _projections(self.in_dims, out_dim, type(self).__name__)
        self.out_dim = out_dim or self.in_dims[0]

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        xs = self._check(features)
        if self.proj is not None:
            xs = [p(x) for p, x in zip(self.proj, xs)]                   # each (B, out_dim)
        z = xs[0]
        for x in xs[1:]:
            z = z * x                                                    # (B, out_dim)
        return z


class BilinearFusion(_Fusion):
    r"""Bilinear fusion of two modalities: one matrix :math:`W_k` per output unit.

    .. math:: z_k = x_a^\top W_k\, x_b + b_k, \qquad W \in \mathbb{R}^{d_{out} \times d_a \times d_b}.

    Same parameters and layout as ``nn.Bilinear(d_a, d_b, out_dim)`` (``weight``, ``bias``), so its
    state dict loads into one. ``out_dim`` defaults to ``max(in_dims)``.
    """

    n_modalities = 2

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None) -> None:
        super().__init__(in_dims, out_dim)
        self.out_dim = out_dim or max(self.in_dims)
        d_a, d_b = self.in_dims
        bound = 1 / math.sqrt(d_a)                                       # nn.Bilinear's initialisation
        self.weight = nn.Parameter(torch.empty(self.out_dim, d_a, d_b).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(self.out_dim).uniform_(-bound, bound))

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        x_a, x_b = self._check(features)
        k, d_a, d_b = self.weight.shape
        t = x_a @ self.weight.permute(1, 0, 2).reshape(d_a, k * d_b)    # x_a^T W_k for every k: (B, k * d_b)
        return (t.view(-1, k, d_b) * x_b[:, None, :]).sum(-1) + self.bias   # (B, out_dim)


class TensorFusion(_Fusion):
    r"""Tensor fusion (Zadeh et al., 2017): the outer product of the modalities, each with a 1 appended.

    .. math:: Z = \begin{bmatrix} x_1 \\ 1 \end{bmatrix} \otimes \begin{bmatrix} x_2 \\ 1 \end{bmatrix}
              \otimes \cdots \otimes \begin{bmatrix} x_M \\ 1 \end{bmatrix},
              \qquad z = \operatorname{vec}(Z) \in \mathbb{R}^{\prod_m (d_m + 1)} .

    Thanks to the appended 1, ``z`` contains the constant 1, every unimodal feature :math:`x_{m,i}`,
    and every product across modalities (for two: :math:`x_{a,i} x_{b,j}`). With ``out_dim`` a linear
    layer :math:`W z + b` follows. Its size grows as :math:`\prod_m (d_m+1)`: keep the inputs small.
    For two modalities ``vec`` is row-major: entry ``i * (d_b + 1) + j`` is :math:`[x_a;1]_i [x_b;1]_j`.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None) -> None:
        super().__init__(in_dims, out_dim)
        self.tensor_dim = math.prod(d + 1 for d in self.in_dims)
        self.proj = nn.Linear(self.tensor_dim, out_dim) if out_dim is not None else None
        self.out_dim = out_dim or self.tensor_dim

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        xs = self._check(features)
        z = xs[0].new_ones(xs[0].shape[0], 1)                            # (B, 1)
        for x in xs:
            x1 = _with_one(x)                                            # (B, d_m + 1)
            z = (z[:, :, None] * x1[:, None, :]).flatten(1)              # (B, P * (d_m + 1))
        return z if self.proj is None else self.proj(z)                  # (B, out_dim)


class LowRankFusion(_Fusion):
    r"""Low-rank multimodal fusion (Liu et al., 2018): tensor fusion with a rank-r weight tensor.

    The weight of tensor fusion, :math:`\mathcal{W} \in \mathbb{R}^{(d_1+1) \times \dots \times (d_M+1)
    \times d_{out}}`, is written as :math:`\sum_{i=1}^{r} \bigotimes_m W_m^{(i)}` with modality-specific
    factors :math:`W_m^{(i)} \in \mathbb{R}^{(d_m+1) \times d_{out}}`. Then, without ever forming the tensor,

    .. math:: z = \sum_{i=1}^{r} \bigodot_{m=1}^{M} \big( [x_m; 1]^\top W_m^{(i)} \big) + b
              \qquad \text{(a sum over ranks of element-wise products — not a product of sums).}

    Every factor is a registered ``nn.Parameter`` (``factors[m]`` of shape ``(r, d_m + 1, d_out)``), so
    ``model.parameters()`` — and therefore the optimiser — sees all of them. ``out_dim`` defaults to
    ``max(in_dims)``. :meth:`full_weight` rebuilds the equivalent tensor-fusion weight.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None, *, rank: int = 4) -> None:
        super().__init__(in_dims, out_dim)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise ValueError(f"LowRankFusion: rank must be a positive int, got {rank!r}")
        self.rank = rank
        self.out_dim = out_dim or max(self.in_dims)
        self.factors = nn.ParameterList(nn.Parameter(self._init_factor(d)) for d in self.in_dims)
        self.bias = nn.Parameter(torch.zeros(self.out_dim))

    def _init_factor(self, d: int) -> torch.Tensor:
        """Normal with std 1/sqrt(d+1): each projection has unit scale for unit-scale inputs."""
        return torch.randn(self.rank, d + 1, self.out_dim) / math.sqrt(d + 1)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        xs = self._check(features)
        h = None
        for x, W in zip(xs, self.factors):
            a = torch.einsum("bd,rdo->bro", _with_one(x), W)             # (B, r, out_dim)
            h = a if h is None else h * a                                # product over modalities
        return h.sum(1) + self.bias                                      # sum over ranks: (B, out_dim)

    def full_weight(self) -> torch.Tensor:
        """The ``(out_dim, prod(d_m + 1))`` weight of the equal :class:`TensorFusion` linear layer."""
        W = self.factors[0]                                              # (r, P, out)
        for F_m in list(self.factors)[1:]:
            W = (W[:, :, None, :] * F_m[:, None, :, :]).flatten(1, 2)    # (r, P * (d_m + 1), out)
        return W.sum(0).T                                                # (out, prod(d_m + 1))


class GatedFusion(_Fusion):
    r"""Gated multimodal unit (GMU, Arevalo et al., 2017).

    .. math:: h_m = \tanh(W_m x_m + b_m), \qquad
              g = \operatorname{softmax}_m\!\big( W_g [x_1; \dots; x_M] + b_g \big), \qquad
              z = \sum_m g_m \odot h_m .

    The gate logit of the last modality is fixed at 0, so for two modalities
    :math:`g_1 = \sigma(W_g[x_1; x_2] + b_g)` and :math:`z = g_1 \odot h_1 + (1 - g_1) \odot h_2` — the
    paper's GMU. The gate depends on *all* modalities and multiplies each :math:`h_m`, so the unit can
    represent interactions. ``out_dim`` defaults to ``max(in_dims)``; the last gates are kept in
    ``last_gates`` ``(B, M, out_dim)`` for inspection.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None) -> None:
        super().__init__(in_dims, out_dim)
        self.out_dim = out_dim or max(self.in_dims)
        M = len(self.in_dims)
        self.proj = nn.ModuleList(nn.Linear(d, self.out_dim) for d in self.in_dims)
        self.gate = nn.Linear(sum(self.in_dims), (M - 1) * self.out_dim)
        self.last_gates: torch.Tensor | None = None

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        xs = self._check(features)
        B, M = xs[0].shape[0], len(xs)
        h = torch.stack([torch.tanh(p(x)) for p, x in zip(self.proj, xs)], 1)   # (B, M, out)
        logits = self.gate(torch.cat(xs, -1)).view(B, M - 1, self.out_dim)       # (B, M-1, out)
        logits = torch.cat([logits, logits.new_zeros(B, 1, self.out_dim)], 1)   # (B, M, out)
        g = torch.softmax(logits, dim=1)                                         # sums to 1 over modalities
        self.last_gates = g.detach()
        return (g * h).sum(1)                                                    # (B, out)


class FiLM(_Fusion):
    r"""Feature-wise linear modulation (Perez et al., 2018): one modality scales and shifts another.

    Modality 0 is the one modulated (``x``, ``(B, d_0)`` or ``(B, L, d_0)``); the others,
    concatenated, are the conditioning :math:`c = [x_1; \dots; x_{M-1}]`:

    .. math:: \gamma(c) = W_\gamma c + b_\gamma, \quad \beta(c) = W_\beta c + b_\beta, \qquad
              z = \gamma(c) \odot \tilde{x} + \beta(c),

    with :math:`\tilde x = x` (``out_dim=None``) or :math:`\tilde x = W_x x + b_x` (``out_dim`` given).
    For a sequence, :math:`\gamma, \beta` are shared by all its positions. :math:`b_\gamma` starts
    at 1 and :math:`W_\gamma, W_\beta, b_\beta` at 0, so FiLM starts as the identity on :math:`\tilde x`.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None) -> None:
        super().__init__(in_dims, out_dim)
        d_x, d_c = self.in_dims[0], sum(self.in_dims[1:])
        self.proj = nn.Linear(d_x, out_dim) if out_dim is not None else None
        self.out_dim = out_dim or d_x
        self.film = nn.Linear(d_c, 2 * self.out_dim)                     # -> [gamma; beta]
        with torch.no_grad():
            self.film.weight.zero_()
            self.film.bias.copy_(torch.cat([torch.ones(self.out_dim), torch.zeros(self.out_dim)]))

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        x, *cond = self._check(features, sequences=(0,))
        x = x if self.proj is None else self.proj(x)                     # (B, [L,] out)
        gamma, beta = self.film(torch.cat(cond, -1)).chunk(2, dim=-1)    # each (B, out)
        if x.ndim == 3:
            gamma, beta = gamma[:, None, :], beta[:, None, :]            # shared over positions
        return gamma * x + beta


class CrossAttentionFusion(_Fusion):
    r"""Cross-attention: the positions of modality 0 (queries) attend to those of the others.

    Each modality is projected to ``out_dim`` = :math:`D`; the context is the other modalities'
    positions concatenated, :math:`C \in \mathbb{R}^{S \times D}`:

    .. math:: Q = \tilde X_0 W_Q, \; K = C W_K, \; V = C W_V, \qquad
              z = \tilde X_0 + \operatorname{softmax}\!\Big(\frac{Q K^\top}{\sqrt{D/h}}\Big) V\, W_O

    (per head, ``num_heads`` = :math:`h`; :class:`mmlearn.attention.MultiHeadAttention`, whose state dict
    is that of ``nn.MultiheadAttention(D, h, batch_first=True)``).
    Inputs may be ``(B, d_m)`` (one position) or ``(B, L_m, d_m)``; the output has the query's layout,
    ``(B, D)`` or ``(B, L_0, D)``. ``mask`` ``(B, S)`` marks real context positions (True) — the
    convention of ``preprocess.pad_sequences``. With a single context position the softmax weight is 1
    and the output is *additive* (:math:`\tilde x_0 + W_O W_V c`): attention needs several positions
    to interact. The last weights ``(B, L_0, S)`` are kept in ``last_weights``.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None, *, num_heads: int = 1) -> None:
        super().__init__(in_dims, out_dim)
        self.out_dim = out_dim or self.in_dims[0]
        if not isinstance(num_heads, int) or num_heads <= 0 or self.out_dim % num_heads:
            raise ValueError(f"CrossAttentionFusion: num_heads must be a positive divisor of out_dim="
                             f"{self.out_dim}, got {num_heads!r}")
        self.proj = nn.ModuleList(nn.Linear(d, self.out_dim) for d in self.in_dims)
        self.attn = MultiHeadAttention(self.out_dim, num_heads)
        self.last_weights: torch.Tensor | None = None

    def forward(self, *features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        xs = self._check(features, sequences=range(len(self.in_dims)))
        vector_query = xs[0].ndim == 2
        seqs = [p(x if x.ndim == 3 else x[:, None, :]) for p, x in zip(self.proj, xs)]   # each (B, L_m, D)
        q, ctx = seqs[0], torch.cat(seqs[1:], dim=1)                     # (B, L_0, D), (B, S, D)
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != ctx.shape[:2]:
                raise ValueError(f"mask must be a bool tensor of shape (B, S)={tuple(ctx.shape[:2])}, "
                                 f"got {getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}")
            mask = mask[:, None, :]                                      # (B, 1, S): the same for every query
        out, weights = self.attn(q, ctx, ctx, mask)                      # (B, L_0, D), (B, L_0, S)
        self.last_weights = weights.detach()                             # (B, L_0, S), mean over heads
        z = q + out                                                      # residual: (B, L_0, D)
        return z[:, 0] if vector_query else z


# ---- models and tools built on the operators -------------------------------------------------------

class ModalityDropout(nn.Module):
    """ModDrop (Neverova et al., 2016): in training, zero each modality of a sample with probability p.

    At least one modality of every sample is kept. No rescaling: a missing modality at test time is a
    zero vector, exactly what the model saw in training. In eval mode it is the identity.
    """

    def __init__(self, p: float = 0.25) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"ModalityDropout: p must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, *features: torch.Tensor) -> list[torch.Tensor]:
        if not self.training or self.p == 0.0:
            return list(features)
        B, M = features[0].shape[0], len(features)
        keep = torch.rand(B, M, device=features[0].device) >= self.p                # (B, M)
        none = ~keep.any(1)                                                         # all dropped: keep one
        rescue = torch.randint(M, (B,), device=keep.device)
        keep[none, rescue[none]] = True
        return [x * keep[:, m].view(B, *[1] * (x.ndim - 1)).to(x.dtype) for m, x in enumerate(features)]


class FusionClassifier(nn.Module):
    r"""Encoders (one per modality, identity where ``None``) → optional ModDrop → fusion → head.

    .. math:: \hat y = \text{head}\big(\text{fusion}(e_1(x_1), \dots, e_M(x_M))\big)

    ``head`` is ``Linear(fusion.out_dim, num_classes)``, or an MLP with ``hidden`` units; with
    ``num_classes=None`` the fusion output is returned (e.g. for :class:`LateFusion`, whose output
    already is logits). A sequence output ``(B, L, D)`` is mean-pooled over ``L`` before the head.
    """

    def __init__(self, fusion: nn.Module, num_classes: int | None = None, *,
                 encoders: Sequence[nn.Module | None] | None = None, hidden: int | None = None,
                 moddrop: float = 0.0) -> None:
        super().__init__()
        M = len(fusion.in_dims)
        if encoders is not None and len(encoders) != M:
            raise ValueError(f"FusionClassifier: need one encoder (or None) per modality ({M}), got {len(encoders)}")
        self.encoders = nn.ModuleList(e if e is not None else nn.Identity() for e in (encoders or [None] * M))
        self.moddrop = ModalityDropout(moddrop)
        self.fusion = fusion
        self.head = _head(fusion.out_dim, num_classes, hidden) if num_classes is not None else nn.Identity()

    def features(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The encoded modalities, one tensor each (before ModDrop)."""
        return [enc(x) for enc, x in zip(self.encoders, inputs)]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        z = self.fusion(*self.moddrop(*self.features(*inputs)))
        if z.ndim == 3:
            z = z.mean(1)                                                # (B, L, D) -> (B, D)
        return self.head(z)


@torch.no_grad()
def emap(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_a: torch.Tensor, x_b: torch.Tensor,
         *, chunk: int = 64) -> torch.Tensor:
    r"""Empirical multimodally-additive projection (Hessel & Lee, 2020) of a two-modality model.

    For a dataset :math:`\{(a_i, b_i)\}_{i=1}^N` and outputs :math:`f(a, b) \in \mathbb{R}^C`:

    .. math:: \hat f(a_i, b_i) = \frac1N \sum_j f(a_i, b_j) + \frac1N \sum_j f(a_j, b_i)
              - \frac1{N^2} \sum_{j,k} f(a_j, b_k) .

    :math:`\hat f` is the best additive approximation of :math:`f` on the data: if :math:`\hat f`
    predicts as well as :math:`f`, the model's accuracy does not come from cross-modal interactions.
    Costs :math:`N^2` evaluations of ``predict``, done ``chunk`` rows of ``a`` at a time.
    """
    if not isinstance(x_a, torch.Tensor) or not isinstance(x_b, torch.Tensor) or len(x_a) != len(x_b):
        raise ValueError("emap: x_a and x_b must be tensors with the same number of samples, got "
                         f"{getattr(x_a, 'shape', type(x_a))} and {getattr(x_b, 'shape', type(x_b))}")
    N = len(x_a)
    row_means, col_sum = [], 0.0
    for start in range(0, N, chunk):
        a = x_a[start:start + chunk]
        c = len(a)
        out = predict(a.repeat_interleave(N, 0), x_b.repeat(c, *[1] * (x_b.ndim - 1)))   # f(a_i, b_j)
        out = out.reshape(c, N, -1)                                      # (c, N, C)
        row_means.append(out.mean(1))                                    # mean_j f(a_i, b_j)
        col_sum = col_sum + out.sum(0)                                   # sum_i f(a_i, b_j)
    row_mean = torch.cat(row_means)                                      # (N, C)
    col_mean = col_sum / N                                               # (N, C)
    return row_mean + col_mean - row_mean.mean(0, keepdim=True)


def _zero_diagonal_coupling(p: torch.Tensor, iters: int = 2000) -> torch.Tensor:
    """A joint distribution ``q`` on ``K x K`` values with ``q[k, k] = 0`` and both marginals ``p`` (Sinkhorn)."""
    q = 1.0 - torch.eye(len(p), dtype=torch.float64)
    for _ in range(iters):
        q *= (p / q.sum(1))[:, None]
        q *= (p / q.sum(0))[None, :]
    if not (torch.allclose(q.sum(1), p, atol=1e-9) and torch.allclose(q.sum(0), p, atol=1e-9)):
        raise ValueError(f"agreement_pairs: no disagreeing pairs with marginals {p.tolist()} (a value has "
                         f"frequency >= 1/2)")
    return q


def agreement_pairs(attr: torch.Tensor, n: int, *, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Pairs of distinct items ``(i, j)`` and labels ``y = 1[attr_i == attr_j]``, balanced, on which
    each side *alone* says nothing about the label.

    Agreeing pairs (``y = 1``): a value :math:`c \sim p` (the frequencies of ``attr``), then two
    distinct items with that value. Disagreeing pairs (``y = 0``): values :math:`(a, b) \sim q`, where
    :math:`q` has a zero diagonal and both marginals equal to :math:`p` (found by Sinkhorn scaling),
    then an item with value ``a`` and one with value ``b``. In both classes ``i`` and ``j`` are then
    each uniform over the items, so :math:`P(y = 1 \mid i) = P(y = 1 \mid j) = \tfrac12` exactly: by
    the lemma of chapter 4 the best additive model is at chance. (Drawing the second item of a
    disagreeing pair uniformly among the *other* values would not do this when ``p`` is not uniform.)
    Every value must occur at least twice and less often than half the time. Returns ``(i, j, y)``,
    ``(n,)`` long tensors on the CPU.
    """
    if not isinstance(attr, torch.Tensor) or attr.ndim != 1 or attr.dtype.is_floating_point:
        got = f"{getattr(attr, 'dtype', type(attr))} {tuple(getattr(attr, 'shape', ()))}"
        raise ValueError(f"agreement_pairs: attr must be a 1-D integer tensor, got {got}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"agreement_pairs: n must be a positive int, got {n!r}")
    attr = attr.cpu()
    values, counts = attr.unique(return_counts=True)
    if len(values) < 2 or counts.min() < 2:
        raise ValueError(f"agreement_pairs: need >= 2 values, each on >= 2 items; got counts {counts.tolist()}")
    pools = [torch.nonzero(attr == v).flatten() for v in values]
    p = counts.double() / counts.sum()
    g = generator
    y = (torch.rand(n, generator=g) < 0.5).long()
    a = torch.multinomial(p, n, replacement=True, generator=g)                 # value of i (positives)
    b = a.clone()
    neg = torch.nonzero(y == 0).flatten()
    q = _zero_diagonal_coupling(p).flatten()
    ab = torch.multinomial(q, len(neg), replacement=True, generator=g) if len(neg) else neg
    a[neg], b[neg] = ab // len(p), ab % len(p)
    i, j = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    for k, pool in enumerate(pools):
        rows = torch.nonzero(a == k).flatten()
        i[rows] = pool[torch.randint(len(pool), (len(rows),), generator=g)]
    for k, pool in enumerate(pools):
        rows = torch.nonzero(b == k).flatten()
        pos = rows[y[rows] == 1]                                              # j: another item, same value
        where_i = (pool[None, :] == i[pos][:, None]).float().argmax(1)       # position of i in the pool
        shift = torch.randint(len(pool) - 1, (len(pos),), generator=g)
        j[pos] = pool[shift + (shift >= where_i).long()]
        negr = rows[y[rows] == 0]
        j[negr] = pool[torch.randint(len(pool), (len(negr),), generator=g)]
    return i, j, y


# ---- bilinear pooling, modality competition, information decomposition (04_fusion_competition) ------

def count_sketch(x: torch.Tensor, h: torch.Tensor, s: torch.Tensor, sketch_dim: int) -> torch.Tensor:
    r"""Count sketch (Charikar et al., 2002) of the last axis of ``x``.

    .. math:: \Psi(x)_j = \sum_{i \,:\, h(i) = j} s(i)\, x_i, \qquad h: [d] \to [D], \; s: [d] \to \{-1, +1\}.

    ``x`` is ``(..., d)``, ``h`` a ``(d,)`` integer tensor with values in ``[0, sketch_dim)``, ``s`` a
    ``(d,)`` tensor of signs. Linear in ``x``: :math:`\Psi(x) = x S^\top` with the sparse matrix
    :math:`S_{ji} = s(i)\,[h(i) = j]`. Returns ``(..., sketch_dim)``.
    """
    require_min_rank(x, "x", 1, "(..., d)")
    require_floating(x, "x")
    d = x.shape[-1]
    if not isinstance(sketch_dim, int) or isinstance(sketch_dim, bool) or sketch_dim <= 0:
        raise ValueError(f"count_sketch: sketch_dim must be a positive int, got {sketch_dim!r}")
    if not isinstance(h, torch.Tensor) or h.shape != (d,) or h.dtype.is_floating_point:
        raise ValueError(f"count_sketch: h must be an integer tensor of shape ({d},), got "
                         f"{getattr(h, 'dtype', type(h))} {tuple(getattr(h, 'shape', ()))}")
    if d and (h.min() < 0 or h.max() >= sketch_dim):
        raise ValueError(f"count_sketch: h must take values in [0, {sketch_dim}), got [{h.min()}, {h.max()}]")
    if not isinstance(s, torch.Tensor) or s.shape != (d,) or not bool((s.abs() == 1).all()):
        raise ValueError(f"count_sketch: s must be a ({d},) tensor of signs ±1, got {tuple(getattr(s, 'shape', ()))}")
    out = x.new_zeros(*x.shape[:-1], sketch_dim)
    return out.index_add_(-1, h.to(x.device), x * s.to(x.device, x.dtype))      # (..., D)


class MCBFusion(_Fusion):
    r"""Multimodal compact bilinear pooling (Fukui et al., 2016): a count sketch of the outer product.

    .. math:: z = \Psi(x_a \otimes x_b) = \Psi_a(x_a) * \Psi_b(x_b)
              = \mathcal{F}^{-1}\big(\mathcal{F}(\Psi_a(x_a)) \odot \mathcal{F}(\Psi_b(x_b))\big),

    where :math:`*` is circular convolution of length :math:`D` (``sketch_dim``) and the sketch of the
    outer product uses :math:`h(i, j) = (h_a(i) + h_b(j)) \bmod D`, :math:`s(i, j) = s_a(i)\, s_b(j)`.
    The hashes are fixed random buffers (``seed``): the operator has **no** learned parameters, except a
    ``Linear(D, out_dim)`` when ``out_dim`` is given. Cost :math:`O(d_a + d_b + D \log D)` per sample
    instead of :math:`d_a d_b`.
    """

    n_modalities = 2

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None, *, sketch_dim: int = 256,
                 seed: int = 0) -> None:
        super().__init__(in_dims, out_dim)
        if not isinstance(sketch_dim, int) or isinstance(sketch_dim, bool) or sketch_dim <= 0:
            raise ValueError(f"MCBFusion: sketch_dim must be a positive int, got {sketch_dim!r}")
        self.sketch_dim = sketch_dim
        g = torch.Generator().manual_seed(seed)
        for name, d in zip("ab", self.in_dims):
            self.register_buffer(f"h_{name}", torch.randint(sketch_dim, (d,), generator=g))
            self.register_buffer(f"s_{name}", 2.0 * torch.randint(2, (d,), generator=g) - 1)
        self.proj = nn.Linear(sketch_dim, out_dim) if out_dim is not None else None
        self.out_dim = out_dim or sketch_dim

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        x_a, x_b = self._check(features)
        D = self.sketch_dim
        fa = torch.fft.rfft(count_sketch(x_a, self.h_a, self.s_a, D), n=D)      # (B, D // 2 + 1), complex
        fb = torch.fft.rfft(count_sketch(x_b, self.h_b, self.s_b, D), n=D)
        z = torch.fft.irfft(fa * fb, n=D)                                       # circular convolution: (B, D)
        return z if self.proj is None else self.proj(z)


class MutanFusion(_Fusion):
    r"""MUTAN (Ben-younes et al., 2017): a Tucker decomposition of the bilinear weight tensor.

    .. math:: \tilde x_a = \tanh(W_a x_a), \quad \tilde x_b = \tanh(W_b x_b), \qquad
              z_k = \sum_{i,j} \mathcal{T}_{ijk}\, \tilde x_{a,i}\, \tilde x_{b,j}, \qquad y = W_o z,

    with factor matrices :math:`W_a \in \mathbb{R}^{t_a \times d_a}`, :math:`W_b`, :math:`W_o` and a small
    core :math:`\mathcal{T} \in \mathbb{R}^{t_a \times t_b \times t_o}` whose slices
    :math:`\mathcal{T}_{::k}` have rank ``rank`` :math:`R`:
    :math:`z = \sum_{r=1}^{R} (M_r^\top \tilde x_a) \odot (N_r^\top \tilde x_b)`. That core is exactly
    :class:`LowRankFusion` on :math:`(\tilde x_a, \tilde x_b)` (which also appends a 1, keeping the
    unimodal terms), so it is reused here as ``core``. ``proj_dims`` :math:`= (t_a, t_b)`, ``core_dim``
    :math:`= t_o`; ``out_dim`` defaults to ``core_dim`` (then :math:`W_o` is the identity).
    """

    n_modalities = 2

    def __init__(self, in_dims: Sequence[int], out_dim: int | None = None, *, proj_dims: Sequence[int] = (16, 16),
                 core_dim: int = 16, rank: int = 2) -> None:
        super().__init__(in_dims, out_dim)
        t = _check_in_dims(proj_dims, "MutanFusion (proj_dims)", 2)
        self.proj = nn.ModuleList(nn.Linear(d, t_m, bias=False) for d, t_m in zip(self.in_dims, t))
        self.core = LowRankFusion(t, core_dim, rank=rank)
        self.out = nn.Linear(core_dim, out_dim, bias=False) if out_dim is not None else None
        self.out_dim = out_dim or core_dim

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        xs = self._check(features)
        t_a, t_b = (torch.tanh(p(x)) for p, x in zip(self.proj, xs))          # (B, t_a), (B, t_b)
        z = self.core(t_a, t_b)                                                # (B, t_o)
        return z if self.out is None else self.out(z)                          # (B, out_dim)


def ogm_ge_coefficients(score_a: float | torch.Tensor, score_b: float | torch.Tensor, alpha: float, *,
                        shifted: bool = True) -> tuple[float, float]:
    r"""On-the-fly gradient modulation (OGM, Peng et al., 2022): how much to slow the dominant modality.

    With :math:`s_m = \sum_{i \in \text{batch}} \operatorname{softmax}(f_m(x_i))_{y_i}` the confidence of
    modality :math:`m`'s own logits in the true class and :math:`\rho = s_a / s_b`:

    .. math:: k_a = 1 - \tanh\big(\alpha (\rho - 1)\big) \text{ if } \rho > 1, \text{ else } 1; \qquad
              k_b = 1 - \tanh\big(\alpha (1/\rho - 1)\big) \text{ if } \rho < 1, \text{ else } 1.

    The encoder gradients of modality :math:`m` are then multiplied by :math:`k_m`. ``shifted=False``
    uses :math:`\tanh(\alpha \rho)` instead of :math:`\tanh(\alpha(\rho - 1))`, the form of the paper
    (discontinuous at :math:`\rho = 1`). Returns ``(k_a, k_b)``, each in :math:`(0, 1]`.
    """
    s_a, s_b = float(score_a), float(score_b)
    if not (s_a > 0 and s_b > 0 and math.isfinite(s_a) and math.isfinite(s_b)):
        raise ValueError(f"ogm_ge_coefficients: scores must be positive and finite, got {s_a!r} and {s_b!r}")
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"ogm_ge_coefficients: alpha must be a number >= 0, got {alpha!r}")
    rho = s_a / s_b
    k = lambda r: 1.0 - math.tanh(alpha * (r - 1.0 if shifted else r))        # r > 1: the dominant one
    return (k(rho), 1.0) if rho > 1 else ((1.0, k(1.0 / rho)) if rho < 1 else (1.0, 1.0))


def _mutual_information(p_xy: torch.Tensor) -> torch.Tensor:
    """I(X; Y) in bits of a 2-D joint table."""
    p_x, p_y = p_xy.sum(1, keepdim=True), p_xy.sum(0, keepdim=True)
    ratio = torch.where(p_xy > 0, p_xy / (p_x * p_y), torch.ones_like(p_xy))
    return (p_xy * torch.log2(ratio)).sum()


def partial_information(p: torch.Tensor) -> dict[str, float]:
    r"""Partial information decomposition of :math:`I(Y; A, B)` (Williams & Beer, 2010), in bits.

    ``p`` is the joint table :math:`p(a, b, y)`, shape ``(|A|, |B|, |Y|)``. Redundancy is :math:`I_{\min}`:

    .. math:: R = \sum_y p(y) \min_{M \in \{A, B\}} I(Y{=}y; M), \qquad
              I(Y{=}y; M) = \sum_m p(m \mid y) \log_2 \frac{p(y \mid m)}{p(y)},

    then :math:`U_A = I(Y;A) - R`, :math:`U_B = I(Y;B) - R`,
    :math:`S = I(Y;A,B) - I(Y;A) - I(Y;B) + R`, so that :math:`R + U_A + U_B + S = I(Y; A, B)`.
    Returns a dict with keys ``redundancy``, ``unique_a``, ``unique_b``, ``synergy``, ``total``.
    """
    require_rank(p, "p", 3, "(|A|, |B|, |Y|)")
    if p.dtype.is_complex or not p.dtype.is_floating_point or (p < 0).any() or abs(p.sum().item() - 1) > 1e-6:
        raise ValueError(f"partial_information: p must be a non-negative float table summing to 1, got sum "
                         f"{p.sum().item() if p.dtype.is_floating_point else p.dtype}")
    p = p.double()
    p_ay, p_by, p_y = p.sum(1), p.sum(0), p.sum((0, 1))                       # (|A|,|Y|), (|B|,|Y|), (|Y|,)
    i_a, i_b = _mutual_information(p_ay), _mutual_information(p_by)
    i_ab = _mutual_information(p.reshape(-1, p.shape[2]))
    specific = []
    for p_my in (p_ay, p_by):                                                 # I(Y=y; M) for every y
        p_m = p_my.sum(1, keepdim=True)
        ratio = torch.where(p_my > 0, p_my / (p_m * p_y), torch.ones_like(p_my))
        specific.append((p_my * torch.log2(ratio)).sum(0) / p_y.clamp_min(1e-300))
    R = (p_y * torch.minimum(*specific)).sum()
    out = {"redundancy": R, "unique_a": i_a - R, "unique_b": i_b - R, "synergy": i_ab - i_a - i_b + R, "total": i_ab}
    return {k: float(v) for k, v in out.items()}
