"""Attention, from a soft dictionary lookup to the Transformer block (chapter 6).

MASK CONVENTION — read this first
=================================
Every ``mask`` in this module is a **boolean** tensor, broadcastable to ``(..., L, S)``
(L queries, S keys), with **True = this query MAY attend to this key**. It is the convention of
``torch.nn.functional.scaled_dot_product_attention(attn_mask=...)``.

It is the OPPOSITE of ``nn.MultiheadAttention``'s ``attn_mask`` / ``key_padding_mask`` and of
``nn.Transformer*``'s ``src_mask``, where True means *blocked*. Convert with ``~mask``.

- padding: ``ids_mask`` of shape ``(B, S)`` (True = real token) becomes ``ids_mask[:, None, :]``,
  shape ``(B, 1, S)``: every query sees the real keys only. (Passed as ``(B, S)`` it would broadcast
  as an ``(L, S)`` mask — always insert the query axis);
- causal: :func:`causal_mask` ``(L, S)``, lower triangular, query i sees keys 0..i;
- combine with ``&``.

A query whose row is entirely False (a *fully masked* row) attends to nothing: its attention
weights are all 0 and its output is the zero vector, with zero gradients — what
``F.scaled_dot_product_attention`` returns (tested against the pinned torch version). A naive
``softmax`` of a row of ``-inf`` gives ``0/0 = NaN``; :func:`softmax` here returns zeros instead.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from mmlearn._validate import (
    require_floating,
    require_in,
    require_min_rank,
    require_positive,
    require_rank,
    require_tensor,
)

__all__ = [
    "softmax", "scaled_dot_product_attention", "attention_backward", "online_softmax", "flash_attention",
    "causal_mask", "sinusoidal_positions", "apply_rope", "MultiHeadAttention", "FeedForward",
    "TransformerBlock", "TransformerEncoder", "TransformerDecoder", "keep_weights", "measure_peak_memory",
]


# ---- softmax -----------------------------------------------------------------------------------

def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    """A running maximum of -inf (nothing seen yet, or everything masked) is replaced by 0."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def _safe_divide(e: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """e / total, where a total of 0 (a row that was all -inf) gives 0 instead of 0/0 = NaN."""
    return e / torch.where(total == 0, torch.ones_like(total), total)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``.

        softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j

    Subtracting ``m`` changes nothing mathematically (it cancels) but keeps every exponent <= 0,
    so nothing overflows. Equals ``torch.softmax``, except that a row that is entirely ``-inf``
    (a fully masked query) gives all zeros instead of NaN.
    """
    x = require_floating(require_tensor(x, "x"), "x")
    if x.ndim == 0 or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must index an axis of x, got dim={dim} for shape {tuple(x.shape)}")
    if x.shape[dim] == 0:
        raise ValueError(f"softmax over an empty axis is undefined: got shape {tuple(x.shape)}, dim={dim}")
    m = _finite_or_zero(x.amax(dim=dim, keepdim=True).detach())  # the shift cancels: no gradient through it
    e = torch.exp(x - m)
    return _safe_divide(e, e.sum(dim=dim, keepdim=True))


# ---- scaled dot-product attention ---------------------------------------------------------------

def _check_qkv(q: Any, k: Any, v: Any) -> torch.Size:
    """Validate q (..., L, d), k (..., S, d), v (..., S, d_v); return the broadcast batch shape."""
    for name, t, layout in (("q", q, "(..., L, d)"), ("k", k, "(..., S, d)"), ("v", v, "(..., S, d_v)")):
        require_floating(require_min_rank(t, name, 2, layout), name)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[-1] != q.shape[-1] or q.shape[-1] == 0:
        raise ValueError(f"k must be (..., S, d) with the same d >= 1 as q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[-2] != k.shape[-2] or k.shape[-2] == 0:
        raise ValueError(f"v must be (..., S, d_v) with the same S >= 1 as k {tuple(k.shape)}, got {tuple(v.shape)}")
    try:
        return torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"the batch axes (...) of q, k, v must broadcast, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}") from None


