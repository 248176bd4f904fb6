"""Optimisers built from scratch (chapter 5).

Every optimiser here is a ``torch.optim.Optimizer`` subclass whose trajectory equals the matching
``torch.optim`` class step by step, so they drop into any training loop (``mmlearn.train.fit``)::

    opt = mmlearn.optim.Adam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

=================  ==========================================  =====================================
ours               update                                      torch reference
=================  ==========================================  =====================================
gradient_descent   w ← w − η ∇L(w)                             (a plain function on tensors)
SGD                w ← w − η (g + λw)                          torch.optim.SGD(lr, weight_decay=λ)
Momentum           b ← βb + (1−τ)g;  w ← w − η b               torch.optim.SGD(momentum=β, ...)
Adam               m, v moments, bias-corrected                torch.optim.Adam
AdamW              Adam with decoupled weight decay            torch.optim.AdamW
=================  ==========================================  =====================================

``preconditioned_descent`` is w ← w − η P ∇L(w): P = I gives gradient descent, P = H⁻¹ Newton's method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from mmlearn._validate import require_positive, require_tensor

Params = Iterable[torch.Tensor] | Iterable[dict]


def _require_lr(lr: float) -> float:
    if isinstance(lr, torch.Tensor):
        lr = float(lr)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise ValueError(f"lr must be a positive number, got {type(lr).__name__} {lr!r}")
    return require_positive(lr, "lr")


def _require_unit_interval(value: float, name: str) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def gradient_descent(grad_fn: Callable[[torch.Tensor], torch.Tensor], w0: torch.Tensor, lr: float,
                     steps: int) -> torch.Tensor:
    """Plain gradient descent, returning the whole trajectory.

    .. math:: w_{t+1} = w_t - \\eta \\nabla L(w_t), \\qquad t = 0, \\dots, \\text{steps} - 1

    ``grad_fn(w)`` returns ∇L(w) with the shape of ``w``. Returns a tensor ``(steps + 1, *w0.shape)``
    whose row ``t`` is ``w_t`` (row 0 is ``w0``). Diverging runs are returned as they are (inf/nan).
    """
    w0 = require_tensor(w0, "w0")
    _require_lr(lr)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    trajectory = [w0.detach().clone()]
    w = trajectory[0]
    for _ in range(steps):
        g = grad_fn(w)
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"grad_fn must return a tensor of shape {tuple(w.shape)} (the shape of w), got {got}")
        w = w - lr * g
        trajectory.append(w)
    return torch.stack(trajectory)                     # (steps + 1, *w0.shape)



def preconditioned_descent(grad_fn: Callable[[torch.Tensor], torch.Tensor], w0: torch.Tensor,
                           P: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """Preconditioned gradient descent on a vector ``w`` (n,), returning the whole trajectory.

    .. math:: w_{t+1} = w_t - \\eta\\, P\\, \\nabla L(w_t)

    ``P`` is ``(n, n)`` (symmetric positive definite for a descent method): ``P = I`` is
    :func:`gradient_descent`, ``P = H^{-1}`` with ``lr = 1`` is Newton's method on a quadratic with
    Hessian ``H``, ``P = diag(H)^{-1}`` is the Jacobi (diagonal) preconditioner. Returns ``(steps + 1, n)``.
    """
    w0 = require_tensor(w0, "w0")
    P = require_tensor(P, "P")
    if w0.ndim != 1 or P.shape != (w0.shape[0], w0.shape[0]):
        raise ValueError(f"w0 must be (n,) and P (n, n), got w0 {tuple(w0.shape)} and P {tuple(P.shape)}")
    P = P.to(w0.dtype)
    return gradient_descent(lambda w: P @ grad_fn(w), w0, lr, steps)


def _closure_loss(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with L2 weight decay λ.

    .. math:: g_t = \\nabla L(w_t) + \\lambda w_t, \\qquad w_{t+1} = w_t - \\eta\\, g_t

    The same trajectory as ``torch.optim.SGD(params, lr, weight_decay=λ)``.
    """

    def __init__(self, params: Params, lr: float, weight_decay: float = 0.0):
        _require_lr(lr)
        require_positive(weight_decay, "weight_decay", allow_zero=True)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad.add(w, alpha=wd) if wd != 0 else w.grad   # ∇(L + λ/2 ‖w‖²) = ∇L + λw
                w.add_(g, alpha=-lr)
        return loss


