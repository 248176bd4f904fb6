"""Checks for the exercises of notebooks/02_preprocessing_image.ipynb."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmlearn.checks import CheckFailed, expect_close, expect_number, expect_value_error, fresh_generator, register


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
