"""Checks for the exercises of chapter 5 (notebooks/05_optimization_*.ipynb)."""

from __future__ import annotations

import math

import torch

from mmlearn.checks import CheckFailed, call_student, expect_close, expect_number, fresh_generator, register


def _random_spd(gen: torch.Generator, d: int, kappa: float) -> torch.Tensor:
    """A random symmetric positive-definite matrix with eigenvalues spread over [1, kappa]."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.cat([torch.tensor([1.0, kappa], dtype=torch.float64),
                     1 + (kappa - 1) * torch.rand(max(d - 2, 0), generator=gen, dtype=torch.float64)])[:d]
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


# ---- 05_optimization_losses ------------------------------------------------------------------------

@register("ex-ch05-infonce-grad",
          hint="Row i is a cross-entropy with target i: its logit gradient is (softmax − onehot)/N; then chain "
               "through s_ij = q_i·k_j/τ.")
def _check_infonce_grad(info_nce_grad) -> None:
    from mmlearn.losses import info_nce

    gen = fresh_generator()
    for case in range(4):
        n, extra, d = (int(v) for v in torch.randint(1, 7, (3,), generator=gen))
        tau = float(torch.empty(1).uniform_(0.05, 2.0, generator=gen))
        q = torch.randn(n, d, generator=gen, dtype=torch.float64)
        k = torch.randn(n + extra - 1, d, generator=gen, dtype=torch.float64)
        qr = q.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(info_nce(qr, k, tau, normalize=False), qr)
        with torch.no_grad():
            got = info_nce_grad(q.clone(), k.clone(), tau)
        expect_close(got, expected, what=f"case {case}: {n} queries, {len(k)} keys, d={d}, tau={tau:.3g}",
                     atol=1e-9, rtol=1e-7)


@register("ex-ch05-kl-gauss", hint="Take the expectation of log p₁ − log p₂ under p₁; E(x − μ₂)² = σ₁² + (μ₁ − μ₂)².")
def _check_kl_gauss(kl_gauss) -> None:
    from torch.distributions import Normal, kl_divergence

    gen = fresh_generator()
    for case in range(3):
        shape = tuple(int(v) for v in torch.randint(1, 5, (case % 2 + 1,), generator=gen))
        mu1, mu2 = (3 * torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        s1, s2 = (torch.empty(shape, dtype=torch.float64).uniform_(0.2, 3, generator=gen) for _ in range(2))
        expected = kl_divergence(Normal(mu1, s1), Normal(mu2, s2))
        got = kl_gauss(mu1, s1, mu2, s2)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                torch.allclose(got.to(expected.dtype), kl_divergence(Normal(mu2, s2), Normal(mu1, s1))):
            raise CheckFailed(f"case {case}: you computed KL(p₂ ‖ p₁); the exercise asks for KL(p₁ ‖ p₂)")
        expect_close(got, expected, what=f"case {case}: KL between Gaussians of shape {shape}", atol=1e-9, rtol=1e-7)


@register("ex-ch05-clip-floor",
          hint="Write down S = e^s · (Î Tᵀ) for orthonormal, aligned embeddings; every row is alike.")
def _check_clip_floor(answer) -> None:
    expected = math.log(1 + 7 * math.exp(-10))
    expect_number(answer, expected, what="CLIP loss of 8 perfectly aligned orthonormal pairs at multiplier 10",
                  tol=2e-6)


# ---- 05_optimization_backprop ----------------------------------------------------------------------

@register("ex-ch05-value-sigmoid",
          hint="The local derivative needs only the output's data, σ' = σ(1 − σ); accumulate (+=) into v.grad.")
def _check_value_sigmoid(sigmoid) -> None:
    from mmlearn.autograd import Value

    gen = fresh_generator()
    for case in range(4):
        x, w = (float(v) for v in torch.empty(2).uniform_(-4, 4, generator=gen))
        v = Value(x)
        out = sigmoid(v)
        if not isinstance(out, Value):
            raise CheckFailed(f"case {case}: sigmoid must return a Value, got {type(out).__name__}")
        if tuple(out._prev) != (v,):
            raise CheckFailed(f"case {case}: sigmoid(v) should be ONE node whose only input is v; yours has inputs "
                              f"{[type(p).__name__ for p in out._prev]} (did you compose several operations?)")
        expect_close(out.data, 1 / (1 + math.exp(-x)), what=f"case {case}: sigmoid({x:.3f}).data", atol=1e-12)
        vw = Value(w)
        u = v * vw
        y = sigmoid(u) * u * 3.0                       # inside a bigger graph, its input used twice
        y.backward()
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        ut = xt * wt
        (torch.sigmoid(ut) * ut * 3.0).backward()
        expect_close(v.grad, xt.grad.item(), what=f"case {case}: gradient of 3·sigmoid(u)·u, u = x·w, w.r.t. x at "
                     f"x={x:.3f}, w={w:.3f} (u is used twice: gradients must accumulate)", atol=1e-10)
        expect_close(vw.grad, wt.grad.item(), what=f"case {case}: gradient w.r.t. w", atol=1e-10)


@register("ex-ch05-best-eps", hint="Set dE/dε = 0: (M/3)ε = δ/ε². Take δ = 2⁻⁵² ≈ 2.2e-16.")
def _check_best_eps(answer) -> None:
    delta = 2.0**-52
    expected = (3 * delta) ** (1 / 3)
    try:
        g = float(answer)
    except (TypeError, ValueError):
        raise CheckFailed(f"expected a number, got {type(answer).__name__}") from None
    if math.isclose(g, delta ** (1 / 3), rel_tol=0.02):
        raise CheckFailed(f"{g:.3g} is δ^(1/3), the right order of magnitude — but minimise E(ε) exactly: "
                          "the constant M/6 changes the factor in front")
    expect_number(g / expected, 1.0, what=f"your ε* = {g:.3g} relative to the minimiser of E", tol=0.02)


@register("ex-ch05-linear-backward",
          hint="Match shapes: dW has W's shape (out, in) = dyᵀ x; db sums dy over the batch; dx = dy W.")
def _check_linear_backward(linear_backward) -> None:
    gen = fresh_generator()
    for case in range(4):
        n, n_in, n_out = (int(v) for v in torch.randint(1, 9, (3,), generator=gen))
        x = torch.randn(n, n_in, generator=gen, dtype=torch.float64, requires_grad=True)
        W = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn(n_out, generator=gen, dtype=torch.float64, requires_grad=True)
        dy = torch.randn(n, n_out, generator=gen, dtype=torch.float64)
        (x @ W.T + b).backward(dy)
        got = linear_backward(x.detach(), W.detach(), b.detach(), dy)
        if not isinstance(got, tuple) or len(got) != 3:
            raise CheckFailed(f"case {case}: expected a tuple (dx, dW, db), got {type(got).__name__}")
        for name, ours, leaf in zip(("dx", "dW", "db"), got, (x, W, b)):
            expect_close(ours, leaf.grad, what=f"case {case}: {name} for x {tuple(x.shape)}, W {tuple(W.shape)}",
                         atol=1e-10, rtol=1e-8)


def checkpoint_peaks(segment_counts: tuple[int, ...] = (2, 4, 8, 16, 32)) -> dict[int, int]:
    """Peak bytes of one training step of a 32 x (Linear(128, 128), Tanh) network, batch 256, float32, for
    ``checkpoint_sequential`` with each number of segments (parameter gradients already allocated)."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint_sequential

    from mmlearn.attention import measure_peak_memory

    model = nn.Sequential(*[m for _ in range(32) for m in (nn.Linear(128, 128), nn.Tanh())])
    x = torch.randn(256, 128, requires_grad=True)

    def step(s: int) -> None:
        checkpoint_sequential(model, s, x, use_reentrant=False).square().mean().backward()
    step(2)  # allocate the parameter gradients once
    return {s: measure_peak_memory(step, s, device="cpu")[1] for s in segment_counts}


