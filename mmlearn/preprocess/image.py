"""Image preprocessing (chapter 2): value scaling, grayscale, Otsu binarisation, bilinear resize, blur;
the sRGB transfer function and luminance; kernel-based (antialiased) resizing.

Images are ``(C, H, W)`` or ``(N, C, H, W)`` floating-point tensors; every function returns a new
tensor on the input's device with the input's dtype (binarisation: see :func:`binarize`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmlearn._validate import require_floating, require_positive, require_rank, require_tensor

_IMAGE_LAYOUT = "(C, H, W) or (N, C, H, W)"
BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B


def _image(x: object, name: str = "img") -> torch.Tensor:
    return require_floating(require_rank(x, name, (3, 4), _IMAGE_LAYOUT), name)


def normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None) -> torch.Tensor:
    """Min–max scaling to [0, 1]:  x' = (x - min x) / (max x - min x).

    ``dim=None`` takes min and max over all elements; otherwise over ``dim`` (kept for broadcasting),
    e.g. ``dim=(-2, -1)`` scales each channel of each image on its own. A constant slice maps to 0.
    """
    x = require_floating(require_tensor(x, "x"), "x")
    dims = tuple(range(x.ndim)) if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1), torch.zeros_like(x))


def channel_stats(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation over every axis but C: two (C,) tensors."""
    img = _image(img)
    dims = (0, 2, 3) if img.ndim == 4 else (1, 2)
    return img.mean(dims), img.std(dims, correction=0)


