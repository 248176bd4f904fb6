"""Checks for the exercises of notebooks/10_generation_diffusion.ipynb (flow matching, guidance)."""

from __future__ import annotations

import math

import torch

from mmlearn.checks import CheckFailed, call_student, expect_close, fresh_generator, register
from mmlearn.generation.diffusion import euler_sample, gaussian_mixture_velocity

F64 = torch.float64

# the two-component mixture of the exercises (1-D): weights, means, standard deviations
MIX_WEIGHTS, MIX_MEANS, MIX_STDS = (0.25, 0.75), (-2.0, 1.0), (0.3, 0.5)
STEP_COUNTS = (1, 2, 4, 8, 16, 32)


@register("ex-ch10-gaussian-velocity", hint="Condition the Gaussian pair (ε - x_0, x_t) on x_t: the mean is "
                                            "E[ε - x_0] + Cov(ε - x_0, x_t) / Var(x_t) · (x - E[x_t]).")
def _check_gaussian_velocity(gaussian_velocity) -> None:
    gen = fresh_generator()
    for case in range(6):
        m, s = float(torch.randn(1, generator=gen)) * 2, 0.2 + float(torch.rand(1, generator=gen)) * 2
        t = float(torch.rand(1, generator=gen)) * 0.98 + 0.01
        x = torch.randn(5, generator=gen, dtype=F64) * 2
        got = call_student(gaussian_velocity, x.clone(), t, m, s, what=f"case {case}")
        expected = gaussian_mixture_velocity(x[:, None], t, torch.ones(1, dtype=F64), torch.tensor([[m]], dtype=F64),
                                             torch.tensor([s], dtype=F64))[:, 0]
        expect_close(torch.as_tensor(got, dtype=F64), expected, atol=1e-8, rtol=1e-8,
                     what=f"case {case}: the velocity at t = {t:.3f} for data N({m:.2f}, {s:.2f}²)")


def min_flow_loss(s: float = 1.0) -> float:
    """∫_0^1 Var(ε - x_0 | x_t) dt for x_0 ~ N(0, s²) in 1-D (midpoint rule, 100,000 points)."""
    t = (torch.arange(100_000, dtype=F64) + 0.5) / 100_000
    var_xt = (1 - t) ** 2 * s**2 + t**2
    return float((1 + s**2 - (t - (1 - t) * s**2) ** 2 / var_xt).mean())


@register("ex-ch10-min-loss", hint="For each t the best prediction is E[ε - x_0 | x_t]; what remains is the "
                                   "conditional variance Var(ε - x_0 | x_t). Average it over t ~ U(0, 1).")
def _check_min_loss(answer) -> None:
    if answer is Ellipsis:
        raise NotImplementedError
    value = float(answer)
    expected = min_flow_loss(1.0)
    if abs(value - expected) > 2e-3:
        if value < 1e-6:
            raise CheckFailed("the loss cannot reach 0: given x_t, the pair (x_0, ε) that produced it is uncertain")
        raise CheckFailed(f"got {value:.4f}; the smallest loss is the average over t of Var(ε - x_0 | x_t), "
                          "computed to 3 decimals")


def mixture_variances(n: int, generator: torch.Generator) -> list[float]:
    """The variance of n samples of the exact-field Euler sampler for each of STEP_COUNTS."""
    w, m, s = torch.tensor(MIX_WEIGHTS, dtype=F64), torch.tensor(MIX_MEANS, dtype=F64)[:, None], torch.tensor(MIX_STDS)
    x1 = torch.randn(n, 1, generator=generator, dtype=F64)
    return [float(euler_sample(lambda x, t: gaussian_mixture_velocity(x, t, w, m, s), x1, k).var())
            for k in STEP_COUNTS]


@register("ex-ch10-steps", hint="Run euler_sample with the exact mixture field for each step count on the same "
                                "noise and take the variance of the samples (unbiased, .var()).")
def _check_steps(variances) -> None:
    if variances is Ellipsis:
        raise NotImplementedError
    got = [float(v) for v in variances]
    if len(got) != len(STEP_COUNTS):
        raise CheckFailed(f"expected one variance per step count {STEP_COUNTS}, got {len(got)} numbers")
    n = 20_000
    expected = mixture_variances(n, fresh_generator())
    for k, g, e in zip(STEP_COUNTS, got, expected):
        tol = 5 * e * math.sqrt(2 / n) * 2 + 1e-6  # 5 standard errors of a variance (with a factor 2 for heavy tails)
        if abs(g - e) > tol:
            raise CheckFailed(f"{k} step(s): got variance {g:.3f}, expected about {e:.3f} (± {tol:.3f})")


def guided_stds(n: int, generator: torch.Generator, ws: tuple[float, ...] = (0, 1, 2, 4)) -> list[float]:
    """Standard deviation of class-1 samples of the two-class toy under guidance w (200 Euler steps)."""
    from mmlearn.generation.diffusion import cfg_velocity
    one, both = torch.ones(1), torch.tensor([0.5, 0.5])
    mu1, mu_both, s = torch.tensor([[1.0]]), torch.tensor([[-1.0], [1.0]]), torch.tensor([0.5, 0.5])
    x1 = torch.randn(n, 1, generator=generator, dtype=F64)
    out = []
    for w in ws:
        def field(x: torch.Tensor, t: torch.Tensor, w: float = w) -> torch.Tensor:
            return cfg_velocity(gaussian_mixture_velocity(x, t, one, mu1, s[:1]),
                                gaussian_mixture_velocity(x, t, both, mu_both, s), w)
        out.append(float(euler_sample(field, x1, 200).std()))
    return out


@register("ex-ch10-guidance-toy", hint="Build each field with cfg_velocity(v_c(x, t), v_null(x, t), w) and run "
                                       "euler_sample with 200 steps from the same noise for every w.")
def _check_guidance_toy(guided_std) -> None:
    if guided_std is Ellipsis:
        raise NotImplementedError
    got = [float(v) for v in guided_std]
    if len(got) != 4:
        raise CheckFailed(f"expected one standard deviation for each w in (0, 1, 2, 4), got {len(got)} numbers")
    n = 20_000
    expected = guided_stds(n, fresh_generator())
    for w, g, e in zip((0, 1, 2, 4), got, expected):
        tol = 5 * e / math.sqrt(2 * n) * 2  # 5 standard errors of a standard deviation (× 2 for non-Gaussian tails)
        if abs(g - e) > tol:
            raise CheckFailed(f"w = {w}: got standard deviation {g:.3f}, expected about {e:.3f} (± {tol:.3f})")
