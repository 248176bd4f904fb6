"""Tests of mmlearn.attention against torch (F.scaled_dot_product_attention, autograd, nn modules)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mmlearn.attention import (
    FeedForward,
    MultiHeadAttention,
    TransformerBlock,
    TransformerDecoder,
    TransformerEncoder,
    apply_rope,
    attention_backward,
    causal_mask,
    flash_attention,
    keep_weights,
    measure_peak_memory,
    online_softmax,
    scaled_dot_product_attention,
    sinusoidal_positions,
    softmax,
)

F64 = torch.float64
TIGHT = dict(atol=1e-12, rtol=1e-10)


def _qkv(device, batch=(2, 3), L=5, S=7, d=4, dv=6, dtype=F64):
    q = torch.randn(*batch, L, d, device=device, dtype=dtype)
    k = torch.randn(*batch, S, d, device=device, dtype=dtype)
    v = torch.randn(*batch, S, dv, device=device, dtype=dtype)
    return q, k, v


def _random_mask(shape, device, p=0.4, fully_masked_rows=0):
    """Random boolean mask (True = may attend); optionally some rows with nothing allowed."""
    mask = torch.rand(shape, device=device) > p
    mask[..., 0] |= True  # every row sees at least one key ...
    if fully_masked_rows:
        mask[..., :fully_masked_rows, :] = False  # ... except these
    return mask


# ---- softmax ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 9), -1), ((2, 4, 5), 1), ((2, 3, 4, 6), 0)])
def test_softmax_matches_torch(device, shape, dim):
    x = 5 * torch.randn(shape, device=device, dtype=F64)
    torch.testing.assert_close(softmax(x, dim), torch.softmax(x, dim), **TIGHT)


def test_softmax_is_stable_for_huge_inputs(device):
    x = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], device=device)
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1))
    assert torch.isfinite(softmax(x)).all()


def test_softmax_of_all_minus_inf_row_is_zero_with_zero_gradient(device):
    x = torch.tensor([[0.5, float("-inf"), 1.0], [float("-inf")] * 3], device=device, dtype=F64, requires_grad=True)
    y = softmax(x)
    torch.testing.assert_close(y[0], torch.softmax(x[0].detach(), -1))
    assert torch.equal(y[1], torch.zeros(3, device=device, dtype=F64))
    (y * torch.arange(3.0, device=device, dtype=F64)).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1], torch.zeros(3, device=device, dtype=F64))


@given(st.integers(1, 6), st.integers(1, 12), st.floats(-50, 50), st.integers(0, 2**31 - 1))
def test_softmax_properties(rows, cols, shift, seed):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64) * 10
    y = softmax(x)
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(rows, dtype=F64))
    torch.testing.assert_close(softmax(x + shift), y, **TIGHT)  # invariant to adding a constant


def test_softmax_gradient_matches_autograd_of_torch(device):
    x = torch.randn(4, 6, device=device, dtype=F64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(4, 6, device=device, dtype=F64)
    softmax(x).backward(g)
    torch.softmax(x_ref, -1).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, **TIGHT)


# ---- scaled dot-product attention ---------------------------------------------------------------

@pytest.mark.parametrize("batch,L,S,d,dv", [((), 1, 1, 1, 1), ((3,), 5, 7, 4, 6), ((2, 3), 8, 3, 16, 2),
                                            ((1, 2, 2), 6, 6, 5, 5)])
def test_sdpa_matches_torch_without_mask(device, batch, L, S, d, dv):
    q, k, v = _qkv(device, batch, L, S, d, dv)
    out, w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TIGHT)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1), **TIGHT)
    torch.testing.assert_close(w.sum(-1), torch.ones(*batch, L, device=device, dtype=F64))


@pytest.mark.parametrize("mask_shape", ["full", "per_key", "broadcast_2d", "padding"])
def test_sdpa_matches_torch_with_mask(device, mask_shape):
    q, k, v = _qkv(device, (2, 3), 6, 9, 4, 5)
    shape = {"full": (2, 3, 6, 9), "per_key": (2, 1, 1, 9), "broadcast_2d": (6, 9), "padding": (2, 1, 1, 9)}[mask_shape]
    mask = _random_mask(shape, device)
    out, w = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TIGHT)
    assert (w[~mask.expand_as(w)] == 0).all()  # a blocked key gets exactly zero weight


def test_sdpa_causal_mask_matches_is_causal(device):
    for L, S in [(6, 6), (4, 7), (7, 4)]:
        q, k, v = _qkv(device, (2,), L, S, 3, 3)
        out, _ = scaled_dot_product_attention(q, k, v, causal_mask(L, S, device=device))
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TIGHT)


def test_fully_masked_rows_give_zeros_like_torch_and_no_nan(device):
    q, k, v = _qkv(device, (2,), 6, 5, 4, 3)
    mask = _random_mask((2, 6, 5), device, fully_masked_rows=2)
    qs = [t.clone().requires_grad_() for t in (q, k, v)]
    qr = [t.clone().requires_grad_() for t in (q, k, v)]
    out, w = scaled_dot_product_attention(*qs, mask)
    ref = F.scaled_dot_product_attention(*qr, attn_mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    torch.testing.assert_close(out, ref, **TIGHT)
    assert (out[:, :2] == 0).all() and (w[:, :2] == 0).all()
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for ours, theirs in zip(qs, qr):
        assert torch.isfinite(ours.grad).all()
        torch.testing.assert_close(ours.grad, theirs.grad, **TIGHT)


def test_sdpa_gradients_match_torch_autograd(device):
    q, k, v = _qkv(device, (2, 2), 5, 6, 3, 4)
    mask = _random_mask((5, 6), device)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    g = torch.randn(2, 2, 5, 4, device=device, dtype=F64)
    scaled_dot_product_attention(*ours, mask)[0].backward(g)
    F.scaled_dot_product_attention(*ref, attn_mask=mask).backward(g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, **TIGHT)


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_self_attention_is_permutation_equivariant(batch, T, d, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, d, generator=gen, dtype=F64)
    W = [torch.randn(d, d, generator=gen, dtype=F64) for _ in range(3)]
    perm = torch.randperm(T, generator=gen)
    attend = lambda x: scaled_dot_product_attention(x @ W[0], x @ W[1], x @ W[2])[0]
    torch.testing.assert_close(attend(x[:, perm]), attend(x)[:, perm], **TIGHT)  # f(Px) = P f(x)


def test_sdpa_rejects_bad_input():
    q, k, v = _qkv("cpu", (2,), 3, 4, 5, 6)
    with pytest.raises(ValueError, match=r"q must be \(\.\.\., L, d\)"):
        scaled_dot_product_attention(torch.ones(4), k, v)
    with pytest.raises(ValueError, match="same d"):
        scaled_dot_product_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="same S"):
        scaled_dot_product_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="floating-point"):
        scaled_dot_product_attention(q.long(), k, v)
    with pytest.raises(ValueError, match="one dtype"):
        scaled_dot_product_attention(q.float(), k, v)
    with pytest.raises(ValueError, match="must broadcast"):
        scaled_dot_product_attention(q, k[:1].repeat(3, 1, 1), v[:1].repeat(3, 1, 1))
    with pytest.raises(ValueError, match="boolean"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 4))
    with pytest.raises(ValueError, match="broadcastable"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty axis"):
        softmax(torch.ones(3, 0))
    with pytest.raises(ValueError, match="dim must index"):
        softmax(torch.ones(3, 2), dim=2)


# ---- hand-written backward ----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["plain", "mask", "fully_masked", "broadcast_batch", "causal"])
def test_attention_backward_matches_autograd(device, case):
    q, k, v = _qkv(device, (2, 3), 6, 6, 4, 5)
    mask = None
    if case == "mask":
        mask = _random_mask((2, 1, 6, 6), device)
    elif case == "fully_masked":
        mask = _random_mask((2, 3, 6, 6), device, fully_masked_rows=2)
    elif case == "causal":
        mask = causal_mask(6, device=device)
    elif case == "broadcast_batch":
        k, v = k[:1, :1], v[:1, :1]  # one key/value set shared by every batch element
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, _ = scaled_dot_product_attention(*leaves, mask)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    dq, dk, dv = attention_backward(q, k, v, grad_out, mask)
    for ours, leaf in zip((dq, dk, dv), leaves):
        assert ours.shape == leaf.shape
        torch.testing.assert_close(ours, leaf.grad, **TIGHT)


def test_attention_backward_matches_finite_differences():
    q, k, v = _qkv("cpu", (), 3, 4, 2, 2)
    grad_out = torch.randn(3, 2, dtype=F64)
    loss = lambda q, k, v: (scaled_dot_product_attention(q, k, v)[0] * grad_out).sum()
    dq, dk, dv = attention_backward(q, k, v, grad_out)
    eps = 1e-6
    for grad, x, slot in ((dq, q, 0), (dk, k, 1), (dv, v, 2)):
        for idx in [(0, 0), (1, 1), (2, 0)][: x.shape[0]]:
            plus, minus = [t.clone() for t in (q, k, v)], [t.clone() for t in (q, k, v)]
            plus[slot][idx] += eps
            minus[slot][idx] -= eps
            numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(float(numeric) - float(grad[idx])) < 1e-7


def test_attention_backward_rejects_bad_grad_out():
    q, k, v = _qkv("cpu", (2,), 3, 4, 5, 6)
    with pytest.raises(ValueError, match="grad_out must have the output's shape"):
        attention_backward(q, k, v, torch.ones(2, 3, 5))


# ---- online softmax and flash attention ---------------------------------------------------------

@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 16, 100])
def test_online_softmax_equals_softmax(device, block_size):
    x = 10 * torch.randn(3, 4, 17, device=device, dtype=F64)
    x[0, 0, :9] = float("-inf")  # a block that is entirely -inf first
    x[1, 1] = float("-inf")  # a fully masked row
    torch.testing.assert_close(online_softmax(x, block_size), softmax(x), **TIGHT)


@pytest.mark.parametrize("block_size", [1, 3, 7, 16, 64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,S", [(13, 13), (9, 21), (21, 9)])
def test_flash_attention_equals_naive_and_torch(device, block_size, causal, L, S):
    q, k, v = _qkv(device, (2, 2), L, S, 8, 5)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    mask = causal_mask(L, S, device=device) if causal else None
    torch.testing.assert_close(flash_attention(q, k, v, block_size, causal), ref, **TIGHT)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask)[0], ref, **TIGHT)


def test_flash_attention_is_differentiable_and_handles_broadcast_and_large_scores(device):
    q, k, v = _qkv(device, (3,), 10, 12, 4, 4)
    k, v = k[:1], v[:1]
    q = q * 30  # big scores: exp would overflow without the running max
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, block_size=3, causal=True)
    ref, _ = scaled_dot_product_attention(q, k, v, causal_mask(10, 12, device=device))
    torch.testing.assert_close(out, ref, **TIGHT)
    g = torch.randn_like(out)
    out.backward(g)
    for ours, want in zip((leaf.grad for leaf in leaves), attention_backward(q, k, v, g, causal_mask(10, 12,
                                                                                                   device=device))):
        torch.testing.assert_close(ours, want, **TIGHT)


def _naive_attention_grads(q, k, v, g, causal):
    """Reference: autograd through the materialised softmax(Q K^T / sqrt(d)) V."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    scores = leaves[0] @ leaves[1].transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device), float("-inf"))
    (torch.softmax(scores, dim=-1) @ leaves[2]).backward(g)
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("block_size", [1, 3, 16, 64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,S", [(13, 13), (9, 21), (21, 9), (70, 67)])
def test_flash_attention_backward_equals_autograd_of_naive(device, block_size, causal, L, S):
    q, k, v = _qkv(device, (2, 3), L, S, 8, 5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, block_size=block_size, causal=causal)
    g = torch.randn_like(out)
    out.backward(g)
    for name, ours, want in zip("qkv", (leaf.grad for leaf in leaves), _naive_attention_grads(q, k, v, g, causal)):
        torch.testing.assert_close(ours, want, atol=1e-10, rtol=1e-8, msg=f"d{name}")


def test_flash_attention_backward_sums_over_broadcast_batch_axes(device):
    q = torch.randn(2, 3, 11, 4, device=device, dtype=F64)
    k = torch.randn(1, 3, 6, 4, device=device, dtype=F64)  # broadcast over the first axis
    v = torch.randn(6, 5, device=device, dtype=F64)  # no batch axes at all
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, block_size=4, causal=True)
    g = torch.randn_like(out)
    out.backward(g)
    want = _naive_attention_grads(q, k.expand(2, 3, 6, 4), v.expand(2, 3, 6, 5), g, True)
    for leaf, ref in zip(leaves, want):
        assert leaf.grad.shape == leaf.shape
        torch.testing.assert_close(leaf.grad, ref.sum_to_size(leaf.shape), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_passes_torch_gradcheck(causal):
    q, k, v = (t.requires_grad_() for t in _qkv("cpu", (2,), 5, 4, 3, 2))
    assert torch.autograd.gradcheck(lambda a, b, c: flash_attention(a, b, c, block_size=2, causal=causal), (q, k, v))


def test_flash_attention_backward_recomputes_scores_and_skips_causal_tiles():
    from torch.utils.flop_counter import FlopCounterMode

    L, d, B = 64, 8, 16
    flops = {}
    for causal in (False, True):
        leaves = [torch.randn(L, d, requires_grad=True) for _ in range(3)]
        out = flash_attention(*leaves, block_size=B, causal=causal)
        with FlopCounterMode(display=False) as counter:
            out.backward(torch.ones_like(out))
        flops[causal] = counter.get_total_flops()
    n = L // B
    assert flops[False] == 10 * L * L * d  # S recomputed (2LSd) + dV, dP, dQ, dK (8LSd)
    assert flops[True] * 2 * n == flops[False] * (n + 1)  # only the n (n + 1) / 2 tiles on or below the diagonal


def test_flash_attention_saves_no_score_matrix_for_backward():
    L, S, d = 40, 56, 8
    q, k, v = (t.requires_grad_() for t in _qkv("cpu", (2,), L, S, d, d))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        out = flash_attention(q, k, v, block_size=8)
    assert sorted(saved) == sorted([(2, L, d), (2, S, d), (2, S, d), (2, L, d), (2, L, 1)])  # q, k, v, O, lse
    out.sum().backward()  # and the backward runs from those alone
    assert all(t.grad is not None for t in (q, k, v))


def test_flash_attention_training_peak_memory_stays_below_one_score_matrix():
    L, d = 512, 16
    q, k, v = (torch.randn(L, d, requires_grad=True) for _ in range(3))
    g = torch.randn(L, d)

    def train_step(fn):
        fn().backward(g)

    _, naive_peak = measure_peak_memory(train_step, lambda: scaled_dot_product_attention(q, k, v)[0])
    _, flash_peak = measure_peak_memory(train_step, lambda: flash_attention(q, k, v, block_size=64))
    assert naive_peak >= 2 * L * L * 4  # forward + backward hold several L x S matrices
    assert flash_peak < L * L * 4 / 4  # the tiled backward never holds one


def test_flash_attention_never_materialises_the_score_matrix():
    L, d = 512, 16
    q, k, v = (torch.randn(L, d) for _ in range(3))
    with torch.no_grad():
        _, naive_peak = measure_peak_memory(scaled_dot_product_attention, q, k, v)
        out, flash_peak = measure_peak_memory(flash_attention, q, k, v, block_size=64)
    score_bytes = L * L * 4
    assert naive_peak >= score_bytes  # the naive version holds at least one L x S matrix
    assert flash_peak < score_bytes / 4  # the tiled one never does
    assert flash_peak >= out.numel() * 4  # and the measurement does see the output being allocated


def test_flash_and_online_softmax_reject_bad_input():
    q, k, v = _qkv("cpu", (), 3, 4, 5, 6)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="block_size must be a positive int"):
            flash_attention(q, k, v, block_size=bad)
        with pytest.raises(ValueError, match="block_size must be a positive int"):
            online_softmax(q, block_size=bad)
    with pytest.raises(ValueError, match="causal must be a bool"):
        flash_attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="same d"):
        flash_attention(q, k[:, :2], v)