def _check_mask(mask: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """Validate a boolean mask (True = may attend) broadcastable to ``shape`` = (..., L, S)."""
    mask = require_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
    try:
        ok = tuple(torch.broadcast_shapes(mask.shape, shape)) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask must be broadcastable to (..., L, S) = {tuple(shape)}, got shape {tuple(mask.shape)}")
    return mask


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V.

    q ``(..., L, d)``, k ``(..., S, d)``, v ``(..., S, d_v)``; ``mask`` boolean, broadcastable to
    ``(..., L, S)``, True = may attend (M = 0 there, -inf elsewhere). Returns ``(out, weights)``:
    out ``(..., L, d_v)``, the attention weights ``(..., L, S)`` (each row sums to 1, or is all 0 for a
    fully masked query). ``out`` equals ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)``.
    """
    _check_qkv(q, k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., L, S)
    if mask is not None:
        scores = scores.masked_fill(~_check_mask(mask, scores.shape), float("-inf"))
    weights = softmax(scores, dim=-1)  # (..., L, S): a probability distribution over the keys
    return weights @ v, weights  # (..., L, d_v): a weighted average of the values


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor,
                       mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of a scalar loss through O = P V, P = softmax(S), S = Q K^T / sqrt(d), by hand.

        dV = P^T dO
        dP = dO V^T
        dS = P * (dP - rowsum(dO * O))     (softmax Jacobian: dS_ij = P_ij (dP_ij - sum_l P_il dP_il))
        dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d)

    ``grad_out`` = dL/dO has the shape of the output ``(..., L, d_v)``. Returns ``(dq, dk, dv)``,
    each with the shape of its input (summed over broadcast batch axes). Masked entries have P = 0, so
    they receive no gradient; a fully masked query gives zeros.
    """
    out, p = scaled_dot_product_attention(q, k, v, mask)  # (..., L, d_v), (..., L, S)
    grad_out = require_tensor(grad_out, "grad_out")
    if grad_out.shape != out.shape:
        raise ValueError(f"grad_out must have the output's shape {tuple(out.shape)}, got {tuple(grad_out.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = p.transpose(-2, -1) @ grad_out  # (..., S, d_v)
    dp = grad_out @ v.transpose(-2, -1)  # (..., L, S)
    ds = p * (dp - (grad_out * out).sum(dim=-1, keepdim=True))  # rowsum(dP * P) = rowsum(dO * O)
    dq = ds @ k * scale  # (..., L, d)
    dk = ds.transpose(-2, -1) @ q * scale  # (..., S, d)
    return dq.sum_to_size(q.shape), dk.sum_to_size(k.shape), dv.sum_to_size(v.shape)


# ---- online softmax and flash-style tiled attention ---------------------------------------------

def _require_block_size(block_size: Any) -> int:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return block_size


def online_softmax(x: torch.Tensor, block_size: int = 1) -> torch.Tensor:
    """Softmax over the last axis, reading x in blocks, with a running max (Milakov & Gimelshein, 2018).

    After each block B the running maximum m and normaliser ell are updated in one pass:

        m' = max(m, max_{j in B} x_j)
        ell' = ell * exp(m - m') + sum_{j in B} exp(x_j - m')

    so that at the end ell = sum_j exp(x_j - m) with m the global max; then softmax = exp(x - m) / ell.
    Equals :func:`softmax` for every ``block_size`` (1 = one element at a time).
    """
    x = require_floating(require_min_rank(x, "x", 1, "(..., n)"), "x")
    block_size = _require_block_size(block_size)
    if x.shape[-1] == 0:
        raise ValueError(f"softmax over an empty axis is undefined: got shape {tuple(x.shape)}")
    m = x.new_full((*x.shape[:-1], 1), float("-inf"))  # running max
    ell = x.new_zeros((*x.shape[:-1], 1))  # running sum of exp(x_j - m)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]
        m_new = torch.maximum(m, block.amax(dim=-1, keepdim=True))
        shift = _finite_or_zero(m_new)
        ell = ell * torch.exp(m - shift) + torch.exp(block - shift).sum(dim=-1, keepdim=True)  # rescale, then add
        m = m_new
    return _safe_divide(torch.exp(x - _finite_or_zero(m)), ell)


def _causal_fill(s: torch.Tensor, row0: int, col0: int, causal: bool) -> torch.Tensor:
    """In a score tile whose corner is (query row0, key col0), set keys after their query to -inf (if causal)."""
    if not causal:
        return s
    rows = torch.arange(row0, row0 + s.shape[-2], device=s.device)[:, None]
    cols = torch.arange(col0, col0 + s.shape[-1], device=s.device)[None, :]
    return s.masked_fill(cols > rows, float("-inf"))


def _flash_query_block(q_i: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row0: int, block_size: int,
                       causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of queries q_i (already scaled by 1/sqrt(d)) against every key block, in one pass.

    Returns ``(out_i (..., Bq, d_v), lse_i (..., Bq, 1))``, lse = m + log(ell) = log sum_j exp(s_j), the row
    log-sum-exp that the backward pass needs (+inf for a row with nothing to attend to, so that exp(s - lse) = 0).
    """
    n_rows, S = q_i.shape[-2], k.shape[-2]
    m = q_i.new_full((*q_i.shape[:-1], 1), float("-inf"))  # running row max
    ell = torch.zeros_like(m)  # running softmax denominator
    acc = q_i.new_zeros((*q_i.shape[:-1], v.shape[-1]))  # running numerator: sum_j exp(s_j - m) v_j
    stop = min(S, row0 + n_rows) if causal else S  # causal: later key blocks are entirely masked
    for col0 in range(0, stop, block_size):
        s = _causal_fill(q_i @ k[..., col0:col0 + block_size, :].transpose(-2, -1), row0, col0, causal)  # (..., Bq, Bk)
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        shift = _finite_or_zero(m_new)
        p = torch.exp(s - shift)  # (..., Bq, Bk) unnormalised weights
        alpha = torch.exp(m - shift)  # rescales what was accumulated under the old max
        ell = alpha * ell + p.sum(dim=-1, keepdim=True)
        acc = alpha * acc + p @ v[..., col0:col0 + block_size, :]
        m = m_new
    lse = torch.where(ell > 0, _finite_or_zero(m) + torch.log(ell), torch.full_like(ell, float("inf")))
    return _safe_divide(acc, ell), lse  # (..., Bq, d_v), (..., Bq, 1)


def _flash_backward_block(q_i: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do_i: torch.Tensor,
                          lse_i: torch.Tensor, delta_i: torch.Tensor, row0: int, block_size: int, causal: bool,
                          dk: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Backward of one query block (q_i scaled by 1/sqrt(d)), recomputing every score tile from q_i, K and lse:

        P = exp(S - lse),  dV_j += P^T dO_i,  dS = P * (dO_i V_j^T - D_i),  dQ_i += dS K_j,  dK_j += dS^T Q_i

    with D_i = rowsum(dO_i * O_i). Adds into ``dk``, ``dv`` in place; returns dS K summed over key blocks.
    """
    dq_i = torch.zeros_like(q_i)  # (..., Bq, d)
    stop = min(k.shape[-2], row0 + q_i.shape[-2]) if causal else k.shape[-2]  # the same tiles as the forward
    for col0 in range(0, stop, block_size):
        cols = slice(col0, col0 + block_size)
        k_j, v_j = k[..., cols, :], v[..., cols, :]  # (..., Bk, d), (..., Bk, d_v)
        p = torch.exp(_causal_fill(q_i @ k_j.transpose(-2, -1), row0, col0, causal) - lse_i)  # (..., Bq, Bk)
        dv[..., cols, :] += p.transpose(-2, -1) @ do_i
        ds = p * (do_i @ v_j.transpose(-2, -1) - delta_i)  # (..., Bq, Bk): the softmax backward, one tile
        dq_i += ds @ k_j
        dk[..., cols, :] += ds.transpose(-2, -1) @ q_i
    return dq_i


class _FlashAttentionFunction(torch.autograd.Function):
    """Tiled attention whose backward recomputes P tile by tile: saves q, k, v, O and the row log-sum-exp only."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int,
                causal: bool) -> torch.Tensor:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        ctx.shapes, ctx.block_size, ctx.causal = (q.shape, k.shape, v.shape), block_size, causal
        q, k, v = (t.expand(*batch, *t.shape[-2:]) for t in (q, k, v))  # views: no copy
        scale = 1.0 / math.sqrt(q.shape[-1])
        out = q.new_empty((*batch, q.shape[-2], v.shape[-1]))  # (..., L, d_v)
        lse = q.new_empty((*batch, q.shape[-2], 1))  # (..., L, 1): one number per query, not L x S
        for i in range(0, q.shape[-2], block_size):  # query blocks are independent (parallel on a GPU)
            rows = slice(i, i + block_size)
            out[..., rows, :], lse[..., rows, :] = _flash_query_block(q[..., rows, :] * scale, k, v, i, block_size,
                                                                      causal)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        B, scale = ctx.block_size, 1.0 / math.sqrt(q.shape[-1])
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # (..., L, 1): D_i = rowsum(dO * O) = rowsum(P * dP)
        dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
        dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
        dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
        for i in range(0, q.shape[-2], B):
            r = slice(i, i + B)
            dq[..., r, :] = scale * _flash_backward_block(q[..., r, :] * scale, k, v, grad_out[..., r, :],
                                                          lse[..., r, :], delta[..., r, :], i, B, ctx.causal, dk, dv)
        q_shape, k_shape, v_shape = ctx.shapes
        return dq.sum_to_size(q_shape), dk.sum_to_size(k_shape), dv.sum_to_size(v_shape), None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = 64,
                    causal: bool = False) -> torch.Tensor:
    """Exact attention softmax(Q K^T / sqrt(d)) V, tiled over queries AND keys (FlashAttention), differentiable.

    The loop order is that of FlashAttention-2 (Dao, 2023), not of the first FlashAttention (Dao et al.,
    2022): query blocks outside, key blocks inside, an unnormalised accumulator divided once at the end.

    For each block of ``block_size`` queries, the key/value blocks are visited once, keeping a running
    max m, denominator ell and numerator acc (the online softmax, extended to the weighted sum of
    values). Only ``(block_size, block_size)`` score tiles ever exist: the ``L x S`` matrix is never
    materialised. Same forward FLOPs as the naive version, O(L d) memory instead of O(L S).

    Backward (a ``torch.autograd.Function``): only q, k, v, O and the row log-sum-exp
    lse_i = log sum_j exp(S_ij) are saved; each tile of P = exp(S - lse) is recomputed, and with
    D_i = rowsum(dO * O): dV = P^T dO, dS = P * (dO V^T - D), dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d),
    accumulated tile by tile (Dao et al., 2022, Algorithm 4). Extra FLOPs, no L x S tensor.

    ``causal=True`` uses the top-left aligned mask of :func:`causal_mask` (query i sees keys 0..i), as
    ``F.scaled_dot_product_attention(is_causal=True)``; key tiles above the diagonal are skipped in both
    passes. Returns out ``(..., L, d_v)``.
    """
    _check_qkv(q, k, v)
    block_size = _require_block_size(block_size)
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    return _FlashAttentionFunction.apply(q, k, v, block_size, causal)


# ---- masks and positions ------------------------------------------------------------------------

def _require_size(n: Any, name: str) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"{name} must be an int, got {n!r}")
    return int(require_positive(n, name))


def causal_mask(L: int, S: int | None = None, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(L, S)`` mask, True = may attend: query i sees keys j <= i (lower triangle, top-left aligned).

    ``S`` defaults to ``L``. Same convention as ``F.scaled_dot_product_attention(is_causal=True)``.
    """
    L = _require_size(L, "L")
    S = L if S is None else _require_size(S, "S")
    return torch.ones(L, S, dtype=torch.bool, device=device).tril()


def sinusoidal_positions(length: int, dim: int, *, base: float = 10000.0, device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal positional encodings ``(length, dim)`` of Vaswani et al. (2017):

        PE[p, 2i] = sin(p / base^(2i/dim)),   PE[p, 2i+1] = cos(p / base^(2i/dim))
    """
    length, dim = _require_size(length, "length"), _require_size(dim, "dim")
    if dim % 2:
        raise ValueError(f"dim must be even (sin/cos pairs), got {dim}")
    require_positive(base, "base")
    pos = torch.arange(length, device=device, dtype=torch.float64)[:, None]  # (T, 1)
    freq = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)  # (dim/2,)
    angle = pos * freq  # (T, dim/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2).to(dtype)  # (T, dim), interleaved


def apply_rope(x: torch.Tensor, positions: torch.Tensor | None = None, *, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (RoFormer, Su et al. 2021) of x ``(..., T, d)``, d even.

    Each pair (x_2i, x_2i+1) of the vector at position p is rotated by the angle p * theta_i,
    theta_i = base^(-2i/d). Because rotations compose, <rope(q, m), rope(k, n)> depends on m and n only
    through n - m: attention scores become functions of the *relative* position.
    ``positions`` ``(T,)`` defaults to 0..T-1.
    """
    x = require_floating(require_min_rank(x, "x", 2, "(..., T, d)"), "x")
    T, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"x must be (..., T, d) with d even (pairs are rotated), got shape {tuple(x.shape)}")
    if positions is None:
        positions = torch.arange(T, device=x.device)
    positions = require_rank(positions, "positions", 1, "(T,)")
    if positions.shape[0] != T:
        raise ValueError(f"positions must be (T,) with T = {T}, got shape {tuple(positions.shape)}")
    theta = base ** (-torch.arange(0, d, 2, device=x.device, dtype=x.dtype) / d)  # (d/2,)
    angle = positions.to(x.dtype)[:, None] * theta  # (T, d/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each: the two coordinates of every pair
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)  # (..., T, d)