def standardize(img: torch.Tensor, mean: Sequence[float] | torch.Tensor | None = None,
                std: Sequence[float] | torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Per-channel standardisation:  x'_c = (x_c - μ_c) / (σ_c + eps).

    ``mean`` and ``std`` (length C) are given — e.g. the training set's — or computed from ``img``
    by :func:`channel_stats`. Afterwards each channel has mean 0 and standard deviation ≈ 1.
    """
    img = _image(img)
    c = img.shape[-3]
    mu, sigma = channel_stats(img)
    mu = mu if mean is None else torch.as_tensor(mean, dtype=img.dtype, device=img.device)
    sigma = sigma if std is None else torch.as_tensor(std, dtype=img.dtype, device=img.device)
    for name, v in (("mean", mu), ("std", sigma)):
        if v.shape != (c,):
            raise ValueError(f"{name} must have one value per channel ({c},), got shape {tuple(v.shape)}")
    if (sigma < 0).any():
        raise ValueError(f"std must be >= 0, got {sigma.tolist()}")
    return (img - mu[:, None, None]) / (sigma[:, None, None] + eps)


def to_grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luma of an RGB image (ITU-R BT.601):  Y = 0.299 R + 0.587 G + 0.114 B;  (…, 3, H, W) -> (…, 1, H, W)."""
    img = _image(img)
    if img.shape[-3] != 3:
        raise ValueError(f"img must have 3 (RGB) channels, got shape {tuple(img.shape)}")
    w = torch.tensor(BT601, dtype=img.dtype, device=img.device)
    return (img * w[:, None, None]).sum(-3, keepdim=True)


def _histogram(gray: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of values in [0, 1] over ``bins`` equal bins; bin k holds [k/bins, (k+1)/bins) (1 in the last)."""
    k = (gray.flatten() * bins).long().clamp_(0, bins - 1)
    return torch.bincount(k, minlength=bins).to(torch.float64)


def otsu_threshold(gray: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of values in [0, 1]: the t maximising the between-class variance.

    With bin probabilities p_i, ω(k) = Σ_{i≤k} p_i, μ(k) = Σ_{i≤k} i p_i and μ_T = μ(bins-1):
        σ_B²(k) = (μ_T ω(k) - μ(k))² / (ω(k) (1 - ω(k)))       (0 where a class is empty),
    evaluated for every k at once; k* = argmax (the first on ties) and t = (k* + 1) / bins, so that
    ``gray >= t`` is the bright class. Returns a 0-d tensor of ``gray``'s dtype and device.
    """
    gray = require_floating(require_tensor(gray, "gray"), "gray")
    bins = int(require_positive(bins, "bins"))
    if gray.numel() == 0 or gray.min() < 0 or gray.max() > 1:
        raise ValueError("gray must be a non-empty tensor with values in [0, 1] (normalize it first), got "
                         + ("an empty tensor" if gray.numel() == 0 else f"range [{gray.min():.3g}, {gray.max():.3g}]"))
    p = _histogram(gray, bins)
    p = p / p.sum()                                                           # (bins,)
    i = torch.arange(bins, dtype=torch.float64, device=p.device)
    omega, mu = p.cumsum(0), (i * p).cumsum(0)                                # (bins,)
    denom = omega * (1 - omega)
    sigma_b = torch.where(denom > 1e-12, (mu[-1] * omega - mu) ** 2 / denom.clamp(min=1e-12), 0.0)
    k = int(sigma_b[:-1].argmax())                                            # k = bins-1 leaves one class
    return torch.tensor((k + 1) / bins, dtype=gray.dtype, device=gray.device)


def binarize(gray: torch.Tensor, threshold: float | torch.Tensor | None = None) -> torch.Tensor:
    """1 where ``gray >= threshold``, else 0, in ``gray``'s dtype; ``threshold=None`` uses :func:`otsu_threshold`."""
    gray = require_floating(require_tensor(gray, "gray"), "gray")
    t = otsu_threshold(gray) if threshold is None else torch.as_tensor(threshold, dtype=gray.dtype,
                                                                          device=gray.device)
    return (gray >= t).to(gray.dtype)


def _source_index(n_in: int, n_out: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half-pixel mapping of output pixel j to input coordinate s = (j + 1/2)·n_in/n_out - 1/2, clamped to
    [0, n_in - 1]; returns the two neighbours i0 = ⌊s⌋, i1 = min(i0 + 1, n_in - 1) and the weight λ = s - i0."""
    j = torch.arange(n_out, dtype=torch.float64, device=like.device)
    s = ((j + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = s.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (s - i0).clamp(max=1).to(like.dtype)


def resize_bilinear(img: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (C, H, W) or (N, C, H, W) to ``size`` = (H', W') (an int: square).

    Separable linear interpolation along H then W, at source coordinates given by the half-pixel
    mapping of :func:`_source_index` — equal to ``F.interpolate(mode="bilinear", align_corners=False)``.
    """
    img = _image(img)
    h_out, w_out = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(v, int) and v > 0 for v in (h_out, w_out)):
        raise ValueError(f"size must be a positive int or a pair of positive ints, got {size!r}")
    y0, y1, ly = _source_index(img.shape[-2], h_out, img)
    x0, x1, lx = _source_index(img.shape[-1], w_out, img)
    rows = img[..., y0, :] * (1 - ly)[:, None] + img[..., y1, :] * ly[:, None]   # (…, C, H', W)
    return rows[..., x0] * (1 - lx) + rows[..., x1] * lx                          # (…, C, H', W')


def gaussian_kernel(sigma: float, radius: int | None = None, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian g_i ∝ exp(-i² / (2σ²)), i = -r..r (r = ⌈3σ⌉ by default): shape (2r + 1,)."""
    require_positive(sigma, "sigma")
    r = math.ceil(3 * sigma) if radius is None else radius
    i = torch.arange(-r, r + 1, dtype=dtype, device=device)
    g = torch.exp(-(i**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) or (N, C, H, W), reflect padding: a low-pass filter
    applied before downsampling to remove the frequencies above the new Nyquist limit."""
    img = _image(img)
    x = img[None] if img.ndim == 3 else img
    c = x.shape[1]
    g = gaussian_kernel(sigma, dtype=x.dtype, device=x.device)
    r = (len(g) - 1) // 2
    if r >= min(x.shape[-2:]):
        raise ValueError(f"sigma={sigma} needs a kernel radius {r} smaller than the image side {min(x.shape[-2:])}")
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)       # along W
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)       # along H
    return x[0] if img.ndim == 3 else x


# ---- light: sRGB transfer function, luminance, the constants of pretrained encoders -------------

BT709 = (0.2126, 0.7152, 0.0722)  # ITU-R BT.709 / sRGB weights of linear R, G, B (relative luminance)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per-channel mean of ImageNet training images in [0, 1] (torchvision)
IMAGENET_STD = (0.229, 0.224, 0.225)   # per-channel standard deviation, same images


def _unit_range(x: object, name: str) -> torch.Tensor:
    x = require_floating(require_tensor(x, name), name)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must hold values in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]")
    return x


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Decode sRGB values V ∈ [0, 1] to linear light L (IEC 61966-2-1):

        L = V / 12.92                      if V ≤ 0.04045
        L = ((V + 0.055) / 1.055) ** 2.4   otherwise.
    Elementwise, any shape.
    """
    v = _unit_range(x, "x")
    return torch.where(v <= 0.04045, v / 12.92, ((v.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Encode linear light L ∈ [0, 1] as sRGB V (IEC 61966-2-1), the inverse of :func:`srgb_to_linear`:

        V = 12.92 L                        if L ≤ 0.0031308
        V = 1.055 L ** (1 / 2.4) - 0.055   otherwise.
    """
    lin = _unit_range(x, "x")
    return torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def luminance(img: torch.Tensor) -> torch.Tensor:
    """Relative luminance of an sRGB image:  Y = 0.2126 R + 0.7152 G + 0.0722 B  on *linear* R, G, B
    (decoded by :func:`srgb_to_linear`);  (…, 3, H, W) -> (…, 1, H, W), in linear light."""
    img = _image(img)
    if img.shape[-3] != 3:
        raise ValueError(f"img must have 3 (RGB) channels, got shape {tuple(img.shape)}")
    w = torch.tensor(BT709, dtype=img.dtype, device=img.device)
    return (srgb_to_linear(img) * w[:, None, None]).sum(-3, keepdim=True)


