"""Chapter 10: the vector quantiser against a hand VQ (brute-force argmin in float64), its loss against the
formula, the straight-through gradient, codebook statistics, the VQ-VAE's shapes and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmlearn.generation.vq import VQVAE, VectorQuantizer, codebook_stats, nearest_codes, train_vqvae

F64 = torch.float64


def _hand_vq(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Brute force: for every vector of z (B, D, H, W), the index of the nearest row, by a Python loop."""
    B, D, H, W = z.shape
    codes = torch.empty(B, H, W, dtype=torch.long)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                dist = [float(((z[b, :, i, j] - e) ** 2).sum()) for e in codebook]
                codes[b, i, j] = min(range(len(dist)), key=dist.__getitem__)
    return codes


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(1, 9),
       st.integers(0, 10_000))
def test_codes_and_values_match_hand_vq(B, D, H, W, K, seed):
    gen = torch.Generator().manual_seed(seed)
    vq = VectorQuantizer(K, D).to(F64)
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(K, D, generator=gen, dtype=F64))
    z = torch.randn(B, D, H, W, generator=gen, dtype=F64)
    z_q, codes, _ = vq(z)
    expected = _hand_vq(z, vq.codebook.detach())
    assert torch.equal(codes, expected)
    torch.testing.assert_close(z_q, vq.codebook.detach()[expected].permute(0, 3, 1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(vq.lookup(codes), z_q.detach(), rtol=0, atol=1e-12)


def test_nearest_codes_matches_cdist():
    z, e = torch.randn(200, 5, dtype=F64), torch.randn(17, 5, dtype=F64)
    assert torch.equal(nearest_codes(z, e), torch.cdist(z, e).argmin(1))


@pytest.mark.parametrize("beta", [0.0, 0.25, 1.5])
def test_loss_is_codebook_plus_beta_commitment(beta, device):
    vq = VectorQuantizer(7, 3, beta=beta).to(device, F64)
    with torch.no_grad():
        vq.codebook.normal_()
    z = torch.randn(2, 3, 4, 5, dtype=F64, device=device, requires_grad=True)
    _, codes, loss = vq(z)
    e = vq.codebook.detach()[codes].permute(0, 3, 1, 2)
    mse = ((z.detach() - e) ** 2).mean()
    torch.testing.assert_close(loss, (1 + beta) * mse, rtol=1e-12, atol=1e-12)
    # gradients of the loss: codebook term moves e towards z, commitment moves z towards e
    loss.backward()
    n = z.numel()
    torch.testing.assert_close(z.grad, beta * 2 * (z.detach() - e) / n, rtol=1e-10, atol=1e-12)
    expected = torch.zeros_like(vq.codebook)
    flat_z, flat_e = z.detach().permute(0, 2, 3, 1).reshape(-1, 3), e.permute(0, 2, 3, 1).reshape(-1, 3)
    expected.index_add_(0, codes.flatten(), 2 * (flat_e - flat_z) / n)
    torch.testing.assert_close(vq.codebook.grad, expected, rtol=1e-10, atol=1e-12)


def test_straight_through_gradient(device):
    vq = VectorQuantizer(5, 4).to(device, F64)
    z = torch.randn(3, 4, 2, 2, dtype=F64, device=device, requires_grad=True)
    z_q, _, _ = vq(z)
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()          # dL/dz_q = upstream
    torch.testing.assert_close(z.grad, upstream, rtol=0, atol=0)   # passed to z_e unchanged
    assert vq.codebook.grad is None or torch.count_nonzero(vq.codebook.grad) == 0


def test_codebook_stats():
    stats = codebook_stats(torch.tensor([0, 0, 1, 1]), 4)
    assert stats["dead"] == 2 and stats["counts"].tolist() == [2, 2, 0, 0]
    assert math.isclose(stats["perplexity"], 2.0, rel_tol=1e-12)
    assert math.isclose(codebook_stats(torch.arange(8), 8)["perplexity"], 8.0, rel_tol=1e-12)
    assert math.isclose(codebook_stats(torch.zeros(5, dtype=torch.long), 3)["perplexity"], 1.0)


def test_restart_moves_exactly_the_dead_codes():
    vq = VectorQuantizer(6, 2)
    before = vq.codebook.detach().clone()
    z = torch.randn(1, 2, 3, 3)
    counts = torch.tensor([3, 0, 1, 0, 0, 2])
    assert vq.restart_dead_codes_(z, counts) == 3
    moved = (vq.codebook.detach() != before).any(1)
    assert moved.tolist() == [False, True, False, True, True, False]
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for row in vq.codebook.detach()[moved]:
        assert (flat == row).all(1).any()


def test_vqvae_shapes_and_training_reduces_error():
    x = torch.rand(8, 3, 16, 16)
    model = VQVAE(num_codes=8, code_dim=4, width=8)
    recon, codes, loss = model(x)
    assert recon.shape == x.shape and codes.shape == (8, 4, 4) and loss.ndim == 0
    assert model.decode(model.encode(x)).shape == x.shape
    images = torch.zeros(64, 3, 16, 16)
    images[:, 0, 4:12, 4:12] = 1.0
    trained, history = train_vqvae(images, num_codes=8, code_dim=4, width=8, steps=150, batch_size=8, progress=False)
    assert sum(history.recon[-10:]) / 10 < history.recon[0] / 2


def test_bad_inputs():
    vq = VectorQuantizer(4, 3)
    with pytest.raises(ValueError, match=r"\(B, D, H, W\).*got shape \(2, 3\)"):
        vq(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"D = 3, got shape \(1, 5, 2, 2\)"):
        vq(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match="floating"):
        vq(torch.ones(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        vq.lookup(torch.tensor([[[4]]]))
    with pytest.raises(ValueError, match="num_codes"):
        VectorQuantizer(0, 3)
    with pytest.raises(ValueError, match=r"D = 2"):
        nearest_codes(torch.randn(3, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*divisible by 4.*got shape \(1, 3, 10, 10\)"):
        VQVAE()(torch.rand(1, 3, 10, 10))
