"""Image preprocessing from scratch vs references (mmlearn.preprocess.image)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from mmlearn.preprocess import (
    binarize,
    channel_stats,
    gaussian_blur,
    gaussian_kernel,
    normalize,
    otsu_threshold,
    resize_bilinear,
    standardize,
    to_grayscale,
)

# ---- normalize / standardize ------------------------------------------------------------------


def test_normalize_all_and_per_channel(device: torch.device) -> None:
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, device=device) * 4 + 3
    y = normalize(x)
    assert y.min() == 0 and y.max() == 1 and y.device == x.device
    torch.testing.assert_close(y, (x - x.min()) / (x.max() - x.min()))
    z = normalize(x, dim=(-2, -1))
    torch.testing.assert_close(z.amin((-2, -1)), torch.zeros(2, 3, dtype=torch.float64, device=device))
    torch.testing.assert_close(z.amax((-2, -1)), torch.ones(2, 3, dtype=torch.float64, device=device))
    torch.testing.assert_close(normalize(torch.full((3, 4), 2.0)), torch.zeros(3, 4))  # constant -> 0


@pytest.mark.parametrize("shape", [(3, 6, 5), (4, 3, 6, 5), (2, 1, 3, 3)])
def test_standardize_matches_closed_form(shape: tuple[int, ...], device: torch.device) -> None:
    x = torch.rand(shape, dtype=torch.float64, device=device) * 5 - 1
    dims = [d for d in range(x.ndim) if d != x.ndim - 3]
    mean, std = x.mean(dims), x.std(dims, correction=0)
    m, s = channel_stats(x)
    torch.testing.assert_close(m, mean)
    torch.testing.assert_close(s, std)
    y = standardize(x)
    torch.testing.assert_close(y.mean(dims), torch.zeros_like(mean), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.std(dims, correction=0), torch.ones_like(std), atol=1e-6, rtol=0)
    c = x.shape[-3]
    given_mean, given_std = [0.5] * c, [2.0] * c
    torch.testing.assert_close(standardize(x, given_mean, given_std, eps=0), (x - 0.5) / 2)


# ---- grayscale --------------------------------------------------------------------------------

def test_grayscale_bt601(device: torch.device) -> None:
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, device=device)
    expected = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    torch.testing.assert_close(to_grayscale(x), expected)
    assert to_grayscale(x[0]).shape == (1, 4, 5)
    white = torch.ones(3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(to_grayscale(white), torch.ones(1, 2, 2, dtype=torch.float64))  # weights sum to 1


# ---- Otsu ----------------------------------------------------------------------------------------

def _brute_force_otsu(gray: torch.Tensor, bins: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Within-class variance of the bin indices for every split k (class 0 = bins <= k), by loops."""
    k_of = (gray.flatten() * bins).long().clamp(0, bins - 1).double()
    within = torch.empty(bins - 1, dtype=torch.float64)
    for k in range(bins - 1):
        lo, hi = k_of[k_of <= k], k_of[k_of > k]
        within[k] = sum(len(c) * c.var(correction=0) for c in (lo, hi) if len(c)) / len(k_of)
    return within, k_of.var(correction=0)


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=60))
def test_otsu_equals_brute_force(values: list[float]) -> None:
    gray = torch.tensor(values, dtype=torch.float64)
    t = otsu_threshold(gray)
    k = round(float(t) * 256) - 1
    within, total = _brute_force_otsu(gray)
    # minimising within-class variance = maximising between-class variance (total = within + between)
    torch.testing.assert_close(within[k], within.min(), atol=1e-9, rtol=1e-9)
    assert float(within.min()) <= float(total) + 1e-12


