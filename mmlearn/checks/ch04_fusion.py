"""Checks for the exercises of chapter 4 (notebooks/04_fusion_*.ipynb)."""

from __future__ import annotations

import torch
from torch import nn

from mmlearn.checks import (
    CheckFailed,
    call_student,
    expect_close,
    expect_equal,
    expect_number,
    fresh_generator,
    register,
)


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _sizes(gen: torch.Generator, n: int, low: int = 1, high: int = 6) -> list[int]:
    return [int(v) for v in torch.randint(low, high, (n,), generator=gen)]


@register("ex-ch04-tensor-fusion",
          hint="Append a column of ones to each modality, take the outer product per sample, then flatten it.")
def _check_tensor_fusion(tensor_fusion) -> None:
    gen = fresh_generator()
    for case in range(4):
        B, d_a, d_b = _sizes(gen, 3)
        x_a, x_b = _randn(gen, B, d_a), _randn(gen, B, d_b)
        one = torch.ones(B, 1, dtype=torch.float64)
        a1, b1 = torch.cat([x_a, one], 1), torch.cat([x_b, one], 1)
        expected = (a1[:, :, None] * b1[:, None, :]).reshape(B, -1)
        what = f"case {case}: x_a {tuple(x_a.shape)}, x_b {tuple(x_b.shape)}"
        got = tensor_fusion(x_a, x_b)
        if isinstance(got, torch.Tensor) and got.shape == (B, d_a * d_b):
            raise CheckFailed(f"{what}: got shape {tuple(got.shape)} — the appended 1 is missing, so the "
                              f"unimodal terms are lost; expected {(B, (d_a + 1) * (d_b + 1))}")
        expect_close(got, expected, what=what, atol=1e-10)


@register("ex-ch04-lowrank-params",
          hint="Each modality m has one factor of shape (rank, d_m + 1, out_dim); add the bias of size out_dim.")
def _check_lowrank_params(n_params) -> None:
    from mmlearn.fusion import LowRankFusion

    gen = fresh_generator()
    for case in range(5):
        M = int(torch.randint(2, 5, (1,), generator=gen))
        dims = _sizes(gen, M, 1, 40)
        out_dim, rank = _sizes(gen, 2, 1, 17)
        expected = sum(p.numel() for p in LowRankFusion(dims, out_dim, rank=rank).parameters())
        expect_equal(n_params(tuple(dims), out_dim, rank), expected,
                     what=f"case {case}: in_dims={tuple(dims)}, out_dim={out_dim}, rank={rank}")


@register("ex-ch04-best-additive",
          hint="Write the four inequalities for the corners and add the two with label 1, then the two with label 0.")
def _check_best_additive(answer) -> None:
    expect_number(answer, 0.75, what="best accuracy of an additive rule on the four XOR corners", tol=0.01)


