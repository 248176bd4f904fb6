"""Reverse-mode automatic differentiation on scalars, and gradient checking (chapter 5).

``Value`` is a scalar that remembers how it was computed (in the style of Karpathy's micrograd).
Each operation creates a new ``Value`` together with a ``_backward`` closure that knows the local
derivative of that one operation; ``backward()`` visits the graph in reverse topological order and
applies the chain rule, accumulating ``∂out/∂node`` into ``node.grad``.

Unlike micrograd, the closure receives its output node as an argument instead of capturing it: a node
would otherwise reference itself (node → closure → node), every graph would be a reference cycle that
only Python's cyclic garbage collector can free, and with torch loaded (≈ 10⁵ live objects) those
collections make building a graph tens of times slower::

    a, b = Value(2.0), Value(-3.0)
    c = (a * b + a.exp()).tanh()
    c.backward()
    a.grad, b.grad          # ∂c/∂a, ∂c/∂b

``numerical_gradient`` and ``gradcheck`` compare any gradient with central finite differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch

from mmlearn._validate import require_positive, require_tensor


def _no_inputs(out: Value) -> None:
    """The backward function of a leaf: nothing to pass on."""


def _as_value(x: Value | float) -> Value:
    return x if type(x) is Value or isinstance(x, Value) else Value(x)


class Value:
    """A scalar node of a computation graph: ``data`` (the number) and ``grad`` (∂output/∂this)."""

    __slots__ = ("data", "grad", "_backward", "_prev", "_op", "label")

    def __init__(self, data: float, _children: tuple[Value, ...] = (), _op: str = "", label: str = ""):
        if type(data) is not float and (isinstance(data, bool) or not isinstance(data, Real)):   # fast path first
            raise ValueError(f"Value holds a real number (int or float), got {type(data).__name__} {data!r}")
        self.data = float(data)
        self.grad = 0.0
        self._backward: Callable[[Value], None] = _no_inputs
        self._prev = tuple(_children)
        self._op = _op
        self.label = label

    def __repr__(self) -> str:
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data:.6g}, grad={self.grad:.6g})"

    # ---- operations: each returns a new node and sets its backward closure ----------------------

    def __add__(self, other: Value | float) -> Value:
        other = _as_value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward(out: Value) -> None:                       # ∂(a+b)/∂a = ∂(a+b)/∂b = 1
            self.grad += out.grad
            other.grad += out.grad
        out._backward = _backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = _as_value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward(out: Value) -> None:                       # ∂(ab)/∂a = b, ∂(ab)/∂b = a
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad
        out._backward = _backward
        return out

    def __pow__(self, k: float) -> Value:
        if isinstance(k, bool) or not isinstance(k, Real):
            raise ValueError(f"Value ** k needs a constant number k (int or float), got {type(k).__name__}")
        if self.data == 0 and k < 1 and k != 0:
            raise ValueError(f"Value ** {k} has no derivative at 0 (got data = 0)")
        if self.data < 0 and float(k) != int(k):
            raise ValueError(f"Value ** {k} of a negative number is not real (got data = {self.data})")
        out = Value(self.data**k, (self,), f"**{k:g}")

        def _backward(out: Value) -> None:                       # ∂(a^k)/∂a = k a^(k-1)
            if k != 0:
                self.grad += k * self.data ** (k - 1) * out.grad
        out._backward = _backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward(out: Value) -> None:                       # ∂e^a/∂a = e^a
            self.grad += out.data * out.grad
        out._backward = _backward
        return out

    def log(self) -> Value:
        if self.data <= 0:
            raise ValueError(f"log needs a positive argument, got {self.data}")
        out = Value(math.log(self.data), (self,), "log")

        def _backward(out: Value) -> None:                       # ∂log a/∂a = 1/a
            self.grad += out.grad / self.data
        out._backward = _backward
        return out

    def tanh(self) -> Value:
        out = Value(math.tanh(self.data), (self,), "tanh")

        def _backward(out: Value) -> None:                       # ∂tanh a/∂a = 1 − tanh² a
            self.grad += (1 - out.data**2) * out.grad
        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def _backward(out: Value) -> None:                       # ∂relu a/∂a = 1 if a > 0 else 0
            self.grad += (self.data > 0) * out.grad
        out._backward = _backward
        return out

    # ---- the rest are compositions of the above --------------------------------------------------

    def __neg__(self) -> Value:
        return self * -1

    def __sub__(self, other: Value | float) -> Value:
        return self + (-_as_value(other))

    def __truediv__(self, other: Value | float) -> Value:
        other = _as_value(other)
        if other.data == 0:
            raise ZeroDivisionError("Value division by zero")
        return self * other**-1

    def __radd__(self, other: float) -> Value:        # 2 + a
        return self + other

    def __rmul__(self, other: float) -> Value:        # 2 * a
        return self * other

    def __rsub__(self, other: float) -> Value:        # 2 - a
        return _as_value(other) - self

    def __rtruediv__(self, other: float) -> Value:    # 2 / a
        return _as_value(other) / self

    # ---- the backward pass ----------------------------------------------------------------------

    def topological_order(self) -> list[Value]:
        """Every node this one depends on, each after all of its inputs (iterative depth-first search)."""
        order: list[Value] = []
        visited: set[Value] = set()                    # Value has no __eq__: hashed by identity
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
            elif node not in visited:
                visited.add(node)
                stack.append((node, True))
                stack.extend((child, False) for child in node._prev if child not in visited)
        return order

    def backward(self) -> None:
        """Set ``node.grad = ∂self/∂node`` for every node of the graph (gradients accumulate, so zero
        them before a second call)."""
        order = self.topological_order()
        self.grad = 1.0                                # ∂self/∂self
        for node in reversed(order):                   # outputs before inputs
            node._backward(node)


def numerical_gradient(f: Callable[[torch.Tensor], torch.Tensor | float], x: torch.Tensor,
                       eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences of a scalar function ``f`` at ``x``.

    .. math::
        \\frac{\\partial f}{\\partial x_i} \\approx \\frac{f(x + \\epsilon e_i) - f(x - \\epsilon e_i)}{2\\epsilon}

    The error is ``O(ε²)`` (truncation) plus ``O(δ/ε)`` (round-off, δ the machine epsilon): in float64
    ``ε ≈ 1e-6`` is near the best. Returns a tensor with the shape and dtype of ``x``.
    """
    x = require_tensor(x, "x")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating-point dtype, got {x.dtype}")
    require_positive(eps, "eps")
    flat_x = x.detach().clone().reshape(-1)          # a contiguous copy we perturb in place
    flat_g = torch.zeros_like(flat_x)
    for i in range(flat_x.numel()):
        orig = flat_x[i].item()
        flat_x[i] = orig + eps
        f_plus = float(f(flat_x.view_as(x)))
        flat_x[i] = orig - eps
        f_minus = float(f(flat_x.view_as(x)))
        flat_x[i] = orig
        flat_g[i] = (f_plus - f_minus) / (2 * eps)
    return flat_g.view_as(x)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a − b| / max(|a|, |b|, 1e-12)`` — the quantity gradient checks look at."""
    a, b = require_tensor(a, "a"), require_tensor(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    scale = torch.maximum(a.abs(), b.abs()).clamp_min(1e-12)
    return float(((a - b).abs() / scale).max()) if a.numel() else 0.0


def gradcheck(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Does autograd's gradient of the scalar ``f`` at ``x`` match central differences?

    True when ``|g_auto − g_num| ≤ atol + rtol · |g_num|`` everywhere. Use float64 ``x``: in float32 the
    round-off term δ/ε swamps the comparison.
    """
    x = require_tensor(x, "x")
    xr = x.detach().clone().requires_grad_(True)
    out = f(xr)
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise ValueError(f"f must return a scalar tensor, got {type(out).__name__} "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}")
    (auto,) = torch.autograd.grad(out, xr, allow_unused=True)
    auto = torch.zeros_like(x) if auto is None else auto
    num = numerical_gradient(f, x, eps)
    return bool(torch.allclose(auto, num, atol=atol, rtol=rtol))


