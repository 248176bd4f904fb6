"""Chapter 10 (flow matching): the path, the target, guidance, the Euler sampler against exact solutions,
the exact Gaussian-mixture velocity against quadrature, the U-Net's shapes and null condition, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmlearn.attention import sinusoidal_positions
from mmlearn.generation.diffusion import (
    CAPTION_VOCAB,
    CaptionEncoder,
    ConditionalUNet,
    cfg_velocity,
    encode_captions,
    euler_sample,
    flow_matching_loss,
    flow_path,
    flow_target,
    gaussian_mixture_velocity,
    sample_flow,
    time_embedding,
    train_flow,
)

F64 = torch.float64


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000))
def test_path_and_target_match_hand_computation(B, d, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps, t = torch.randn(B, d, generator=g, dtype=F64), torch.randn(B, d, generator=g, dtype=F64), \
        torch.rand(B, generator=g, dtype=F64)
    xt = flow_path(x0, eps, t)
    for b in range(B):
        for i in range(d):
            tb = float(t[b])
            hand = (1 - tb) * float(x0[b, i]) + tb * float(eps[b, i])
            assert float(xt[b, i]) == pytest.approx(hand, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(flow_path(x0, eps, 0.0), x0)
    torch.testing.assert_close(flow_path(x0, eps, 1.0), eps)
    # the target is the time derivative of the path: a central difference is exact for a straight line
    h = 1e-3
    torch.testing.assert_close((flow_path(x0, eps, t + h) - flow_path(x0, eps, t - h)) / (2 * h),
                               flow_target(x0, eps), rtol=1e-9, atol=1e-9)


def test_cfg_combination():
    vc, vu = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -1.0])
    torch.testing.assert_close(cfg_velocity(vc, vu, 0.0), vu)
    torch.testing.assert_close(cfg_velocity(vc, vu, 1.0), vc)
    torch.testing.assert_close(cfg_velocity(vc, vu, 3.0), torch.tensor([2.0, 11.0]))  # vu + 3 (vc - vu)


def test_euler_is_exact_for_a_constant_field_and_counts_its_steps():
    x1, c = torch.randn(4, 3, dtype=F64), torch.randn(3, dtype=F64)
    seen = []

    def v(x, t):
        seen.append(t.clone())
        return c.expand_as(x)

    path = euler_sample(v, x1, 7, return_path=True)
    assert path.shape == (8, 4, 3) and len(seen) == 7
    torch.testing.assert_close(path[0], x1)
    torch.testing.assert_close(path[-1], x1 - c)  # x_0 = x_1 - ∫_0^1 c dt
    torch.testing.assert_close(torch.stack([s[0] for s in seen]), 1 - torch.arange(7, dtype=F64) / 7)


def test_euler_converges_at_first_order_on_a_linear_field():
    # dx/dt = a x from t = 1 to 0 has x_0 = x_1 e^{-a}; Euler gives x_1 (1 - a h)^n
    a, x1 = 0.7, torch.tensor([[1.5]], dtype=F64)
    for n in (1, 5, 50):
        got = euler_sample(lambda x, t: a * x, x1, n)
        torch.testing.assert_close(got, x1 * (1 - a / n) ** n)
    err = [abs(float(euler_sample(lambda x, t: a * x, x1, n)) - 1.5 * math.exp(-a)) for n in (100, 200)]
    assert err[0] / err[1] == pytest.approx(2.0, rel=0.02)


def _quadrature_velocity(x: float, t: float, weights, means, stds) -> float:
    """E[ε - x_0 | x_t = x] in 1-D by integrating over ε on a fine grid (x_0 = (x - t ε) / (1 - t))."""
    eps = torch.linspace(-12, 12, 200_001, dtype=F64)
    x0 = (x - t * eps) / (1 - t)
    p0 = sum(w * torch.exp(-0.5 * ((x0 - m) / s) ** 2) / s for w, m, s in zip(weights, means, stds))
    dens = p0 * torch.exp(-0.5 * eps**2)  # ∝ p(x_0 = (x - tε)/(1-t)) p(ε); the Jacobian is constant
    return float(((eps - x0) * dens).sum() / dens.sum())


@pytest.mark.parametrize("t", [0.05, 0.3, 0.6, 0.9])
def test_gaussian_mixture_velocity_equals_quadrature(t):
    weights, means, stds = torch.tensor([0.3, 0.7]), torch.tensor([[-2.0], [1.5]]), torch.tensor([0.4, 0.8])
    xs = torch.tensor([[-3.0], [-0.5], [0.2], [2.5]], dtype=F64)
    got = gaussian_mixture_velocity(xs, t, weights, means, stds)
    expected = torch.tensor([[_quadrature_velocity(float(x), t, weights.tolist(), means[:, 0].tolist(),
                                                   stds.tolist())] for x in xs], dtype=F64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_exact_gaussian_flow_maps_noise_to_data_affinely():
    # for x_0 ~ N(m, s²) the flow is x_t = (1-t) m + σ_t z with σ_t² = (1-t)² s² + t², so x_1 = z ↦ m + s z
    m, s = torch.tensor([[1.0, -2.0]]), torch.tensor([0.5])
    x1 = torch.randn(5, 2, dtype=F64)
    x0 = euler_sample(lambda x, t: gaussian_mixture_velocity(x, t, torch.ones(1), m, s), x1, 4000)
    torch.testing.assert_close(x0, m.to(F64) + 0.5 * x1, rtol=0, atol=2e-3)


def test_time_embedding_is_sinusoidal_positions_at_integer_times():
    t = torch.arange(7, dtype=torch.float32) / 1000
    torch.testing.assert_close(time_embedding(t, 16), sinusoidal_positions(7, 16), rtol=1e-5, atol=1e-5)


def test_encode_captions():
    ids = encode_captions(["a small red circle left of a large blue square", "a large green triangle"])
    assert ids.shape == (2, 10)
    assert [CAPTION_VOCAB[i] for i in ids[1, :4]] == ["a", "large", "green", "triangle"]
    assert ids[1, 4:].eq(0).all() and ids[0].ne(0).all()


def test_unet_shapes_and_the_null_condition(device):
    torch.manual_seed(0)
    model = ConditionalUNet(base=8, emb_dim=16).to(device)
    x, t = torch.randn(3, 3, 16, 16, device=device), torch.rand(3, device=device)
    ids = encode_captions(["a small red circle", "a large blue square", "a small green triangle"]).to(device)
    assert model(x, t, ids).shape == (3, 3, 16, 16)
    with torch.no_grad():
        model.caption.null.copy_(torch.randn(16))
    drop = torch.tensor([True, False, True], device=device)
    c = model.caption(ids, drop)
    torch.testing.assert_close(c[0], model.caption.null)
    torch.testing.assert_close(c[2], model.caption.null)
    torch.testing.assert_close(c[1], model.caption(ids)[1])
    # dropped rows do not depend on the caption at all
    other = encode_captions(["a large yellow circle", "a large blue square", "a large red square"]).to(device)
    torch.testing.assert_close(model(x, t, ids, drop)[0], model(x, t, other, drop)[0])


def test_training_reduces_the_loss_and_sampling_returns_images():
    torch.manual_seed(0)
    model = ConditionalUNet(base=8, emb_dim=16)
    images = torch.zeros(8, 3, 16, 16)
    images[:, 0, 4:12, 4:12] = 1.0  # a red square
    caps = ["a large red square"] * 8
    losses = train_flow(model, images, caps, steps=60, batch_size=8, lr=1e-2, progress=False)
    assert sum(losses[-10:]) < 0.75 * sum(losses[:10])  # measured: about 0.66
    out = sample_flow(model, caps[:2], steps=4, guidance=2.0, image_size=16)
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(sample_flow(model, caps[:2], steps=2, image_size=16, seed=3),
                               sample_flow(model, caps[:2], steps=2, image_size=16, seed=3))
    torch.manual_seed(5)
    first = sample_flow(model, caps[:2], steps=2, image_size=16)  # seed=None: drawn from the global generator
    torch.manual_seed(5)
    torch.testing.assert_close(sample_flow(model, caps[:2], steps=2, image_size=16), first)


def test_bad_inputs():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="eps must have the shape of x0"):
        flow_path(x, torch.randn(2, 4), 0.5)
    with pytest.raises(ValueError, match=r"t must be a number or \(B,\) with B = 2"):
        flow_path(x, x, torch.rand(3))
    with pytest.raises(ValueError, match="v_uncond must have the shape"):
        cfg_velocity(x, torch.randn(3, 3), 1.0)
    with pytest.raises(ValueError, match="w must be ≥ 0"):
        cfg_velocity(x, x, -1.0)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        euler_sample(lambda x, t: x, x, 0)
    with pytest.raises(ValueError, match=r"means must be \(K, d\) with d = 3"):
        gaussian_mixture_velocity(x, 0.5, torch.ones(1), torch.zeros(1, 2), torch.ones(1))
    with pytest.raises(ValueError, match="caption must use at most 10 words"):
        encode_captions(["a purple circle"])
    with pytest.raises(ValueError, match="captions must be a list of str"):
        encode_captions("a red circle")
    model = ConditionalUNet(base=8, emb_dim=16)
    with pytest.raises(ValueError, match=r"H and W divisible by 4 \* patch = 8"):
        model(torch.randn(1, 3, 12, 12), torch.rand(1), encode_captions(["a small red circle"]))
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\)"):
        model(torch.randn(3, 16, 16), torch.rand(1), encode_captions(["a small red circle"]))
    with pytest.raises(ValueError, match=r"drop must be a bool tensor \(1,\)"):
        CaptionEncoder(8)(encode_captions(["a small red circle"]), torch.tensor([1]))
    with pytest.raises(ValueError, match="p_uncond must be in"):
        flow_matching_loss(model, torch.randn(1, 3, 16, 16), encode_captions(["a small red circle"]), p_uncond=2.0)