# ---- masks and positions ------------------------------------------------------------------------

def test_causal_mask(device):
    assert torch.equal(causal_mask(4, device=device), torch.tril(torch.ones(4, 4, dtype=torch.bool, device=device)))
    m = causal_mask(2, 4)
    assert m.dtype == torch.bool and m.tolist() == [[True, False, False, False], [True, True, False, False]]
    for bad in (0, -3, 2.0):
        with pytest.raises(ValueError, match="L must be"):
            causal_mask(bad)


def test_sinusoidal_positions_closed_form(device):
    pe = sinusoidal_positions(50, 16, device=device, dtype=F64)
    assert pe.shape == (50, 16) and pe.device.type == device.type
    for p, i in [(0, 0), (7, 3), (49, 7)]:
        angle = p / 10000 ** (2 * i / 16)
        assert math.isclose(pe[p, 2 * i].item(), math.sin(angle), abs_tol=1e-12)
        assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-12)
    with pytest.raises(ValueError, match="dim must be even"):
        sinusoidal_positions(4, 5)
    with pytest.raises(ValueError, match="length must be"):
        sinusoidal_positions(0, 4)


def test_rope_matches_complex_rotation(device):
    x = torch.randn(2, 3, 7, 8, device=device, dtype=F64)
    pos = torch.arange(7, device=device)
    theta = 10000.0 ** (-torch.arange(0, 8, 2, device=device, dtype=F64) / 8)
    rotation = torch.polar(torch.ones(7, 4, device=device, dtype=F64), pos[:, None].to(F64) * theta)
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(2, 3, 7, 4, 2).contiguous()) * rotation).flatten(-2)
    torch.testing.assert_close(apply_rope(x), ref, **TIGHT)
    torch.testing.assert_close(apply_rope(x).norm(dim=-1), x.norm(dim=-1), **TIGHT)  # rotations keep lengths