def test_otsu_on_two_blobs_and_binarize(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    dark = 0.2 + 0.03 * torch.randn(500, generator=g)
    bright = 0.7 + 0.03 * torch.randn(300, generator=g)
    gray = torch.cat([dark, bright]).clamp(0, 1).to(device).view(1, 20, 40)
    t = otsu_threshold(gray)
    assert 0.3 < t < 0.6 and t.device == gray.device and t.dtype == gray.dtype
    b = binarize(gray)
    assert b.dtype == gray.dtype and b.sum() == 300
    torch.testing.assert_close(b, (gray >= t).to(gray.dtype))
    torch.testing.assert_close(binarize(gray, 0.5), (gray >= 0.5).float())


def test_otsu_bins_argument() -> None:
    gray = torch.tensor([0.1, 0.12, 0.8, 0.85], dtype=torch.float64)
    t = otsu_threshold(gray, bins=16)
    assert 0.12 < t <= 0.8 and float(t) * 16 == round(float(t) * 16)


# ---- bilinear resize ---------------------------------------------------------------------------

@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 17), st.integers(1, 17), st.integers(1, 23),
       st.integers(1, 23))
def test_resize_equals_interpolate(n: int, c: int, h: int, w: int, h2: int, w2: int) -> None:
    x = torch.rand(n, c, h, w, dtype=torch.float64)
    ref = F.interpolate(x, size=(h2, w2), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_bilinear(x, (h2, w2)), ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(resize_bilinear(x[0], (h2, w2)), ref[0], atol=1e-12, rtol=1e-12)


@given(st.integers(1, 20), st.integers(1, 20))
def test_resize_to_the_same_size_is_the_identity(h: int, w: int) -> None:
    x = torch.rand(2, h, w, dtype=torch.float64)
    torch.testing.assert_close(resize_bilinear(x, (h, w)), x, atol=0, rtol=0)


def test_resize_float32_on_device(device: torch.device) -> None:
    x = torch.rand(2, 3, 37, 29, device=device)
    for size in (64, (13, 50), (5, 5)):
        out = resize_bilinear(x, size)
        ref = F.interpolate(x, size=(size, size) if isinstance(size, int) else size, mode="bilinear",
                            align_corners=False)
        assert out.dtype == torch.float32 and out.device == x.device
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


# ---- Gaussian blur -------------------------------------------------------------------------------

def test_gaussian_blur_matches_conv2d(device: torch.device) -> None:
    x = torch.rand(2, 3, 20, 17, dtype=torch.float64, device=device)
    g = gaussian_kernel(1.5, dtype=torch.float64, device=device)
    assert len(g) == 11 and abs(float(g.sum()) - 1) < 1e-12
    k2 = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)
    ref = F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), k2, groups=3)
    torch.testing.assert_close(gaussian_blur(x, 1.5), ref)
    torch.testing.assert_close(gaussian_blur(x[0], 1.5), ref[0])
    const = torch.full((1, 9, 9), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const, 1.0), const)  # the kernel sums to 1


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_input() -> None:
    img = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match=r"must be \(C, H, W\) or \(N, C, H, W\)"):
        resize_bilinear(torch.rand(8, 8), 4)
    with pytest.raises(ValueError, match="size must be a positive int"):
        resize_bilinear(img, 0)
    with pytest.raises(ValueError, match="size must be a positive int"):
        resize_bilinear(img, (4, 2.5))
    with pytest.raises(ValueError, match="floating-point"):
        resize_bilinear(torch.ones(3, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        to_grayscale(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        otsu_threshold(torch.rand(10) * 3)
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        otsu_threshold(torch.empty(0))
    with pytest.raises(ValueError, match="bins must be > 0"):
        otsu_threshold(torch.rand(10), bins=0)
    with pytest.raises(ValueError, match="one value per channel"):
        standardize(img, mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="std must be >= 0"):
        standardize(img, std=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        normalize([1.0, 2.0])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_blur(img, 0.0)
    with pytest.raises(ValueError, match="smaller than the image side"):
        gaussian_blur(img, 5.0)


# ---- sRGB transfer function, luminance, antialiased resizing ---------------------------------------

from mmlearn.preprocess.image import (  # noqa: E402
    BT709,
    interpolation_kernel,
    linear_to_srgb,
    luminance,
    resample_matrix,
    resize_antialias,
    srgb_to_linear,
)


def _iec_decode(v: float) -> float:
    """IEC 61966-2-1, written out in plain Python floats."""
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _iec_encode(x: float) -> float:
    return 12.92 * x if x <= 0.0031308 else 1.055 * x ** (1 / 2.4) - 0.055


def test_srgb_matches_iec_formula_and_round_trips(device: torch.device) -> None:
    v = torch.cat([torch.rand(500, dtype=torch.float64), torch.tensor([0.0, 0.04045, 0.0031308, 1.0],
                                                                       dtype=torch.float64)]).to(device)
    torch.testing.assert_close(srgb_to_linear(v).cpu(), torch.tensor([_iec_decode(x) for x in v.tolist()],
                                                                     dtype=torch.float64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(linear_to_srgb(v).cpu(), torch.tensor([_iec_encode(x) for x in v.tolist()],
                                                                     dtype=torch.float64), rtol=1e-12, atol=1e-15)
    # the standard's constants are rounded, so its two pieces meet only to ~1e-8 at the break point
    gap = abs(0.04045 / 12.92 - ((0.04045 + 0.055) / 1.055) ** 2.4)
    assert 1e-10 < gap < 1e-7
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(v)), v, rtol=0, atol=1e-7)
    torch.testing.assert_close(srgb_to_linear(linear_to_srgb(v)), v, rtol=0, atol=1e-7)
    inner = (v - 0.04045).abs() > 1e-3
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(v[inner])), v[inner], rtol=0, atol=1e-12)
    torch.testing.assert_close(srgb_to_linear(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))


def test_srgb_8bit_round_trip_and_monotone() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 255
    lin = srgb_to_linear(levels)
    assert (lin.diff() > 0).all()
    assert torch.equal((linear_to_srgb(lin) * 255).round(), torch.arange(256, dtype=torch.float64))


def test_luminance_is_bt709_of_linear(device: torch.device) -> None:
    img = torch.rand(2, 3, 5, 4, dtype=torch.float64, device=device)
    ref = sum(w * srgb_to_linear(img[:, c:c + 1]) for c, w in enumerate(BT709))
    torch.testing.assert_close(luminance(img), ref)
    torch.testing.assert_close(luminance(torch.ones(3, 2, 2)), torch.ones(1, 2, 2))


@pytest.mark.parametrize("size", [(9, 13), (20, 31), (37, 53), (50, 80), (12, 7), (1, 1)])
@pytest.mark.parametrize("kernel,mode", [("tent", "bilinear"), ("cubic", "bicubic")])
def test_resize_antialias_matches_torch(size: tuple[int, int], kernel: str, mode: str, device: torch.device) -> None:
    x = torch.rand(2, 3, 37, 53, dtype=torch.float64, device=device)
    ref = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    torch.testing.assert_close(resize_antialias(x, size, kernel), ref)


def test_resize_antialias_box_is_area_average(device: torch.device) -> None:
    x = torch.rand(3, 40, 60, dtype=torch.float64, device=device)
    torch.testing.assert_close(resize_antialias(x, (10, 15), "box"), F.avg_pool2d(x[None], 4)[0])
    torch.testing.assert_close(resize_antialias(x, (40, 60), "tent"), x)  # same size: identity


def test_kernels_partition_of_unity_and_rows_sum_to_one() -> None:
    x = torch.linspace(-0.5, 0.5, 41, dtype=torch.float64)
    for name in ("box", "tent", "cubic"):
        total = sum(interpolation_kernel(name, x + k) for k in range(-3, 4))   # Σ_k k(x + k) = 1
        torch.testing.assert_close(total, torch.ones_like(x))
        torch.testing.assert_close(resample_matrix(17, 5, name).sum(1), torch.ones(5, dtype=torch.float64))


def test_light_and_kernel_bad_input() -> None:
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        srgb_to_linear(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        linear_to_srgb(torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="floating-point"):
        srgb_to_linear(torch.tensor([1]))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        luminance(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="kernel must be one of"):
        resize_antialias(torch.rand(3, 8, 8), 4, "lanczos")
    with pytest.raises(ValueError, match="kernel must be one of"):
        interpolation_kernel("sinc", torch.zeros(3))
    with pytest.raises(ValueError, match="size must be"):
        resize_antialias(torch.rand(3, 8, 8), (0, 4))
    with pytest.raises(ValueError, match="n_in and n_out"):
        resample_matrix(0, 3)