def _require_vector_fn(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, int]:
    x = require_tensor(x, "x")
    if x.ndim != 1 or not x.is_floating_point():
        raise ValueError(f"x must be a 1-D floating-point tensor (n,), got shape {tuple(x.shape)}, dtype {x.dtype}")
    y = f(x)
    if not isinstance(y, torch.Tensor) or y.ndim != 1:
        raise ValueError(f"f must map (n,) to a 1-D tensor (m,), got {type(y).__name__} "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else ''}")
    return x.detach(), y.shape[0]


def jacobian_forward(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``f: R^n -> R^m`` at ``x`` by forward mode: one Jacobian-vector product per input.

    .. math:: J e_i = \\frac{d}{d\\epsilon} f(x + \\epsilon e_i)\\Big|_{\\epsilon=0}, \\qquad i = 1, \\dots, n

    ``n`` calls of ``torch.func.jvp``, each about the cost of one evaluation of ``f``. Returns ``(m, n)``.
    """
    x, _ = _require_vector_fn(f, x)
    eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    columns = [torch.func.jvp(f, (x,), (eye[i],))[1] for i in range(x.shape[0])]   # n tensors (m,)
    return torch.stack(columns, dim=1)                                              # (m, n)


def jacobian_reverse(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``f: R^n -> R^m`` at ``x`` by reverse mode: one vector-Jacobian product per output.

    .. math:: e_j^\\top J = \\nabla_x \\bigl(e_j^\\top f(x)\\bigr), \\qquad j = 1, \\dots, m

    One forward pass, then ``m`` backward passes (``torch.autograd.grad`` with ``retain_graph``),
    each about the cost of one evaluation of ``f``. Returns ``(m, n)``.
    """
    x, m = _require_vector_fn(f, x)
    xr = x.clone().requires_grad_(True)
    y = f(xr)                                                                       # (m,)
    eye = torch.eye(m, dtype=y.dtype, device=y.device)
    rows = [torch.autograd.grad(y, xr, eye[j], retain_graph=j < m - 1, allow_unused=True)[0] for j in range(m)]
    return torch.stack([torch.zeros_like(x) if r is None else r for r in rows])     # (m, n)