@given(st.integers(0, 40), st.integers(0, 40), st.integers(-20, 20), st.integers(0, 2**31 - 1))
def test_rope_scores_depend_only_on_relative_position(m, n, shift, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 6, generator=gen, dtype=F64)
    score = lambda a, b: (apply_rope(q, torch.tensor([a])) * apply_rope(k, torch.tensor([b]))).sum()
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), **TIGHT)


def test_rope_rejects_bad_input():
    with pytest.raises(ValueError, match="d even"):
        apply_rope(torch.ones(3, 5))
    with pytest.raises(ValueError, match="positions must be"):
        apply_rope(torch.ones(3, 4), torch.arange(4))


# ---- modules ------------------------------------------------------------------------------------

def test_mha_state_dict_round_trip_and_equal_outputs(device):
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(16, 4, batch_first=True).to(device, F64)
    ours = MultiHeadAttention(16, 4).to(device, F64)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    ref2 = nn.MultiheadAttention(16, 4, batch_first=True).to(device, F64)
    ref2.load_state_dict(ours.state_dict())  # and back
    query = torch.randn(3, 5, 16, device=device, dtype=F64)
    memory = torch.randn(3, 8, 16, device=device, dtype=F64)
    for key in (query, memory):  # self-attention and cross-attention (L != S)
        out, w = ours(query, key, key)
        for theirs in (ref, ref2):
            out_ref, w_ref = theirs(query, key, key)
            torch.testing.assert_close(out, out_ref, **TIGHT)
            torch.testing.assert_close(w, w_ref, **TIGHT)


