"""mmlearn.losses against torch.nn.functional, including extreme logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from mmlearn.losses import (
    binary_cross_entropy_with_logits,
    clip_loss,
    cross_entropy,
    info_nce,
    kl_divergence,
    log_softmax,
    logsumexp,
    siglip_loss,
)


@given(n=st.integers(1, 9), c=st.integers(1, 12), scale=st.sampled_from([1.0, 30.0, 1e4]), seed=st.integers(0, 99))
def test_cross_entropy_matches_torch_random_shapes(n, c, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    target = torch.randint(0, c, (n,), generator=g)
    ours = cross_entropy(logits, target)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, target)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_extreme_logits(device, dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4], [-1e4, 1e4, 5.0]],
                          dtype=dtype, device=device, requires_grad=True)
    target = torch.tensor([1, 2, 0, 1], device=device)
    for reduction in ("mean", "sum", "none"):
        ours = cross_entropy(logits, target, reduction=reduction)
        ref = F.cross_entropy(logits, target, reduction=reduction)
        assert torch.isfinite(ours).all()
        assert_close(ours, ref)
    (grad,) = torch.autograd.grad(cross_entropy(logits, target), logits)
    (grad_ref,) = torch.autograd.grad(F.cross_entropy(logits, target), logits)
    assert torch.isfinite(grad).all()
    assert_close(grad, grad_ref)
    assert_close(cross_entropy(logits, target, reduction="none")[0].item(), 2e4, rtol=1e-6, atol=0)


def test_naive_softmax_overflows_but_ours_does_not():
    z = torch.tensor([[1e4, 0.0]])
    naive = -(z.exp() / z.exp().sum(-1, keepdim=True)).log()     # exp(1e4) = inf: inf/inf = nan, 1/inf = 0
    assert torch.isnan(naive[0, 0]) and torch.isinf(naive[0, 1])
    assert_close(cross_entropy(z, torch.tensor([1])), torch.tensor(1e4))


def test_cross_entropy_probability_targets(device):
    logits = torch.randn(6, 5, dtype=torch.float64, device=device) * 3
    target = torch.softmax(torch.randn(6, 5, dtype=torch.float64, device=device), -1)
    assert_close(cross_entropy(logits, target), F.cross_entropy(logits, target))
    assert_close(cross_entropy(logits, target, reduction="none"), F.cross_entropy(logits, target, reduction="none"))


def test_logsumexp_and_log_softmax(device):
    x = torch.randn(4, 7, dtype=torch.float64, device=device) * 100
    x[1] = float("-inf")
    assert_close(logsumexp(x), torch.logsumexp(x, -1))
    assert_close(logsumexp(x, dim=0), torch.logsumexp(x, 0))
    y = torch.randn(3, 5, 2, dtype=torch.float64, device=device) * 1e3
    assert_close(log_softmax(y, dim=1), F.log_softmax(y, dim=1))


def test_binary_cross_entropy_with_logits(device):
    z = torch.tensor([-1e4, -30.0, -1.0, 0.0, 2.0, 40.0, 1e4], dtype=torch.float64, device=device)
    y = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.0, 1.0, 0.0], dtype=torch.float64, device=device)
    for reduction in ("mean", "none"):
        assert_close(binary_cross_entropy_with_logits(z, y, reduction),
                     F.binary_cross_entropy_with_logits(z, y, reduction=reduction))


@given(k=st.integers(1, 10), seed=st.integers(0, 99))
def test_kl_matches_torch_kl_div(k, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(3, k, generator=g, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(3, k, generator=g, dtype=torch.float64) * 2, -1)
    ours = kl_divergence(p, q)
    assert ours.shape == (3,)
    assert_close(ours, F.kl_div(q.log(), p, reduction="none").sum(-1))
    assert_close(ours.mean(), F.kl_div(q.log(), p, reduction="batchmean"))
    assert (ours >= -1e-12).all()
    assert_close(kl_divergence(p, p), torch.zeros(3, dtype=torch.float64))


def test_kl_is_asymmetric_and_handles_zeros(device):
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64, device=device)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64, device=device)
    assert_close(kl_divergence(p, q), torch.tensor(math.log(2), dtype=torch.float64, device=device))
    assert torch.isinf(kl_divergence(q, p))                # q puts mass where p has none
    a = torch.tensor([0.9, 0.1], dtype=torch.float64)
    b = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert abs(float(kl_divergence(a, b) - kl_divergence(b, a))) > 0.05


def _info_nce_reference(q, k, tau):
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


@given(n=st.integers(1, 8), extra=st.integers(0, 5), d=st.integers(1, 6), tau=st.floats(0.01, 2.0),
       seed=st.integers(0, 99))
def test_info_nce_matches_reference(n, extra, d, tau, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=torch.float64)
    k = torch.randn(n + extra, d, generator=g, dtype=torch.float64)
    assert_close(info_nce(q, k, tau), _info_nce_reference(q, k, tau))
    unnorm = F.cross_entropy(q @ k.T / tau, torch.arange(n))
    assert_close(info_nce(q, k, tau, normalize=False), unnorm)


def test_info_nce_perfect_and_random(device):
    x = torch.eye(6, dtype=torch.float64, device=device)
    assert info_nce(x, x, temperature=0.01) < 1e-10
    q, k = (torch.randn(512, 64, dtype=torch.float64, device=device) for _ in range(2))
    assert abs(float(info_nce(q, k, temperature=10.0)) - math.log(512)) < 0.01


def _clip_reference(img, txt, logit_scale):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits_per_image = logit_scale.exp() * img @ txt.T
    labels = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


@given(n=st.integers(1, 8), d=st.integers(1, 6), s=st.floats(-2.0, 5.0), seed=st.integers(0, 99))
def test_clip_loss_matches_reference(n, d, s, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g, dtype=torch.float64)
    txt = torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    ours = clip_loss(img, txt, scale)
    (g_ours,) = torch.autograd.grad(ours, scale)
    ref = _clip_reference(img, txt, scale)
    (g_ref,) = torch.autograd.grad(ref, scale)
    assert_close(ours, ref)
    assert_close(g_ours, g_ref)
    assert_close(clip_loss(img, txt, s), ref.detach())   # a float works too


def test_clip_loss_is_log_n_for_random_pairs_and_symmetric(device):
    img = torch.randn(256, 32, dtype=torch.float64, device=device)
    txt = torch.randn(256, 32, dtype=torch.float64, device=device)
    assert abs(float(clip_loss(img, txt, math.log(1.0))) - math.log(256)) < 0.02
    assert_close(clip_loss(img, txt, 2.0), clip_loss(txt, img, 2.0))


@pytest.mark.parametrize("call, match", [
    (lambda: cross_entropy(torch.randn(4), torch.tensor([0])), r"logits must be \(N, C\), got shape \(4,\)"),
    (lambda: cross_entropy(torch.randn(4, 3), torch.tensor([0, 1])), r"class-index target must be \(N,\) = \(4,\)"),
    (lambda: cross_entropy(torch.randn(2, 3), torch.tensor([0, 3])), r"target classes must be in \[0, 3\)"),
    (lambda: cross_entropy(torch.randn(2, 3), torch.rand(2, 4)), r"probability targets must be \(N, C\)"),
    (lambda: cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), reduction="avg"), "reduction must be one of"),
    (lambda: cross_entropy(torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 1])), "floating-point dtype"),
    (lambda: kl_divergence(torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.5])), "p must sum to 1.*got a sum of 1.1"),
    (lambda: kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([1.5, -0.5])), "q must be probabilities ≥ 0"),
    (lambda: kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.3, 0.5])), "same shape"),
    (lambda: info_nce(torch.randn(4, 3), torch.randn(3, 3)), r"keys must be \(M, d\) with M ≥ N = 4"),
    (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0), "temperature must be > 0"),
    (lambda: info_nce(torch.randn(4), torch.randn(4, 3)), r"query must be \(N, d\)"),
    (lambda: clip_loss(torch.randn(4, 3), torch.randn(5, 3), 1.0), r"text_emb must have the shape of image_emb"),
    (lambda: clip_loss(torch.randn(4, 3), torch.randn(4, 3), torch.ones(2)), "logit_scale must be a scalar"),
    (lambda: binary_cross_entropy_with_logits(torch.randn(3), torch.rand(4)), "target must have the shape"),
    (lambda: siglip_loss(torch.randn(4, 3), torch.randn(4, 2), 1.0, -1.0), r"text_emb must have the shape"),
    (lambda: siglip_loss(torch.randn(4), torch.randn(4), 1.0, -1.0), r"image_emb must be \(N, d\)"),
    (lambda: siglip_loss(torch.randn(4, 3), torch.randn(4, 3), 1.0, torch.ones(2)), "logit_bias must be a scalar"),
    (lambda: siglip_loss(torch.randn(4, 3), torch.randn(4, 3), torch.ones(3), 0.0), "logit_scale must be a scalar"),
    (lambda: siglip_loss(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3), 1.0, 0.0), "floating-point dtype"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- SigLIP ---------------------------------------------------------------------------------------

def _siglip_by_hand(img, txt, s, b):
    """The formula term by term in Python floats: -(1/N) sum_ij log sigma(z_ij (e^s x_i.y_j + b))."""
    n, total = len(img), 0.0
    for i in range(n):
        for j in range(n):
            x = [v / math.sqrt(sum(u * u for u in img[i])) for v in img[i]]
            y = [v / math.sqrt(sum(u * u for u in txt[j])) for v in txt[j]]
            logit = math.exp(s) * sum(a * c for a, c in zip(x, y)) + b
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * logit))                   # -log sigma(z l) = log(1 + e^{-z l})
    return total / n


def _siglip_naive(img, txt, s, b):
    """The double loop on tensors (differentiable): the reference for the gradients."""
    x, y = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    n = len(x)
    terms = [torch.log(torch.sigmoid((1 if i == j else -1) * (s.exp() * x[i] @ y[j] + b)))
             for i in range(n) for j in range(n)]
    return -torch.stack(terms).sum() / n


@given(n=st.integers(1, 7), d=st.integers(1, 6), s=st.floats(-1.0, 3.0), b=st.floats(-12.0, 4.0),
       seed=st.integers(0, 99))
def test_siglip_loss_matches_the_formula_and_its_gradients(n, d, s, b, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    ours = siglip_loss(img, txt, scale, bias)
    assert abs(ours.item() - _siglip_by_hand(img.tolist(), txt.tolist(), s, b)) < 1e-10
    grads = torch.autograd.grad(ours, (img, txt, scale, bias))
    ref_grads = torch.autograd.grad(_siglip_naive(img, txt, scale, bias), (img, txt, scale, bias))
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_close(siglip_loss(img, txt, s, b), ours.detach())                # floats work too


def test_siglip_loss_is_binary_cross_entropy_on_the_identity(device):
    g = torch.Generator().manual_seed(0)
    img = torch.randn(33, 8, generator=g, dtype=torch.float64).to(device)
    txt = torch.randn(33, 8, generator=g, dtype=torch.float64).to(device)
    logits = math.exp(2.0) * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T - 3.0
    eye = torch.eye(33, dtype=torch.float64, device=device)
    want = F.binary_cross_entropy_with_logits(logits, eye, reduction="sum") / 33
    assert_close(siglip_loss(img, txt, 2.0, -3.0), want, rtol=1e-12, atol=1e-12)


def test_siglip_loss_is_stable_and_has_the_predicted_start(device):
    img = torch.randn(64, 16, dtype=torch.float64, device=device)
    assert torch.isfinite(siglip_loss(img, img, 50.0, -1e4))                # logits of +-1e21: still finite
    # perfect, orthogonal pairs at e^s = 10, b = -10: the positives cost log(1 + e^{-0}) each, the negatives
    # log(1 + e^{-10}) each: L = log 2 + (N - 1) log(1 + e^{-10})
    eye = torch.eye(64, dtype=torch.float64, device=device)
    want = math.log(2) + 63 * math.log1p(math.exp(-10))
    assert abs(siglip_loss(eye, eye, math.log(10), -10.0).item() - want) < 1e-12


@pytest.mark.parametrize("n, scale, seed", [(1, 1.0, 0), (4, 3.0, 1), (33, 0.5, 2), (128, 20.0, 3)])
def test_info_nce_bound_matches_cross_entropy_and_is_at_most_log_n(n, scale, seed):
    from mmlearn.losses import info_nce_bound

    g = torch.Generator().manual_seed(seed)
    scores = scale * torch.randn(n, n, generator=g, dtype=torch.float64)
    bound = info_nce_bound(scores)
    assert_close(bound, math.log(n) - F.cross_entropy(scores, torch.arange(n)))
    assert bound.item() <= math.log(n) + 1e-12
    perfect = info_nce_bound(1e4 * torch.eye(n, dtype=torch.float64))   # the partner always wins
    assert_close(perfect, torch.tensor(math.log(n), dtype=torch.float64))


def test_info_nce_bound_bad_input():
    from mmlearn.losses import info_nce_bound

    with pytest.raises(ValueError, match=r"square \(N, N\)"):
        info_nce_bound(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        info_nce_bound(torch.zeros(3))
