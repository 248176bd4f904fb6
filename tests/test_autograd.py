"""mmlearn.autograd: Value against torch autograd on random expressions; the gradient checker."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.testing import assert_close

from mmlearn.autograd import Value, gradcheck, numerical_gradient, relative_error

N_VARS = 3

# ---- random expression trees, evaluated twice: with Value and with float64 torch scalars -------
# Every operation is kept inside its domain (log of a positive number, division by 1 + y², ...).

UNARY = {
    "tanh": lambda x: x.tanh(),
    "relu": lambda x: x.relu(),
    "neg": lambda x: -x,
    "exp_tanh": lambda x: x.tanh().exp(),
    "log1p_sq": lambda x: (x * x + 1).log(),
    "sqrt1p_sq": lambda x: (x * x + 1) ** 0.5,
    "square": lambda x: x**2,
    "cube": lambda x: x**3,
    "inv1p_sq": lambda x: (1 + x * x) ** -1,
    "rsub": lambda x: 2.5 - x,
    "rdiv": lambda x: 1.5 / (x * x + 1),
    "radd_rmul": lambda x: 3 * x + 1,
}
BINARY = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / (y * y + 1),
}

leaves = st.integers(0, N_VARS - 1).map(lambda i: ("var", i)) | st.floats(-2, 2).map(lambda c: ("const", c))
expressions = st.recursive(
    leaves,
    lambda sub: st.tuples(st.sampled_from(sorted(UNARY)), sub) | st.tuples(st.sampled_from(sorted(BINARY)), sub, sub),
    max_leaves=12,
)


def evaluate(expr, variables):
    kind = expr[0]
    if kind == "var":
        return variables[expr[1]]
    if kind == "const":
        return expr[1]
    args = [evaluate(e, variables) for e in expr[1:]]
    if len(args) == 1 and not isinstance(args[0], (Value, torch.Tensor)):
        args[0] = Value(args[0]) if isinstance(variables[0], Value) else torch.tensor(args[0], dtype=torch.float64)
    return UNARY[kind](*args) if len(args) == 1 else BINARY[kind](*args)


@given(expr=expressions, xs=st.lists(st.floats(-2, 2), min_size=N_VARS, max_size=N_VARS))
def test_value_matches_torch_on_random_expressions(expr, xs):
    values = [Value(x) for x in xs]
    tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    out_t = evaluate(expr, tensors) + 0 * tensors[0]         # + 0·x0: the result is always a Value/tensor
    assume(bool(torch.isfinite(out_t)) and abs(out_t.item()) < 1e100)   # nested cubes can overflow
    out_v = evaluate(expr, values) + 0 * values[0]
    out_v.backward()
    out_t.backward()
    assert out_v.data == pytest.approx(out_t.item(), rel=1e-9, abs=1e-12)
    for v, t in zip(values, tensors):
        expected = 0.0 if t.grad is None else t.grad.item()     # None: the variable does not occur
        assert v.grad == pytest.approx(expected, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_each_unary_op_matches_torch(name):
    for x in (-1.3, -0.2, 0.7, 1.9):
        v, t = Value(x), torch.tensor(x, dtype=torch.float64, requires_grad=True)
        UNARY[name](v).backward()
        UNARY[name](t).backward()
        assert v.grad == pytest.approx(t.grad.item(), rel=1e-12, abs=1e-14)


def test_shared_nodes_accumulate_gradients():
    a = Value(3.0)
    b = a * a + a           # a used three times: db/da = 2a + 1
    c = b * b               # diamond: dc/da = 2b (2a + 1)
    c.backward()
    assert c.data == 144.0 and a.grad == 2 * 12 * 7
    x = Value(2.0)
    y = x + x
    y.backward()
    assert x.grad == 2.0


def test_deep_graph_needs_no_recursion():
    x = Value(0.5)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward()
    assert x.grad == pytest.approx(1.0001**5000)
    order = y.topological_order()
    position = {id(node): i for i, node in enumerate(order)}
    assert order[-1] is y and len(order) == 1 + 2 * 5000
    assert all(position[id(child)] < position[id(node)] for node in order for child in node._prev)


def test_op_labels_and_repr():
    a, b = Value(2.0, label="a"), Value(4.0)
    c = a * b
    assert c._op == "*" and set(c._prev) == {a, b} and (a**2)._op == "**2"
    assert "a=2" in repr(a)


@pytest.mark.parametrize("call, match", [
    (lambda: Value("3"), "Value holds a real number"),
    (lambda: Value(True), "Value holds a real number"),
    (lambda: Value(2.0) ** Value(2.0), r"Value \*\* k needs a constant number"),
    (lambda: Value(-2.0) ** 0.5, "not real"),
    (lambda: Value(0.0) ** -1, "no derivative at 0"),
    (lambda: Value(-1.0).log(), "log needs a positive argument, got -1"),
])
def test_value_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- the finite-difference gradient checker ------------------------------------------------------

def test_numerical_gradient_of_known_functions(device):
    x = torch.randn(3, 4, dtype=torch.float64, device=device)
    assert_close(numerical_gradient(lambda w: (w**2).sum(), x), 2 * x, atol=1e-7, rtol=1e-7)
    assert_close(numerical_gradient(lambda w: w.sin().sum(), x), x.cos(), atol=1e-8, rtol=1e-8)
    A = torch.randn(5, 5, dtype=torch.float64, device=device)
    v = torch.randn(5, dtype=torch.float64, device=device)
    assert_close(numerical_gradient(lambda w: w @ A @ w, v), (A + A.T) @ v, atol=1e-7, rtol=1e-7)
    assert numerical_gradient(lambda w: w.sum(), x).shape == x.shape


def test_numerical_gradient_error_is_second_order():
    f, x0 = torch.exp, torch.tensor([0.3], dtype=torch.float64)     # f''' ≠ 0: truncation error ≈ ε² f'''/6
    errors = [abs(float(numerical_gradient(lambda w: f(w).sum(), x0, eps) - math.exp(0.3))) for eps in (1e-2, 1e-3)]
    assert 50 < errors[0] / errors[1] < 200                           # ε ÷ 10 → error ÷ 100


def test_gradcheck_accepts_correct_and_rejects_wrong_gradients(device):
    x = torch.randn(6, dtype=torch.float64, device=device)
    assert gradcheck(lambda w: (w.tanh() * w.exp()).sum(), x)

    class WrongSquare(torch.autograd.Function):            # forward x², backward pretends 3x
        @staticmethod
        def forward(ctx, w):
            ctx.save_for_backward(w)
            return w**2

        @staticmethod
        def backward(ctx, grad):
            (w,) = ctx.saved_tensors
            return grad * 3 * w
    assert not gradcheck(lambda w: WrongSquare.apply(w).sum(), x)


def test_relative_error():
    a = torch.tensor([1.0, 2.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, torch.tensor([1.0, 2.2])) == pytest.approx(0.2 / 2.2)


@pytest.mark.parametrize("call, match", [
    (lambda: numerical_gradient(lambda w: w.sum(), torch.arange(3)), "floating-point dtype"),
    (lambda: numerical_gradient(lambda w: w.sum(), torch.zeros(3), eps=0.0), "eps must be > 0"),
    (lambda: numerical_gradient(lambda w: w.sum(), [1.0, 2.0]), "x must be a torch.Tensor"),
    (lambda: gradcheck(lambda w: w * 2, torch.zeros(3, dtype=torch.float64)), "f must return a scalar"),
    (lambda: relative_error(torch.zeros(2), torch.zeros(3)), "same shape"),
])
def test_checker_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_plot_computation_graph_draws_every_node():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmlearn.viz import plot_computation_graph

    x, w = Value(2.0, label="x"), Value(-1.0, label="w")
    out = (x * w + 1).tanh()
    out.backward()
    fig = plot_computation_graph(out)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len([t for t in texts if "data" in t]) == len(out.topological_order()) == 6
    assert any(t.startswith("x\n") and f"grad {x.grad:.4g}" in t for t in texts)
    plt.close(fig)
    with pytest.raises(ValueError, match="root must be an mmlearn.autograd.Value"):
        plot_computation_graph(3.0)