def test_mha_mask_is_the_negation_of_torchs(device):
    ref = nn.MultiheadAttention(12, 3, batch_first=True).to(device, F64)
    ours = MultiHeadAttention(12, 3).to(device, F64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 12, device=device, dtype=F64)
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool, device=device)  # padding
    mask = causal_mask(6, device=device) & keep[:, None, :]  # (B, L, S)
    out, w = ours(x, x, x, mask)
    out_ref, w_ref = ref(x, x, x, attn_mask=~causal_mask(6, device=device), key_padding_mask=~keep)
    torch.testing.assert_close(out, out_ref, **TIGHT)
    torch.testing.assert_close(w, w_ref, **TIGHT)


@pytest.mark.parametrize("masked", [False, True])
def test_mha_fast_path_gives_the_same_output_and_gradients(device, masked):
    mha = MultiHeadAttention(12, 3).to(device, F64)
    nn.init.normal_(mha.in_proj_bias)  # non-zero biases, so that every parameter is exercised
    x = torch.randn(2, 6, 12, device=device, dtype=F64)
    ctx = torch.randn(2, 9, 12, device=device, dtype=F64)
    for key in (x, ctx):  # self- and cross-attention
        mask = _random_mask((2, 6, key.shape[1]), device, fully_masked_rows=1) if masked else None
        results = []
        for need_weights in (True, False):
            mha.zero_grad()
            xq = x.clone().requires_grad_()
            out, w = mha(xq, key, key, mask, need_weights=need_weights)
            assert (w is None) == (not need_weights)
            out.backward(torch.ones_like(out))
            results.append([out, xq.grad, *(p.grad for p in mha.parameters())])
        for slow, fast in zip(*results):
            torch.testing.assert_close(fast, slow, **TIGHT)