def _xor_2d(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x_a, x_b = torch.randn(2, n, 1, generator=gen)
    return x_a, x_b, (x_a[:, 0] * x_b[:, 0] > 0).long()


def _linear_probe_accuracy(feats: torch.Tensor, y: torch.Tensor, n_train: int) -> float:
    """Test accuracy of an L2-regularised logistic regression (Newton's method) on the features."""
    X = torch.cat([feats.double(), torch.ones(len(feats), 1, dtype=torch.float64)], 1)
    X = X / X[:n_train].pow(2).mean(0).sqrt().clamp_min(1e-12)            # unit root-mean-square columns
    Xt, t = X[:n_train], y[:n_train].double()
    w = torch.zeros(X.shape[1], dtype=torch.float64)
    lam = 1e-4 * n_train
    for _ in range(30):
        p = torch.sigmoid(Xt @ w)
        grad = Xt.T @ (p - t) + lam * w
        hess = Xt.T @ (Xt * (p * (1 - p))[:, None]) + lam * torch.eye(len(w), dtype=torch.float64)
        w = w - torch.linalg.solve(hess, grad)
    return ((X[n_train:] @ w > 0).long() == y[n_train:]).double().mean().item()


@register("ex-ch04-interaction-feature",
          hint="Which single number, computed from x_a and x_b together, has the same sign for every point of a class?")
def _check_interaction_feature(phi) -> None:
    gen = fresh_generator()
    x_a, x_b, y = _xor_2d(gen, 2000)
    feats = phi(x_a, x_b)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != 2000:
        raise CheckFailed(f"phi must return a (B, k) tensor, got {getattr(feats, 'shape', type(feats))}")
    if not torch.isfinite(feats).all():
        raise CheckFailed("phi returned non-finite values")
    acc = _linear_probe_accuracy(feats, y, 1000)
    if acc < 0.85:
        raise CheckFailed(f"a linear classifier on your features reaches only {acc:.2f} test accuracy on fresh "
                          f"2-D XOR data (need >= 0.85): your features are still (nearly) additive")


@register("ex-ch04-emap",
          hint="Mean of row i, plus mean of column i, minus the mean of the whole matrix.")
def _check_emap(emap_scores) -> None:
    gen = fresh_generator()
    for case in range(4):
        N = _sizes(gen, 1, 2, 12)[0]
        F = _randn(gen, N, N)
        expected = F.mean(1) + F.mean(0) - F.mean()
        expect_close(emap_scores(F), expected, what=f"case {case}: F of shape {(N, N)}", atol=1e-10)
    g, h = _randn(gen, 6), _randn(gen, 6)
    additive = g[:, None] + h[None, :]
    expect_close(emap_scores(additive), g + h, what="an additive F[i, j] = g_i + h_j must be left unchanged",
                 atol=1e-10)


@register("ex-ch04-pool-concat",
          hint="Average the feature map over its two spatial axes (H, W), then concatenate with the text vector.")
def _check_pool_concat(pool_concat) -> None:
    gen = fresh_generator()
    for case in range(4):
        B, C, H, W, D = _sizes(gen, 5)
        fmap, text = _randn(gen, B, C, H, W), _randn(gen, B, D)
        expected = torch.cat([fmap.mean(dim=(2, 3)), text], 1)
        expect_close(pool_concat(fmap, text), expected,
                     what=f"case {case}: feature map {(B, C, H, W)}, text {(B, D)}", atol=1e-10)


class _Source004(nn.Module):
    """The model of source article 004: linear encoders, additive fusion, linear decoder."""

    def __init__(self, text_dim: int, image_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.text_encoder = nn.Linear(text_dim, hidden_dim)
        self.image_encoder = nn.Linear(image_dim, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, out_dim)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.text_encoder(text) + self.image_encoder(image))


@register("ex-ch04-collapse-linear",
          hint="Substitute the encoders into the decoder; collect what multiplies t, what multiplies i, the constants.")
def _check_collapse(collapse) -> None:
    gen = fresh_generator()
    for case in range(3):
        d_t, d_i, h, o = _sizes(gen, 4, 1, 8)
        model = _Source004(d_t, d_i, h, o).double()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(_randn(gen, *p.shape))
        W, b = collapse(model)
        t, i = _randn(gen, 5, d_t), _randn(gen, 5, d_i)
        what = f"case {case}: text_dim={d_t}, image_dim={d_i}, hidden={h}, out={o}"
        if not isinstance(W, torch.Tensor) or W.shape != (o, d_t + d_i):
            raise CheckFailed(f"{what}: W must have shape {(o, d_t + d_i)} (acting on [text; image]), "
                              f"got {getattr(W, 'shape', type(W))}")
        with torch.no_grad():
            expect_close(torch.cat([t, i], 1) @ W.T + b, model(t, i), what=f"{what}: W [t; i] + b vs the model",
                         atol=1e-8)


def _fit_r2_n_reference(fusion: nn.Module, data, n_train: int, steps: int, lr: float) -> float:
    x_a, x_b, y = data
    opt = torch.optim.Adam(fusion.parameters(), lr=lr)
    for _ in range(steps):
        loss = (fusion(x_a[:n_train], x_b[:n_train])[:, 0] - y[:n_train]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        residual = (fusion(x_a[2000:], x_b[2000:])[:, 0] - y[2000:]).pow(2).mean()
    return 1 - (residual / y[2000:].var()).item()


@register("ex-ch04-rank-and-data", hint="Copy fit_r2 and replace every [:2000] of the training loop by [:n_train]; "
                                        "the test slice [2000:] stays.")
def _check_fit_r2_n(fit_r2_n) -> None:
    from mmlearn.fusion import LowRankFusion

    gen = fresh_generator()
    x_a, x_b = torch.randn(2, 2100, 3, generator=gen, dtype=torch.float64)
    y = (x_a[:, 0] * x_b[:, 1] + x_a[:, 2]).clone()
    y[:30] += 5 * torch.randn(30, generator=gen, dtype=torch.float64)      # noisy first samples
    data = (x_a, x_b, y)
    for n_train in (30, 500):
        torch.manual_seed(0)
        expected = _fit_r2_n_reference(LowRankFusion([3, 3], 1, rank=2).double(), data, n_train, 40, 0.03)
        torch.manual_seed(0)
        got = fit_r2_n(LowRankFusion([3, 3], 1, rank=2).double(), data, n_train, steps=40, lr=0.03)
        expect_number(got, expected, what=f"test R² after training on the first {n_train} samples (40 steps)",
                      tol=1e-6)


@register("ex-ch04-xor-noise", hint="q = atan(sigma) / pi is the probability that noise flips one sign; the "
                                    "prediction is right when both or neither sign flips.")
def _check_bayes_accuracy(bayes_accuracy) -> None:
    import math

    for sigma in (0.0, 0.1, 0.5, 1.0, 3.0):
        q = math.atan(sigma) / math.pi
        expect_number(bayes_accuracy(sigma), (1 - q) ** 2 + q**2, what=f"sigma = {sigma}", tol=1e-9)


@register("ex-ch04-emap-projection", hint="Row means as a column, column means as a row, minus the grand mean; "
                                          "broadcasting gives the (N, N) matrix.")
def _check_additive_fit(additive_fit) -> None:
    gen = fresh_generator()
    for case in range(4):
        n = int(torch.randint(2, 9, (1,), generator=gen))
        F = torch.randn(n, n, generator=gen, dtype=torch.float64)
        expected = F.mean(1, keepdim=True) + F.mean(0, keepdim=True) - F.mean()
        got = additive_fit(F)
        if not isinstance(got, torch.Tensor) or got.shape != (n, n):
            raise CheckFailed(f"case {case}: expected an ({n}, {n}) tensor, got "
                              f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        expect_close(got, expected, what=f"case {case}: the additive fit of a random {n}×{n} score matrix", atol=1e-10)


# ---- 04_fusion_competition -------------------------------------------------------------------------

@register("ex-ch04-sketch-outer",
          hint="Sketch x_a and x_b separately (index_add_ of s * x at positions h), multiply their rfft's, then irfft "
               "with n=D.")
def _check_sketch_outer(sketch_outer) -> None:
    from mmlearn.fusion import count_sketch

    gen = fresh_generator()
    for case in range(4):
        B, d_a, d_b = _sizes(gen, 3, 1, 7)
        D = int(torch.randint(2, 24, (1,), generator=gen))
        x_a, x_b = _randn(gen, B, d_a), _randn(gen, B, d_b)
        h_a, h_b = torch.randint(D, (d_a,), generator=gen), torch.randint(D, (d_b,), generator=gen)
        s_a = 2.0 * torch.randint(2, (d_a,), generator=gen, dtype=torch.float64) - 1
        s_b = 2.0 * torch.randint(2, (d_b,), generator=gen, dtype=torch.float64) - 1
        h = ((h_a[:, None] + h_b[None, :]) % D).flatten()
        s = (s_a[:, None] * s_b[None, :]).flatten()
        expected = count_sketch((x_a[:, :, None] * x_b[:, None, :]).flatten(1), h, s, D)
        what = f"case {case}: x_a {tuple(x_a.shape)}, x_b {tuple(x_b.shape)}, D={D}"
        got = call_student(sketch_outer, x_a, x_b, h_a, s_a, h_b, s_b, D, what=what)
        expect_close(got, expected, what=what, atol=1e-9)


@register("ex-ch04-ogm-coefficients",
          hint="c_m = sum over the batch of softmax(logits_m)[n, y_n]; rho = c_a / c_b; only the modality with the "
               "larger confidence gets 1 - tanh(alpha * (ratio - 1)).")
def _check_ogm_coefficients(ogm_coefficients) -> None:
    from mmlearn.fusion import ogm_ge_coefficients

    gen = fresh_generator()
    for case in range(5):
        B, C = _sizes(gen, 2, 2, 9)
        logits_a, logits_b = 2 * _randn(gen, B, C), _randn(gen, B, C)
        if case % 2:
            logits_a, logits_b = logits_b, logits_a
        y = torch.randint(C, (B,), generator=gen)
        alpha = float(torch.rand(1, generator=gen)) * 3
        c = [z.softmax(-1).gather(1, y[:, None]).sum() for z in (logits_a, logits_b)]
        expected = ogm_ge_coefficients(c[0], c[1], alpha)
        what = f"case {case}: logits {B}×{C}, alpha={alpha:.3f}"
        got = call_student(ogm_coefficients, logits_a, logits_b, y, alpha, what=what)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"{what}: expected a pair (k_a, k_b), got {type(got).__name__}")
        for name, g, e in zip(("k_a", "k_b"), got, expected):
            expect_close(g, e, what=f"{what}, {name}", atol=1e-6)


@register("ex-ch04-pid-and",
          hint="I(Y; A, B) = h(1/4); I(Y; A) = I(Y; B) = h(1/4) - 1/2; by symmetry R = I(Y; A).")
def _check_pid_and(answer) -> None:
    expect_number(answer, 0.5, what="synergy of AND under I_min, in bits", tol=0.005)


@register("ex-ch04-ogm-alpha", hint="1 - tanh(alpha * (rho - 1)) when rho > 1; otherwise 1.")
def _check_audio_coefficient(audio_coefficient) -> None:
    import math

    gen = fresh_generator()
    for case in range(6):
        rho = float(torch.rand(1, generator=gen)) * 4 + 0.1
        alpha = float(torch.rand(1, generator=gen)) * 5
        expected = 1 - math.tanh(alpha * (rho - 1)) if rho > 1 else 1.0
        what = f"case {case}: rho={rho:.3f}, alpha={alpha:.3f}"
        expect_close(call_student(audio_coefficient, rho, alpha, what=what), expected, what=what, atol=1e-9)