@register("ex-ch05-checkpoint-segments",
          hint="Build the network of the exercise, run one step first, then measure each step with "
               "measure_peak_memory(step, s) for s in 2, 4, 8, 16, 32.")
def _check_checkpoint_segments(peak_by_segments) -> None:
    if not isinstance(peak_by_segments, dict) or sorted(peak_by_segments) != [2, 4, 8, 16, 32]:
        raise CheckFailed(f"expected a dict with the keys 2, 4, 8, 16, 32 (segments), got {peak_by_segments!r}")
    want = checkpoint_peaks((2, 8, 32))
    for s, w in want.items():
        expect_number(peak_by_segments[s], w, what=f"peak bytes with {s} segments", tol=0.1 * w)


@register("ex-ch05-local-curvature", hint="p = sigmoid(X @ w); scale the rows of X by p (1 - p), multiply by X^T, "
                                          "divide by N.")
def _check_logistic_hessian(logistic_hessian) -> None:
    gen = fresh_generator()
    for case in range(4):
        n, d = int(torch.randint(3, 30, (1,), generator=gen)), int(torch.randint(1, 6, (1,), generator=gen))
        X = torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = (torch.rand(n, generator=gen) < 0.5).double()
        w = torch.randn(d, generator=gen, dtype=torch.float64)
        loss = lambda v, X=X, y=y: (torch.nn.functional.softplus(X @ v) - y * (X @ v)).mean()
        expected = torch.autograd.functional.hessian(loss, w)
        expect_close(logistic_hessian(X, w), expected, what=f"case {case}: Hessian for X {tuple(X.shape)}",
                     atol=1e-10)


@register("ex-ch05-adam-rotation", hint="R = [[cos t, -sin t], [sin t, cos t]] with t in radians; return R @ A @ R.T.")
def _check_rotated(rotated) -> None:
    import math

    gen = fresh_generator()
    for degrees in (0.0, 30.0, 45.0, 90.0, -20.0):
        B = torch.randn(2, 2, generator=gen, dtype=torch.float64)
        A = B @ B.T
        t = math.radians(degrees)
        R = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
        got = rotated(A, degrees)
        if isinstance(got, torch.Tensor) and torch.allclose(got.cpu(), R.T @ A @ R) and degrees not in (0.0, 90.0):
            raise CheckFailed(f"{degrees}°: you returned R^T A R, the rotation by {-degrees}°")
        expect_close(got.cpu() if isinstance(got, torch.Tensor) else got, R @ A @ R.T,
                     what=f"rotation by {degrees}°", atol=1e-12)