# ---- modules ------------------------------------------------------------------------------------

def _require_features(x: Any, name: str, dim: int, layout: str = "(B, T, dim)") -> torch.Tensor:
    x = require_floating(require_rank(x, name, 3, layout), name)
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must be {layout} with dim = {dim}, got shape {tuple(x.shape)}")
    return x


class MultiHeadAttention(nn.Module):
    """Multi-head attention, state_dict-compatible with ``nn.MultiheadAttention(dim, num_heads, batch_first=True)``.

        head_h = Attention(X_q W_q^h, X_k W_k^h, X_v W_v^h),   MHA = Concat(head_1..head_H) W_o

    Parameters: ``in_proj_weight`` (3 dim, dim) = [W_q; W_k; W_v] (row blocks), ``in_proj_bias`` (3 dim,),
    ``out_proj`` (a Linear). ``forward(query (B, L, dim), key (B, S, dim), value (B, S, dim), mask)``
    returns ``(out (B, L, dim), weights (B, L, S))``, the weights averaged over heads as torch does.
    ``mask``: boolean, broadcastable to (B, L, S), **True = may attend** (torch's MHA: True = blocked).

    ``need_weights=False`` is the fast path (as in nanoGPT): the heads go through PyTorch's fused
    ``F.scaled_dot_product_attention``, which never returns the weights, and ``weights`` is ``None``.
    Same output and gradients as the book's own :func:`scaled_dot_product_attention` (tested).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        dim, num_heads = _require_size(dim, "dim"), _require_size(num_heads, "num_heads")
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.MultiheadAttention``: Xavier-uniform projections, zero biases."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        x = x @ w.T + b  # (B, T, dim)
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(need_weights, bool):
            raise ValueError(f"need_weights must be a bool, got {need_weights!r}")
        query = _require_features(query, "query", self.dim, "(B, L, dim)")
        key = _require_features(key, "key", self.dim, "(B, S, dim)")
        value = _require_features(value, "value", self.dim, "(B, S, dim)")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(f"key and value must be (B, S, dim) with the B of query {tuple(query.shape)}, "
                             f"got {tuple(key.shape)} and {tuple(value.shape)}")
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(query, w_q, b_q)  # (B, nh, L, hs)
        k = self._heads(key, w_k, b_k)  # (B, nh, S, hs)
        v = self._heads(value, w_v, b_v)  # (B, nh, S, hs)
        if mask is not None:
            mask = _check_mask(mask, (B, L, S))
            mask = mask.unsqueeze(-3) if mask.ndim == 3 else mask  # (B, 1, L, S): one mask for every head
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, nh, L, hs), (B, nh, L, S)
            weights = weights.mean(dim=1)  # (B, L, S)
        else:  # fused kernel: the (B, nh, L, S) weights are never returned (nor, on a GPU, stored)
            out, weights = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        out = out.transpose(1, 2).reshape(B, L, self.dim)  # (B, L, nh * hs): the heads concatenated
        return self.out_proj(out), weights  # (B, L, dim), (B, L, S) or None


class FeedForward(nn.Module):
    """Position-wise feed-forward network: FFN(x) = act(x W_1 + b_1) W_2 + b_2, applied to every token.

    ``hidden_dim`` defaults to 4 dim. ``activation`` is ``"gelu"`` (GPT, ViT) or ``"relu"`` (Vaswani et al.).
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, *, activation: str = "gelu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = _require_size(dim, "dim")
        hidden_dim = 4 * dim if hidden_dim is None else _require_size(hidden_dim, "hidden_dim")
        require_in(activation, "activation", ("gelu", "relu"))
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU() if activation == "gelu" else nn.ReLU(),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = require_floating(require_min_rank(x, "x", 1, "(..., dim)"), "x")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must be (..., dim) with dim = {self.dim}, got shape {tuple(x.shape)}")
        return self.net(x)  # (..., dim)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm Transformer block (Xiong et al., 2020):

        x = x + SelfAttn(LN(x), mask)                        (causal=True adds causal_mask)
        x = x + CrossAttn(LN(x), context, context_mask)      (only if cross_attention=True)
        x = x + FFN(LN(x))

    ``forward(x (B, T, dim), mask=None, context=None (B, S, dim), context_mask=None)``; masks are
    boolean, True = may attend, broadcastable to (B, T, T) and (B, T, S). The last attention weights
    (averaged over heads, detached) are kept in ``self.attn_weights`` and ``self.cross_weights``.
    With ``need_weights=False`` (an attribute; it can be switched at any time) attention takes the fused
    fast path of :class:`MultiHeadAttention` and those two stay ``None``: use it for training.
    ``with keep_weights(model):`` switches every block of a model back to the weights for that block of code.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 causal: bool = False, cross_attention: bool = False, activation: str = "gelu",
                 need_weights: bool = True) -> None:
        super().__init__()
        require_positive(mlp_ratio, "mlp_ratio")
        self.causal, self.need_weights = bool(causal), bool(need_weights)
        self.norm1, self.attn = nn.LayerNorm(dim), MultiHeadAttention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attn = MultiHeadAttention(dim, num_heads) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, max(1, round(mlp_ratio * dim)), activation=activation, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.attn_weights: torch.Tensor | None = None
        self.cross_weights: torch.Tensor | None = None

    def _self_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if not self.causal:
            return mask
        causal = causal_mask(x.shape[1], device=x.device)  # (T, T)
        return causal if mask is None else _check_mask(mask, (x.shape[0], x.shape[1], x.shape[1])) & causal

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = _require_features(x, "x", self.attn.dim)
        if self.cross_attn is None and (context is not None or context_mask is not None):
            raise ValueError("context given, but this block was built without cross_attention=True")
        if self.cross_attn is not None and context is None:
            raise ValueError("this block has cross-attention: context must be (B, S, dim), got None")
        h = self.norm1(x)
        a, weights = self.attn(h, h, h, self._self_mask(x, mask), need_weights=self.need_weights)
        self.attn_weights = None if weights is None else weights.detach()
        x = x + self.drop(a)  # (B, T, dim)
        if self.cross_attn is not None:
            c, weights = self.cross_attn(self.norm_cross(x), context, context, context_mask,
                                         need_weights=self.need_weights)
            self.cross_weights = None if weights is None else weights.detach()
            x = x + self.drop(c)
        return x + self.ffn(self.norm2(x))  # FeedForward ends with its own dropout