def test_transformer_block_fast_path_equals_slow_path_and_keeps_no_weights(device):
    block = TransformerBlock(16, 4, causal=True, cross_attention=True).to(device, F64)
    x, ctx = torch.randn(2, 7, 16, device=device, dtype=F64), torch.randn(2, 5, 16, device=device, dtype=F64)
    slow = block(x, context=ctx)
    assert block.attn_weights is not None and block.cross_weights is not None
    block.need_weights = False
    torch.testing.assert_close(block(x, context=ctx), slow, **TIGHT)
    assert block.attn_weights is None and block.cross_weights is None
    enc = TransformerEncoder(16, 2, 4, causal=True, need_weights=False).to(device, F64)
    assert not any(b.need_weights for b in enc.blocks)
    assert enc(x).shape == x.shape


@pytest.mark.parametrize("causal", [False, True])
def test_block_fast_path_gives_the_same_outputs_and_gradients_with_padding(device, causal):
    """Pre-LN block, self- and cross-attention, padding (+ causal) masks, float64, dropout off:
    the fused path and the book's path agree on the output and on every gradient."""
    torch.manual_seed(0)
    block = TransformerBlock(12, 3, causal=causal, cross_attention=True).to(device, F64)
    for p in block.parameters():  # non-zero biases, non-trivial LayerNorms: every parameter exercised
        nn.init.normal_(p, std=0.3)
    x, ctx = torch.randn(3, 7, 12, device=device, dtype=F64), torch.randn(3, 5, 12, device=device, dtype=F64)
    keep = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], device=device).bool()  # (B, T) padding
    ctx_keep = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4], device=device).bool()  # (B, S)
    results = []
    for need_weights in (True, False):
        block.need_weights, _ = need_weights, block.zero_grad()
        xg, cg = x.clone().requires_grad_(), ctx.clone().requires_grad_()
        out = block(xg, keep[:, None, :], cg, ctx_keep[:, None, :])
        (out * torch.linspace(-1, 1, out.numel(), device=device, dtype=F64).view_as(out)).sum().backward()
        results.append([out, xg.grad, cg.grad, *(p.grad for p in block.parameters())])
    for slow, fast in zip(*results):
        torch.testing.assert_close(fast, slow, **TIGHT)