# ---- 05_optimization_preconditioning --------------------------------------------------------------

@register("ex-ch05-jacobi-rotated",
          hint="h11 = μc² + Ls², h22 = μs² + Lc², h12 = (μ − L)cs; then r = h12/√(h11 h22) and "
               "κ = (1 + |r|)/(1 − |r|).")
def _check_jacobi_rotated(answer) -> None:
    t = math.radians(30)
    H = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    H = H @ torch.diag(torch.tensor([1 / 50, 1.0], dtype=torch.float64)) @ H.T
    d = torch.diagonal(H).rsqrt()
    lam = torch.linalg.eigvalsh(d[:, None] * H * d[None, :])
    expect_number(answer, (lam.max() / lam.min()).item(), what="κ of D^(-1/2) H D^(-1/2) at θ = 30°", tol=1e-3)


@register("ex-ch05-newton", hint="Each step: w ← w − solve(hess_fn(w), grad_fn(w)); keep every iterate, w0 first.")
def _check_newton(newton) -> None:
    gen = fresh_generator()
    for case in range(3):
        n = int(torch.randint(2, 6, (1,), generator=gen))
        A = _random_spd(gen, n, kappa=100.0)
        b = torch.randn(n, generator=gen, dtype=torch.float64)
        w0 = torch.randn(n, generator=gen, dtype=torch.float64)
        traj = call_student(newton, lambda w, A=A, b=b: A @ w - b, lambda w, A=A: A, w0, 2,
                            what=f"case {case}: a quadratic")
        expect_close(traj, torch.stack([w0, torch.linalg.solve(A, b), torch.linalg.solve(A, b)]),
                     what=f"case {case}: trajectory (3, {n}) on a quadratic (one step reaches the minimum)", atol=1e-8)
    c = torch.randn(3, generator=gen, dtype=torch.float64)

    def grad(w):                       # f(w) = Σ log cosh(w − c) + ‖w‖² / 2
        return torch.tanh(w - c) + w

    def hess(w):
        return torch.diag(1 - torch.tanh(w - c) ** 2 + 1)

    w, expected = torch.zeros(3, dtype=torch.float64), [torch.zeros(3, dtype=torch.float64)]
    for _ in range(4):
        w = w - torch.linalg.solve(hess(w), grad(w))
        expected.append(w)
    got = call_student(newton, grad, hess, torch.zeros(3, dtype=torch.float64), 4, what="a non-quadratic function")
    expect_close(got, torch.stack(expected), what="trajectory (5, 3) on Σ log cosh(w − c) + ‖w‖²/2", atol=1e-8)


@register("ex-ch05-adam-eps", hint="v̂ = exp_avg_sq / (1 − 0.999^step) from opt.state[w]; P = diag(1/(√v̂ + eps)); "
                                    "κ is the ratio of the extreme eigenvalues of P^½ H P^½.")
def _check_adam_eps(adam_kappa) -> None:
    from mmlearn.optim import Adam

    gen = fresh_generator()
    for case, eps in enumerate((1e-8, 1e-2, 1.0)):
        H = _random_spd(gen, 2, kappa=30.0) / 10
        w0 = torch.randn(2, generator=gen, dtype=torch.float64)
        w = w0.clone().requires_grad_(True)
        opt = Adam([w], lr=0.05, eps=eps)
        for _ in range(50):
            opt.zero_grad()
            (0.5 * w @ H @ w).backward()
            opt.step()
        st = opt.state[w]
        d = 1 / ((st["exp_avg_sq"] / (1 - 0.999 ** st["step"])).sqrt() + eps)
        lam = torch.linalg.eigvalsh(d.sqrt()[:, None] * H * d.sqrt()[None, :])
        kappa = (lam.max() / lam.min()).item()
        got = call_student(adam_kappa, H, w0, eps, 0.05, 50, what=f"case {case}")
        expect_number(got, kappa, what=f"case {case}: κ after 50 Adam steps, eps = {eps:g}", tol=1e-4 * kappa)


@register("ex-ch05-infonce-critic", hint="scores = x @ W @ y.T is (N, N); the bound is log N minus the cross-entropy "
                                          "of those scores with targets arange(N).")
def _check_infonce_critic(bilinear_bound) -> None:
    gen = fresh_generator()
    for case in range(3):
        n, d = int(torch.randint(2, 40, (1,), generator=gen)), int(torch.randint(1, 6, (1,), generator=gen))
        x, y = (torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(2))
        W = torch.randn(d, d, generator=gen, dtype=torch.float64)
        expected = math.log(n) - torch.nn.functional.cross_entropy(x @ W @ y.T, torch.arange(n))
        got = call_student(bilinear_bound, x, y, W, what=f"case {case}: N = {n}, d = {d}")
        expect_close(got, expected, what=f"case {case}: the bound for N = {n}, d = {d} (a scalar, nats)", atol=1e-8)
