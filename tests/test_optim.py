"""mmlearn.optim: every optimiser's trajectory equals torch.optim's, step by step, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from mmlearn.optim import SGD, Adam, AdamW, Momentum, gradient_descent, warmup_cosine, warmup_cosine_scheduler

STEPS = 12


def _make_params(device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (5,), (2, 2)]
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in shapes]


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    """A non-quadratic loss whose gradients change from step to step (like minibatches)."""
    a, b, _unused = params   # the third parameter never gets a gradient: optimisers must skip it
    x = torch.linspace(-1, 1, 4, dtype=a.dtype, device=a.device) * (1 + 0.1 * step)
    return torch.tanh(a @ x).pow(2).sum() + ((b - 0.5) ** 4).sum() + (a * a.sin()).sum() * 0.3


def _trajectory(make_opt, device: torch.device, steps: int = STEPS, scheduler=None) -> list[list[torch.Tensor]]:
    params = [p.clone().requires_grad_(True) for p in _make_params(device)]
    opt = make_opt(params)
    sched = scheduler(opt) if scheduler else None
    out = []
    for t in range(steps):
        opt.zero_grad()
        _loss(params, t).backward()
        opt.step()
        if sched:
            sched.step()
        out.append([p.detach().clone() for p in params])
    return out


def _assert_same(ours, ref) -> None:
    for t, (ps, rs) in enumerate(zip(ours, ref)):
        for p, r in zip(ps, rs):
            assert torch.isfinite(r).all(), f"reference diverged at step {t + 1}: pick a smaller lr"
            assert_close(p, r, rtol=1e-10, atol=1e-12, msg=lambda m, t=t: f"step {t + 1}: {m}")


def _moved(traj) -> bool:
    start = _make_params(traj[0][0].device)
    return not torch.equal(traj[-1][0], start[0])


@pytest.mark.parametrize("lr, wd", [(0.1, 0.0), (0.03, 0.1), (0.2, 1e-3)])
def test_sgd_matches_torch(device, lr, wd):
    ours = _trajectory(lambda p: SGD(p, lr=lr, weight_decay=wd), device)
    ref = _trajectory(lambda p: torch.optim.SGD(p, lr=lr, weight_decay=wd), device)
    assert _moved(ours)
    _assert_same(ours, ref)


@pytest.mark.parametrize("mu, tau, wd, nesterov", [(0.9, 0.0, 0.0, False), (0.5, 0.3, 0.05, False),
                                                   (0.99, 0.0, 0.0, True), (0.8, 0.0, 0.1, True)])
def test_momentum_matches_torch_sgd_momentum(device, mu, tau, wd, nesterov):
    kw = dict(lr=0.05, momentum=mu, dampening=tau, weight_decay=wd, nesterov=nesterov)
    ours = _trajectory(lambda p: Momentum(p, **kw), device)
    ref = _trajectory(lambda p: torch.optim.SGD(p, **kw), device)
    _assert_same(ours, ref)


@pytest.mark.parametrize("lr, betas, eps, wd", [(1e-3, (0.9, 0.999), 1e-8, 0.0), (0.05, (0.8, 0.99), 1e-6, 0.0),
                                                (0.01, (0.9, 0.999), 1e-8, 0.1), (0.1, (0.0, 0.9), 1e-3, 0.5)])
def test_adam_matches_torch(device, lr, betas, eps, wd):
    ours = _trajectory(lambda p: Adam(p, lr=lr, betas=betas, eps=eps, weight_decay=wd), device)
    ref = _trajectory(lambda p: torch.optim.Adam(p, lr=lr, betas=betas, eps=eps, weight_decay=wd), device)
    _assert_same(ours, ref)


@pytest.mark.parametrize("lr, wd", [(1e-3, 1e-2), (0.05, 0.3), (0.1, 0.0)])
def test_adamw_matches_torch(device, lr, wd):
    ours = _trajectory(lambda p: AdamW(p, lr=lr, weight_decay=wd), device)
    ours_flag = _trajectory(lambda p: Adam(p, lr=lr, weight_decay=wd, decoupled=True), device)
    ref = _trajectory(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd), device)
    _assert_same(ours, ref)
    _assert_same(ours_flag, ref)


def test_adam_l2_differs_from_adamw(device):
    l2 = _trajectory(lambda p: Adam(p, lr=0.05, weight_decay=0.3), device)
    decoupled = _trajectory(lambda p: AdamW(p, lr=0.05, weight_decay=0.3), device)
    assert (l2[-1][0] - decoupled[-1][0]).abs().max() > 1e-3


def test_param_groups_and_state_dict(device):
    def groups(p, cls, **kw):
        return cls([{"params": p[:1], "lr": 0.01}, {"params": p[1:], "lr": 0.05}], **kw)
    ours = _trajectory(lambda p: groups(p, Momentum, lr=0.1, momentum=0.9), device)
    ref = _trajectory(lambda p: groups(p, torch.optim.SGD, lr=0.1, momentum=0.9), device)
    _assert_same(ours, ref)
    params = [p.clone().requires_grad_(True) for p in _make_params(device)]
    opt = Adam(params, lr=0.01)
    _loss(params, 0).backward()
    opt.step()
    again = Adam(params, lr=0.01)
    again.load_state_dict(opt.state_dict())
    assert again.state[params[0]]["step"] == 1


def test_closure_returns_loss(device):
    params = [p.clone().requires_grad_(True) for p in _make_params(device)]
    opt = SGD(params, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = _loss(params, 0)
        loss.backward()
        return loss
    assert_close(opt.step(closure), _loss([p.detach() for p in _make_params(device)], 0))


@pytest.mark.parametrize("make", [lambda p: Adam(p, lr=0.02, weight_decay=0.01),
                                  lambda p: Momentum(p, lr=0.05, momentum=0.9)])
def test_schedule_drives_our_optimisers_like_torch(device, make):
    sched = lambda opt: warmup_cosine_scheduler(opt, warmup_steps=3, total_steps=10, min_factor=0.1)
    ours = _trajectory(make, device, scheduler=sched)
    ref_make = {Adam: lambda p: torch.optim.Adam(p, lr=0.02, weight_decay=0.01),
                Momentum: lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)}
    kind = type(make([torch.zeros(1, requires_grad=True)]))
    ref = _trajectory(ref_make[kind], device, scheduler=sched)
    _assert_same(ours, ref)


def test_gradient_descent_on_a_quadratic_is_the_closed_form(device):
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64, device=device)
    w0 = torch.tensor([1.0, -2.0], dtype=torch.float64, device=device)
    lr, steps = 0.2, 15
    traj = gradient_descent(lambda w: A @ w, w0, lr, steps)      # L(w) = ½ wᵀAw
    assert traj.shape == (steps + 1, 2)
    M = torch.eye(2, dtype=torch.float64, device=device) - lr * A
    expected = torch.stack([torch.linalg.matrix_power(M, t) @ w0 for t in range(steps + 1)])
    assert_close(traj, expected)


def test_gradient_descent_diverges_above_two_over_L(device):
    A = torch.diag(torch.tensor([1.0, 10.0], dtype=torch.float64, device=device))
    w0 = torch.ones(2, dtype=torch.float64, device=device)
    below = gradient_descent(lambda w: A @ w, w0, 0.19, 200)
    above = gradient_descent(lambda w: A @ w, w0, 0.21, 200)
    assert below[-1].norm() < 1e-6
    assert above[-1].norm() > 1e6


def test_warmup_cosine_values():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_factor=0.1)
    assert f(0) == 0.0 and f(5) == 0.5 and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_cosine_without_warmup_equals_cosine_annealing():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=0.05)
    for s in range(21):
        assert opt.param_groups[0]["lr"] == pytest.approx(warmup_cosine(s, warmup_steps=0, total_steps=20,
                                                                        min_factor=0.05), abs=1e-9)
        opt.step()
        ref.step()
    assert math.isclose(warmup_cosine(20, warmup_steps=0, total_steps=20), 0.0, abs_tol=1e-12)


@pytest.mark.parametrize("make, match", [
    (lambda p: SGD(p, lr=0.0), "lr must be > 0"),
    (lambda p: SGD(p, lr=-1.0), "lr must be > 0"),
    (lambda p: Momentum(p, lr=0.1, momentum=1.5), r"momentum must be in \[0, 1\)"),
    (lambda p: Momentum(p, lr=0.1, momentum=0.0, nesterov=True), "nesterov needs momentum > 0"),
    (lambda p: Adam(p, lr=-1e-3), "lr must be > 0"),
    (lambda p: Adam(p, betas=(0.9,)), "betas must be a pair"),
    (lambda p: Adam(p, betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\)"),
    (lambda p: AdamW(p, weight_decay=-0.1), "weight_decay must be ≥ 0"),
    (lambda p: SGD(p, lr="fast"), "lr must be a positive number"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(2, requires_grad=True)])


def test_bad_input_gradient_descent_and_schedule():
    w0 = torch.zeros(3)
    with pytest.raises(ValueError, match="lr must be > 0"):
        gradient_descent(lambda w: w, w0, 0.0, 5)
    with pytest.raises(ValueError, match=r"grad_fn must return a tensor of shape \(3,\)"):
        gradient_descent(lambda w: w[:2], w0, 0.1, 5)
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        gradient_descent(lambda w: w, w0, 0.1, -1)
    with pytest.raises(ValueError, match="w0 must be a torch.Tensor"):
        gradient_descent(lambda w: w, [0.0, 1.0], 0.1, 3)
    with pytest.raises(ValueError, match="total_steps must be > warmup_steps"):
        warmup_cosine(0, warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match=r"min_factor must be in \[0, 1\]"):
        warmup_cosine(0, warmup_steps=1, total_steps=10, min_factor=2.0)


# ---- preconditioned descent, Newton, and the forward/reverse-mode Jacobians of mmlearn.autograd -------------

@pytest.mark.parametrize("n, seed", [(2, 0), (5, 1), (9, 2)])
def test_preconditioned_descent_identity_newton_and_closed_form(device, n, seed):
    from mmlearn.optim import preconditioned_descent

    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    A = (Q @ torch.diag(torch.rand(n, generator=g, dtype=torch.float64) * 9 + 1) @ Q.T).to(device)  # SPD
    b = torch.randn(n, generator=g, dtype=torch.float64).to(device)
    w0 = torch.randn(n, generator=g, dtype=torch.float64).to(device)

    def grad(w):
        return A @ w - b                                     # L = w^T A w / 2 - b^T w

    eye = torch.eye(n, dtype=torch.float64, device=device)
    assert_close(preconditioned_descent(grad, w0, eye, 0.05, 7), gradient_descent(grad, w0, 0.05, 7))
    newton = preconditioned_descent(grad, w0, torch.linalg.inv(A), 1.0, 1)
    assert_close(newton[1], torch.linalg.solve(A, b))        # Newton: the minimum in one step
    P = torch.diag(1 / torch.diagonal(A))
    traj = preconditioned_descent(grad, w0, P, 0.3, 5)
    w = w0.clone()
    for t in range(5):                                       # w_{t+1} = w_t - lr P (A w_t - b)
        w = w - 0.3 * P @ (A @ w - b)
        assert_close(traj[t + 1], w)


def test_preconditioned_descent_bad_input():
    from mmlearn.optim import preconditioned_descent

    with pytest.raises(ValueError, match=r"P \(n, n\)"):
        preconditioned_descent(lambda w: w, torch.zeros(3), torch.eye(2), 0.1, 2)
    with pytest.raises(ValueError, match=r"w0 must be \(n,\)"):
        preconditioned_descent(lambda w: w, torch.zeros(2, 2), torch.eye(2), 0.1, 2)
    with pytest.raises(ValueError, match="lr"):
        preconditioned_descent(lambda w: w, torch.zeros(2), torch.eye(2), -1.0, 2)


@pytest.mark.parametrize("n, m, seed", [(1, 4, 0), (6, 3, 1), (5, 5, 2), (8, 1, 3)])
def test_jacobian_forward_and_reverse_equal_torch(device, n, m, seed):
    from mmlearn.autograd import jacobian_forward, jacobian_reverse

    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(7, n, generator=g, dtype=torch.float64).to(device)
    W2 = torch.randn(m, 7, generator=g, dtype=torch.float64).to(device)

    def f(x):
        return W2 @ torch.tanh(W1 @ x) + x.square().sum()

    x = torch.randn(n, generator=g, dtype=torch.float64).to(device)
    ref = torch.autograd.functional.jacobian(f, x)           # (m, n)
    assert_close(jacobian_forward(f, x), ref)
    assert_close(jacobian_reverse(f, x), ref)


def test_jacobian_bad_input():
    from mmlearn.autograd import jacobian_forward, jacobian_reverse

    for jac in (jacobian_forward, jacobian_reverse):
        with pytest.raises(ValueError, match=r"x must be a 1-D floating-point tensor \(n,\)"):
            jac(torch.sin, torch.zeros(2, 2))
        with pytest.raises(ValueError, match=r"x must be a 1-D floating-point"):
            jac(torch.sin, torch.zeros(3, dtype=torch.long))
        with pytest.raises(ValueError, match=r"f must map \(n,\) to a 1-D tensor"):
            jac(lambda x: x.sum(), torch.zeros(3))