def test_keep_weights_switches_every_block_on_for_the_with_block_only(device):
    enc = TransformerEncoder(8, 2, 2, need_weights=False).to(device)
    x = torch.randn(2, 5, 8, device=device)
    enc(x)
    assert all(b.attn_weights is None for b in enc.blocks)
    with keep_weights(enc) as same:
        assert same is enc and all(b.need_weights for b in enc.blocks)
        enc(x)
    assert all(b.attn_weights.shape == (2, 5, 5) for b in enc.blocks)
    assert not any(b.need_weights for b in enc.blocks)  # restored, also after an exception:
    with pytest.raises(RuntimeError), keep_weights(enc):
        raise RuntimeError
    assert not any(b.need_weights for b in enc.blocks)
    with pytest.raises(ValueError, match="no attention layer"):
        with keep_weights(nn.Linear(2, 2)):
            pass
    with pytest.raises(ValueError, match="must be a torch.nn.Module"):
        with keep_weights("model"):
            pass


def test_mha_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"query must be \(B, L, dim\)"):
        mha(torch.ones(4, 8), torch.ones(1, 4, 8), torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match="dim = 8"):
        mha(torch.ones(1, 4, 6), torch.ones(1, 4, 8), torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match="key and value"):
        mha(torch.ones(1, 4, 8), torch.ones(1, 5, 8), torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match="boolean"):
        mha(torch.ones(1, 4, 8), torch.ones(1, 4, 8), torch.ones(1, 4, 8), mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="need_weights must be a bool"):
        mha(torch.ones(1, 4, 8), torch.ones(1, 4, 8), torch.ones(1, 4, 8), need_weights=0)