class TransformerEncoder(nn.Module):
    """A stack of ``depth`` pre-LN :class:`TransformerBlock`s and a final LayerNorm.

    ``causal=True`` makes it a decoder-only (GPT-style) stack. ``forward(x (B, T, dim), mask=None)``.
    ``need_weights=False``: every block takes the fused attention fast path (no weights kept).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 causal: bool = False, activation: str = "gelu", need_weights: bool = True) -> None:
        super().__init__()
        depth = _require_size(depth, "depth")
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                                                     causal=causal, activation=activation, need_weights=need_weights)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)  # (B, T, dim)


class TransformerDecoder(nn.Module):
    """``depth`` causal blocks with cross-attention to a ``context`` (e.g. image patches), then a LayerNorm.

    ``forward(x (B, T, dim), context (B, S, dim), mask=None, context_mask=None)``: the captioning decoder.
    ``need_weights=False``: every block takes the fused attention fast path (no weights kept).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 activation: str = "gelu", need_weights: bool = True) -> None:
        super().__init__()
        depth = _require_size(depth, "depth")
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio=mlp_ratio, dropout=dropout, causal=True,
                                                     cross_attention=True, activation=activation,
                                                     need_weights=need_weights)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask, context, context_mask)
        return self.norm(x)  # (B, T, dim)