# ---- the interpolation-kernel family and antialiased resizing ----------------------------------

def _keys_cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1                 # |x| ≤ 1
    far = ((x - 5) * x + 8) * x * a - 4 * a                    # 1 < |x| < 2
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


KERNELS = {  # name -> (k(x), support: k(x) = 0 for |x| ≥ support)
    "box": (lambda x: ((x > -0.5) & (x <= 0.5)).to(x.dtype), 0.5),
    "tent": (lambda x: (1 - x.abs()).clamp(min=0), 1.0),
    "cubic": (_keys_cubic, 2.0),
}


def interpolation_kernel(name: str, x: torch.Tensor) -> torch.Tensor:
    """k(x) of a reconstruction kernel: box 1[-1/2 < x ≤ 1/2], tent max(0, 1 - |x|), or Keys' cubic
    (a = -1/2: (a+2)|x|³ - (a+3)|x|² + 1 for |x| ≤ 1, a|x|³ - 5a|x|² + 8a|x| - 4a for 1 < |x| < 2)."""
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {name!r}")
    return KERNELS[name][0](require_floating(require_tensor(x, "x"), "x"))


def resample_matrix(n_in: int, n_out: int, kernel: str = "tent", *, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """(n_out, n_in) weights of a separable resize: W_ji ∝ k((i + ½ - c_j) / s), rows normalised to 1,
    with centre c_j = (j + ½) n_in / n_out and stretch s = max(n_in / n_out, 1) — the kernel widens by
    the shrink factor, so it is also the low-pass (antialias) filter. Tent/cubic = PIL and
    ``F.interpolate(..., antialias=True)``."""
    if not all(isinstance(v, int) and v > 0 for v in (n_in, n_out)):
        raise ValueError(f"n_in and n_out must be positive ints, got {n_in!r}, {n_out!r}")
    k, _ = KERNELS.get(kernel, (None, None))
    if k is None:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    scale = n_in / n_out
    c = (torch.arange(n_out, dtype=dtype, device=device) + 0.5) * scale                  # (n_out,)
    i = torch.arange(n_in, dtype=dtype, device=device) + 0.5                             # (n_in,)
    w = k((i[None, :] - c[:, None]) / max(scale, 1.0))                                   # (n_out, n_in)
    return w / w.sum(1, keepdim=True)


def resize_antialias(img: torch.Tensor, size: int | Sequence[int], kernel: str = "tent") -> torch.Tensor:
    """Separable resize of (C, H, W) or (N, C, H, W) with :func:`resample_matrix` along H and W:
    out = W_H · img · W_Wᵀ. ``kernel="tent"`` equals ``F.interpolate(mode="bilinear", antialias=True)``."""
    img = _image(img)
    h_out, w_out = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(v, int) and v > 0 for v in (h_out, w_out)):
        raise ValueError(f"size must be a positive int or a pair of positive ints, got {size!r}")
    wh = resample_matrix(img.shape[-2], h_out, kernel, dtype=img.dtype, device=img.device)   # (H', H)
    ww = resample_matrix(img.shape[-1], w_out, kernel, dtype=img.dtype, device=img.device)   # (W', W)
    return torch.einsum("yh,...hw,xw->...yx", wh, img, ww)                                    # (…, C, H', W')