def _copy_block_into_torch_layer(block: TransformerBlock, layer: nn.Module) -> None:
    """Map our names to nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (norm_first=True)."""
    layer.self_attn.load_state_dict(block.attn.state_dict())
    layer.linear1.load_state_dict(block.ffn.net[0].state_dict())
    layer.linear2.load_state_dict(block.ffn.net[2].state_dict())
    layer.norm1.load_state_dict(block.norm1.state_dict())
    if block.cross_attn is None:
        layer.norm2.load_state_dict(block.norm2.state_dict())
    else:
        layer.multihead_attn.load_state_dict(block.cross_attn.state_dict())
        layer.norm2.load_state_dict(block.norm_cross.state_dict())
        layer.norm3.load_state_dict(block.norm2.state_dict())


def _randomise_norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.1)
            nn.init.normal_(m.bias, 0.0, 0.1)


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_equals_torch_encoder_layer(device, causal):
    block = TransformerBlock(16, 4, mlp_ratio=2.0, causal=causal).to(device, F64).eval()
    _randomise_norms(block)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True).to(device, F64).eval()
    _copy_block_into_torch_layer(block, layer)
    x = torch.randn(2, 7, 16, device=device, dtype=F64)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2], dtype=torch.bool, device=device)
    ours = block(x, keep[:, None, :])
    blocked = ~causal_mask(7, device=device) if causal else None
    torch.testing.assert_close(ours, layer(x, src_mask=blocked, src_key_padding_mask=~keep), **TIGHT)
    assert block.attn_weights.shape == (2, 7, 7)
    if causal:
        assert (block.attn_weights.triu(1) == 0).all()