@contextmanager
def keep_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Inside ``with keep_weights(model):`` every attention layer of ``model`` keeps its weights.

    Sets ``need_weights = True`` on each submodule that has a boolean ``need_weights`` attribute
    (:class:`TransformerBlock`, :class:`mmlearn.models.GatedCrossAttention`) and restores the old values
    on exit. Those layers then take the book's path, softmax(Q K^T / sqrt(d) + mask) V, and keep the
    head-averaged weights (``block.attn_weights``, ``block.cross_weights``); outside, the models of
    :mod:`mmlearn.models` train on the fused fast path, which keeps none.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = [(m, m.need_weights) for m in model.modules() if isinstance(getattr(m, "need_weights", None), bool)]
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) has no attention layer with a need_weights attribute")
    for m, _ in layers:
        m.need_weights = True
    try:
        yield model
    finally:
        for m, old in layers:
            m.need_weights = old


# ---- measuring memory ---------------------------------------------------------------------------

@contextmanager
def _quiet_stderr():
    """Silence C-level stderr (the profiler prints a line when it starts and stops)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.remove(path)
    if not events:
        return result, 0
    start = events[0]["Total Allocated"] - events[0]["Bytes"]  # allocated before the first event
    return result, max(0, max(e["Total Allocated"] for e in events) - start)


def measure_peak_memory(fn: Callable[..., Any], *args: Any, device: torch.device | str | None = None,
                        **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)``; return ``(result, peak bytes allocated by torch during the call)``.

    The peak counts tensors created during the call (inputs that already existed are not counted).
    ``device`` is where the work happens; by default the device of the first tensor argument, else the CPU.
    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset. On the CPU: ``torch.profiler`` with
    ``profile_memory=True`` records every allocation and free of torch's CPU allocator with the running
    total; the peak is the maximum of that total. (``tracemalloc`` cannot see torch's allocations.)
    """
    if device is None:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"measure_peak_memory supports cpu and cuda devices, got {device}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_bytes(lambda: fn(*args, **kwargs))
