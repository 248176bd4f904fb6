"""Checks for the exercises of notebooks/02_preprocessing_image.ipynb and 02_preprocessing_image_light.ipynb."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmlearn.checks import (
    CheckFailed,
    call_student,
    expect_close,
    expect_number,
    expect_value_error,
    fresh_generator,
    register,
)


@register("ex-ch02-image-channel-stats", hint="Reduce over dims (0, 2, 3); the population std uses correction=0 "
                                        "(divide by N·H·W).")
def _check_channel_stats(channel_mean_std) -> None:
    gen = fresh_generator()
    for case in range(4):
        n, c, h, w = (int(v) for v in torch.randint(1, 6, (4,), generator=gen))
        x = torch.rand(n, c, h, w, generator=gen, dtype=torch.float64) * 3 - 1
        got = channel_mean_std(x)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"case {case}: expected a pair (mean, std), got {type(got).__name__}")
        std, mean = torch.std_mean(x, dim=(0, 2, 3), correction=0)
        expect_close(got[0], mean, what=f"case {case}: mean of images {tuple(x.shape)}", atol=1e-10)
        expect_close(got[1], std, what=f"case {case}: std of images {tuple(x.shape)}", atol=1e-10)
    expect_value_error(channel_mean_std, torch.rand(3, 8, 8), what="a 3-D input (3, 8, 8)")


@register("ex-ch02-image-luma", hint="Y = 0.299 R + 0.587 G + 0.114 B for each colour; multiply the difference by 255.")
def _check_luma(answer) -> None:
    red = 0.299 * 0.90 + 0.587 * 0.15 + 0.114 * 0.15
    blue = 0.299 * 0.20 + 0.587 * 0.35 + 0.114 * 0.95
    expect_number(answer, 255 * abs(red - blue), what="255 · |Y_red − Y_blue|", tol=2e-3)


def _within_class_variances(gray: torch.Tensor) -> torch.Tensor:
    """Within-class variance of the bin indices for every split k = 0..254 (brute force)."""
    i = (gray.flatten() * 256).long().clamp(0, 255).double()
    out = torch.empty(255, dtype=torch.float64)
    for k in range(255):
        lo, hi = i[i <= k], i[i > k]
        out[k] = sum(len(c) * c.var(correction=0) for c in (lo, hi) if len(c)) / len(i)
    return out


@register("ex-ch02-image-otsu", hint="p = bincount / total; ω = cumsum(p), μ = cumsum(i·p); "
                               "σ_B² = (μ_T ω − μ)² / (ω(1 − ω)); argmax over k = 0..254, then return (k + 1) / 256.")
def _check_otsu(otsu) -> None:
    gen = fresh_generator()
    for case in range(4):
        n_dark, n_bright = (int(v) for v in torch.randint(50, 400, (2,), generator=gen))
        lo, hi = sorted(torch.rand(2, generator=gen).tolist())
        hi = max(hi, lo + 0.2)
        values = torch.cat([lo * 0.8 + 0.05 * torch.randn(n_dark, generator=gen),
                            min(hi, 0.95) + 0.05 * torch.randn(n_bright, generator=gen)]).clamp(0, 1)
        t = otsu(values.view(1, -1, 1))
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise CheckFailed(f"case {case}: expected a float threshold, got {type(t).__name__}") from None
        k = round(t * 256) - 1
        if abs(t * 256 - round(t * 256)) > 1e-6 or not 0 <= k <= 254:
            raise CheckFailed(f"case {case}: the threshold must be (k + 1) / 256 for a split k in 0..254, got {t:.6g}")
        within = _within_class_variances(values)
        if within[k] > within.min() + 1e-9:
            best = int(within.argmin())
            raise CheckFailed(f"case {case} ({len(values)} pixels): your threshold {t:.4f} (split after bin {k}) "
                              f"leaves a within-class variance of {within[k]:.3f} bins², but split {best} "
                              f"reaches {within.min():.3f}")


@register("ex-ch02-image-source-coordinate", hint="s = (j + 1/2) · n_in / n_out − 1/2 with j = 1, n_in = 8, n_out = 3.")
def _check_source_coordinate(answer) -> None:
    expect_number(answer, 1.5 * 8 / 3 - 0.5, what="source index of output pixel 1 (8 → 3)", tol=1e-6)


@register("ex-ch02-image-nearest", hint="Source index = floor((j + 0.5) · n_in / n_out), clamped to n_in − 1, computed "
                                  "once per output row and column; then index rows and columns.")
def _check_nearest(resize_nearest) -> None:
    gen = fresh_generator()
    for case in range(6):
        batched = case % 2 == 1
        h, w, h2, w2 = (int(v) for v in torch.randint(1, 24, (4,), generator=gen))
        x = torch.rand(2, 3, h, w, generator=gen, dtype=torch.float64)
        ref = F.interpolate(x, size=(h2, w2), mode="nearest-exact")
        got = resize_nearest(x if batched else x[0], (h2, w2))
        expect_close(got, ref if batched else ref[0],
                     what=f"case {case}: {tuple((x if batched else x[0]).shape)} → ({h2}, {w2})", atol=0, rtol=0)


@register("ex-ch02-image-flip-caption", hint="Reverse the list of objects; the relations reverse too, with 'above' and "
                                       "'below' swapped ('left of' stays).")
def _check_flip_caption(hflip_caption) -> None:
    from mmlearn.data import hflip, make_shapes

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=fresh_generator()))
    b = make_shapes(80, max_objects=4, seed=seed)
    for caption, expected in zip(b.captions, hflip(b).captions):
        got = hflip_caption(caption)
        if got != expected:
            raise CheckFailed(f"for {caption!r} expected {expected!r}, got {got!r}")


# ---- notebooks/02_preprocessing_image_light.ipynb ------------------------------------------------

def _srgb_encode_reference(lin: torch.Tensor) -> torch.Tensor:
    return torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


@register("ex-ch02-image2-encode", hint="V = 12.92 L for L <= 0.0031308, else 1.055 L^(1/2.4) - 0.055; "
                                       "select the branch with torch.where.")
def _check_srgb_encode(srgb_encode) -> None:
    gen = fresh_generator()
    cases = [torch.tensor([0.0, 0.0031308, 0.0031309, 0.5, 1.0], dtype=torch.float64)]
    cases += [torch.rand(*(int(v) for v in torch.randint(1, 6, (k,), generator=gen)), generator=gen,
                         dtype=torch.float64) ** 3 for k in (1, 2, 3)]
    for case, lin in enumerate(cases):
        got = call_student(srgb_encode, lin, what=f"case {case}")
        expect_close(got, _srgb_encode_reference(lin), what=f"case {case}: encode of shape {tuple(lin.shape)}",
                     atol=1e-9, rtol=1e-9)
    expect_value_error(srgb_encode, torch.tensor([0.5, 1.5]), what="an input with a value 1.5")
    expect_value_error(srgb_encode, torch.tensor([-0.1]), what="an input with a value -0.1")


@register("ex-ch02-image2-fold", hint="Divide each input channel's weights by std[c]; the bias loses "
                                     "sum over (c, u, v) of W[o, c, u, v] · mean[c] / std[c].")
def _check_fold(fold) -> None:
    gen = fresh_generator()
    for case in range(4):
        o, c, k = (int(v) for v in torch.randint(1, 5, (3,), generator=gen))
        w = torch.randn(o, c, k, k, generator=gen, dtype=torch.float64)
        b = torch.randn(o, generator=gen, dtype=torch.float64)
        mean = torch.rand(c, generator=gen, dtype=torch.float64)
        std = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1
        x = torch.rand(2, c, k + 4, k + 5, generator=gen, dtype=torch.float64)
        got = call_student(fold, w, b, mean, std, what=f"case {case}")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"case {case}: expected a pair (weight, bias), got {type(got).__name__}")
        expected = F.conv2d((x - mean[:, None, None]) / std[:, None, None], w, b)
        expect_close(F.conv2d(x, got[0], got[1]), expected, what=f"case {case}: conv with the folded weights "
                     f"(O={o}, C={c}, k={k})", atol=1e-9)


@register("ex-ch02-image2-worst-fill", hint="Evaluate linear_to_srgb(p) - p on a fine grid of p in [0, 1] "
                                           "and take the p of the largest value.")
def _check_worst_fill(answer) -> None:
    p = torch.linspace(0, 1, 100001, dtype=torch.float64)
    lin = torch.where(p <= 0.0031308, 12.92 * p, 1.055 * p.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
    expect_number(answer, p[(lin - p).argmax()].item(), what="the fill fraction p* of the largest error",
                  tol=0.01)


@register("ex-ch02-image2-alias", hint="In new pixels the frequency is g = r·f; it folds to |g - round(g)|.")
def _check_alias(answer) -> None:
    expect_number(answer, abs(3 * 0.35 - 1), what="the alias frequency (cycles per new pixel)", tol=1e-6)