def test_transformer_block_with_cross_attention_equals_torch_decoder_layer(device):
    block = TransformerBlock(12, 3, causal=True, cross_attention=True, activation="relu").to(device, F64).eval()
    _randomise_norms(block)
    layer = nn.TransformerDecoderLayer(12, 3, dim_feedforward=48, dropout=0.0, activation="relu",
                                       batch_first=True, norm_first=True).to(device, F64).eval()
    _copy_block_into_torch_layer(block, layer)
    x = torch.randn(2, 5, 12, device=device, dtype=F64)
    context = torch.randn(2, 9, 12, device=device, dtype=F64)
    ours = block(x, context=context)
    ref = layer(x, context, tgt_mask=~causal_mask(5, device=device))
    torch.testing.assert_close(ours, ref, **TIGHT)
    assert block.cross_weights.shape == (2, 5, 9)
    with pytest.raises(ValueError, match="context must be"):
        block(x)
    with pytest.raises(ValueError, match="without cross_attention"):
        TransformerBlock(12, 3)(x, context=context)


def test_transformer_encoder_equals_torch_encoder(device):
    enc = TransformerEncoder(8, 3, 2, mlp_ratio=4.0).to(device, F64).eval()
    _randomise_norms(enc)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=32, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    ref = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(8), enable_nested_tensor=False).to(device, F64).eval()
    for block, torch_layer in zip(enc.blocks, ref.layers):
        _copy_block_into_torch_layer(block, torch_layer)
    ref.norm.load_state_dict(enc.norm.state_dict())
    x = torch.randn(3, 6, 8, device=device, dtype=F64)
    torch.testing.assert_close(enc(x), ref(x), **TIGHT)


def test_transformer_decoder_is_causal_and_uses_context(device):
    dec = TransformerDecoder(8, 2, 2).to(device, F64).eval()
    x = torch.randn(2, 6, 8, device=device, dtype=F64)
    ctx = torch.randn(2, 4, 8, device=device, dtype=F64)
    y = dec(x, ctx)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # changing later tokens cannot change earlier outputs
    torch.testing.assert_close(dec(x2, ctx)[:, :4], y[:, :4], **TIGHT)
    assert not torch.allclose(dec(x, ctx + 1.0), y)


@settings(max_examples=12)
@given(st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_transformer_block_is_permutation_equivariant_without_positions(T, seed):
    torch.manual_seed(seed)
    block = TransformerBlock(8, 2).double().eval()
    x = torch.randn(2, T, 8, dtype=F64)
    perm = torch.randperm(T)
    torch.testing.assert_close(block(x[:, perm]), block(x)[:, perm], **TIGHT)


def test_feedforward_and_block_reject_bad_input():
    ffn = FeedForward(8, 16, activation="relu")
    x = torch.randn(3, 8, dtype=torch.float32)
    torch.testing.assert_close(ffn(x), ffn.net[2](torch.relu(ffn.net[0](x))))
    with pytest.raises(ValueError, match="dim = 8"):
        ffn(torch.ones(3, 7))
    with pytest.raises(ValueError, match="activation must be one of"):
        FeedForward(8, activation="tanh")
    with pytest.raises(ValueError, match=r"x must be \(B, T, dim\)"):
        TransformerBlock(8, 2)(torch.ones(4, 8))
    with pytest.raises(ValueError, match="depth must be"):
        TransformerEncoder(8, 0, 2)


def test_plot_attention_draws_and_rejects_bad_input():
    import matplotlib

    matplotlib.use("Agg")
    from mmlearn.viz import plot_attention

    fig = plot_attention(torch.rand(3, 4).softmax(-1), rows=list("abc"), cols=list("wxyz"), annotate=True)
    assert len(fig.axes) == 2  # the heatmap and its colorbar
    with pytest.raises(ValueError, match=r"weights must be \(L, S\)"):
        plot_attention(torch.rand(4))
    with pytest.raises(ValueError, match="one label per key"):
        plot_attention(torch.rand(3, 4), cols=["a"])