class Momentum(torch.optim.Optimizer):
    """SGD with heavy-ball momentum (Polyak 1964), optionally Nesterov's variant (Nesterov 1983, in the
    momentum form of Sutskever et al. 2013).

    .. math::
        g_t = \\nabla L(w_t) + \\lambda w_t, \\quad b_t = \\beta\\, b_{t-1} + (1 - \\tau)\\, g_t
        \\ (b_1 = g_1), \\quad w_{t+1} = w_t - \\eta\\, b_t
        \\ \\text{(Nesterov: } w_{t+1} = w_t - \\eta\\, (g_t + \\beta b_t))

    β is ``momentum`` (the momentum coefficient), τ is ``dampening``. The same trajectory as
    ``torch.optim.SGD(params, lr, momentum=β, dampening=τ, weight_decay=λ, nesterov=...)``.
    """

    def __init__(self, params: Params, lr: float, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        _require_lr(lr)
        _require_unit_interval(momentum, "momentum")
        _require_unit_interval(dampening, "dampening")
        require_positive(weight_decay, "weight_decay", allow_zero=True)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                             f"dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, beta, tau, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad.add(w, alpha=wd) if wd != 0 else w.grad
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()           # b_1 = g_1 (no dampening at the start)
                else:
                    state["momentum_buffer"].mul_(beta).add_(g, alpha=1 - tau)
                b = state["momentum_buffer"]
                w.add_(g.add(b, alpha=beta) if group["nesterov"] else b, alpha=-lr)
        return loss


class Adam(torch.optim.Optimizer):
    """Adam (Kingma & Ba) with bias correction; L2 or decoupled (AdamW) weight decay.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\quad v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2, \\\\
        \\hat m_t = m_t / (1-\\beta_1^t), \\quad \\hat v_t = v_t / (1-\\beta_2^t), \\quad
        w_{t+1} = w_t - \\eta\\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon)

    Weight decay λ: with ``decoupled=False`` (``torch.optim.Adam``) it is added to the gradient,
    ``g_t = ∇L + λ w_t``, and so is rescaled by the adaptive denominator; with ``decoupled=True``
    (``torch.optim.AdamW``) the weights shrink directly, ``w_t ← (1 − ηλ) w_t``, before the Adam step.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):
        _require_lr(lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _require_unit_interval(betas[0], "betas[0]")
        _require_unit_interval(betas[1], "betas[1]")
        require_positive(eps, "eps", allow_zero=True)
        require_positive(weight_decay, "weight_decay", allow_zero=True)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled=decoupled))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is not None:
                    self._update(w, group)
        return loss

    def _update(self, w: torch.Tensor, group: dict) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        g = w.grad
        if wd != 0 and group["decoupled"]:
            w.mul_(1 - lr * wd)                                  # AdamW: shrink w directly
        elif wd != 0:
            g = g.add(w, alpha=wd)                               # Adam: L2 term joins the gradient
        state = self.state[w]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(w), exp_avg_sq=torch.zeros_like(w))
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(g, alpha=1 - beta1)                   # m_t
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)            # v_t
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        w.addcdiv_(m_hat, v_hat.sqrt().add_(eps), value=-lr)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter); equals ``torch.optim.AdamW``.

    .. math:: w_t \\leftarrow (1 - \\eta\\lambda)\\, w_t, \\text{ then the Adam step on } \\nabla L(w_t)

    The default ``weight_decay=1e-2`` is torch's.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=True)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_factor``.

    .. math::
        f(s) = \\begin{cases} s / s_w & s < s_w \\\\
        f_{\\min} + (1 - f_{\\min})\\, \\tfrac12 \\bigl(1 + \\cos(\\pi\\, p)\\bigr),
        \\ p = \\min\\!\\bigl(1, \\tfrac{s - s_w}{s_T - s_w}\\bigr) & s \\ge s_w \\end{cases}

    ``s_w`` is ``warmup_steps``, ``s_T`` is ``total_steps``; the learning rate at step ``s`` is
    ``f(s) · lr``. Use it with ``torch.optim.lr_scheduler.LambdaLR`` (see :func:`warmup_cosine_scheduler`).
    """
    for value, name in ((step, "step"), (warmup_steps, "warmup_steps"), (total_steps, "total_steps")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps must be > warmup_steps, got total_steps={total_steps}, "
                         f"warmup_steps={warmup_steps}")
    if not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"min_factor must be in [0, 1], got {min_factor!r}")
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                            min_factor: float = 0.0) -> LambdaLR:
    """A ``LambdaLR`` scheduler applying :func:`warmup_cosine`; call ``scheduler.step()`` after each step."""
    warmup_cosine(0, warmup_steps=warmup_steps, total_steps=total_steps, min_factor=min_factor)  # validate
    return LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps=warmup_steps, total_steps=total_steps,
                                                       min_factor=min_factor))
