"""Checks for the exercises of chapter 5 (notebooks/05_optimization_*.ipynb)."""

from __future__ import annotations

import math

import torch

from mmlearn.checks import CheckFailed, expect_close, expect_equal, expect_number, fresh_generator, register


def _random_spd(gen: torch.Generator, d: int, kappa: float) -> torch.Tensor:
    """A random symmetric positive-definite matrix with eigenvalues spread over [1, kappa]."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.cat([torch.tensor([1.0, kappa], dtype=torch.float64),
                     1 + (kappa - 1) * torch.rand(d - 2, generator=gen, dtype=torch.float64)])
    scale = float(torch.empty(1).uniform_(0.1, 10, generator=gen))
    return scale * q @ torch.diag(lam) @ q.T


# ---- 05_optimization_gradient_descent --------------------------------------------------------------

@register("ex-ch05-optimal-lr", hint="Where do |1 − ημ| and |1 − ηL| cross? Only the extreme eigenvalues matter.")
def _check_optimal_lr(best_lr) -> None:
    gen = fresh_generator()
    for case in range(4):
        d = int(torch.randint(2, 6, (1,), generator=gen))
        A = _random_spd(gen, d, kappa=float(torch.empty(1).uniform_(2, 50, generator=gen)))
        lam = torch.linalg.eigvalsh(A)
        mu, L = lam.min().item(), lam.max().item()
        got = float(best_lr(A))
        if math.isclose(got, 1 / L, rel_tol=1e-6):
            raise CheckFailed(f"case {case}: you returned 1/L — safe, but a larger step contracts the slow "
                              "direction faster without losing the fast one")
        if math.isclose(got, 2 / L, rel_tol=1e-6):
            raise CheckFailed(f"case {case}: you returned 2/L — that is the edge where the steep direction "
                              "stops contracting")
        expect_close(got, 2 / (mu + L), what=f"case {case}: best learning rate for a {d}×{d} matrix "
                     f"with eigenvalues in [{mu:.3g}, {L:.3g}]", rtol=1e-6, atol=0)


@register("ex-ch05-gd-steps",
          hint="The steep coordinate vanishes after one step; the flat one shrinks by 0.99 a step.")
def _check_gd_steps(answer) -> None:
    expect_number(answer, math.ceil(math.log(1e-6) / math.log(0.99)), what="first step with ‖w_t‖ < 1e-6", tol=0.5)


# ---- 05_optimization_optimizers --------------------------------------------------------------------

def _rmsprop_problem(gen: torch.Generator):
    d = int(torch.randint(1, 5, (1,), generator=gen))
    A = _random_spd(gen, d, kappa=float(torch.empty(1).uniform_(1, 20, generator=gen)))
    c = torch.randn(d, generator=gen, dtype=torch.float64)
    w0 = torch.randn(d, generator=gen, dtype=torch.float64)
    return (lambda w: A @ w - c + 0.1 * w**3), w0                  # gradient of ½wᵀAw − cᵀw + w⁴/40


@register("ex-ch05-rmsprop", hint="v starts at zero and there is no bias correction; eps goes outside the square root.")
def _check_rmsprop(rmsprop) -> None:
    gen = fresh_generator()
    for case in range(4):
        grad_fn, w0 = _rmsprop_problem(gen)
        lr = float(torch.empty(1).uniform_(1e-3, 0.1, generator=gen))
        alpha = float(torch.empty(1).uniform_(0.8, 0.999, generator=gen))
        steps = int(torch.randint(3, 12, (1,), generator=gen))
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.RMSprop([w], lr=lr, alpha=alpha, eps=1e-8)
        expected = [w0.clone()]
        for _ in range(steps):
            w.grad = grad_fn(w.detach())
            opt.step()
            expected.append(w.detach().clone())
        got = rmsprop(grad_fn, w0.clone(), lr, alpha=alpha, eps=1e-8, steps=steps)
        expect_close(got, torch.stack(expected), what=f"case {case}: trajectory of {steps} steps, lr={lr:.3g}, "
                     f"alpha={alpha:.3g}, w0 of shape {tuple(w0.shape)}", atol=1e-9, rtol=1e-7)


@register("ex-ch05-bias-correction",
          hint="Unroll m_t and v_t for a constant gradient: each is (1 − β^t) × its target.")
def _check_bias_correction(answer) -> None:
    expected = (1 - 0.8**3) / math.sqrt(1 - 0.99**3)
    try:
        g = float(answer)
    except (TypeError, ValueError):
        raise CheckFailed(f"expected a number, got {type(answer).__name__}") from None
    if math.isclose(g, 1 / expected, rel_tol=1e-3):
        raise CheckFailed(f"{g:.4g} is the inverse of the right ratio: the uncorrected step is the LARGER one")
    expect_number(g, expected, what="uncorrected step / corrected step at t = 3", tol=2e-3)
