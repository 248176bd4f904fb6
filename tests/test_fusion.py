"""Tests of mmlearn.fusion: shapes and gradients, closed forms, references, the XOR lesson, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mmlearn import fusion as fu
from mmlearn.data import make_xor_modalities

F64 = torch.float64

# name -> (factory(in_dims), expected out_dim given in_dims); all take any number >= 2 of modalities
# except BilinearFusion (exactly 2)
FACTORIES = {
    "sum": (lambda d: fu.SumFusion(d, 6), lambda d: 6),
    "sum_identity_weighted": (lambda d: fu.SumFusion([d[0]] * len(d), weighted=True), lambda d: d[0]),
    "product": (lambda d: fu.ProductFusion(d, 5), lambda d: 5),
    "concat": (lambda d: fu.ConcatFusion(d), lambda d: sum(d)),
    "concat_linear": (lambda d: fu.ConcatFusion(d, 7), lambda d: 7),
    "gated": (lambda d: fu.GatedFusion(d, 6), lambda d: 6),
    "bilinear": (lambda d: fu.BilinearFusion(d[:2], 4), lambda d: 4),
    "tensor": (lambda d: fu.TensorFusion(d), lambda d: torch.tensor([x + 1 for x in d]).prod().item()),
    "tensor_linear": (lambda d: fu.TensorFusion(d, 3), lambda d: 3),
    "lowrank": (lambda d: fu.LowRankFusion(d, 5, rank=3), lambda d: 5),
    "film": (lambda d: fu.FiLM(d), lambda d: d[0]),
    "film_proj": (lambda d: fu.FiLM(d, 4), lambda d: 4),
    "cross_attention": (lambda d: fu.CrossAttentionFusion(d, 8, num_heads=2), lambda d: 8),
    "late": (lambda d: fu.LateFusion(d, 3), lambda d: 3),
    "late_mlp_learned": (lambda d: fu.LateFusion(d, 3, hidden=5, learn_weights=True), lambda d: 3),
}


def _inputs(dims, batch, device, dtype=torch.float32, requires_grad=False):
    return [torch.randn(batch, d, device=device, dtype=dtype, requires_grad=requires_grad) for d in dims]


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dims", [(3, 5), (4, 2, 3)])
def test_shape_and_gradients(name, dims, device):
    make, expected_out = FACTORIES[name]
    dims = dims[:2] if name == "bilinear" else dims
    if name == "sum_identity_weighted":
        dims = (dims[0],) * len(dims)
    fusion = make(dims).to(device)
    xs = _inputs(dims, 7, device, requires_grad=True)
    z = fusion(*xs)
    assert fusion.out_dim == expected_out(dims)
    assert z.shape == (7, fusion.out_dim) and z.device.type == device.type
    (z ** 2).sum().backward()
    for m, x in enumerate(xs):
        assert x.grad is not None and torch.isfinite(x.grad).all(), f"modality {m} got no gradient"
    for pname, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"parameter {pname} got no gradient"


# ---- references and closed forms --------------------------------------------------------------

def test_bilinear_equals_nn_bilinear(device):
    ours = fu.BilinearFusion([4, 6], 5).to(device, F64)
    ref = nn.Bilinear(4, 6, 5).to(device, F64)
    ref.load_state_dict(ours.state_dict())
    x_a, x_b = _inputs((4, 6), 9, device, F64)
    torch.testing.assert_close(ours(x_a, x_b), ref(x_a, x_b))


def test_concat_linear_is_a_sum_of_per_modality_linear_maps(device):
    concat = fu.ConcatFusion([3, 5], 4).to(device, F64)
    W_a, W_b = concat.proj.weight.split([3, 5], dim=1)
    x_a, x_b = _inputs((3, 5), 6, device, F64)
    torch.testing.assert_close(concat(x_a, x_b), x_a @ W_a.T + x_b @ W_b.T + concat.proj.bias)
    sum_fusion = fu.SumFusion([3, 5], 4).to(device, F64)
    with torch.no_grad():
        sum_fusion.proj[0].weight.copy_(W_a)
        sum_fusion.proj[1].weight.copy_(W_b)
        sum_fusion.proj[0].bias.copy_(concat.proj.bias)
        sum_fusion.proj[1].bias.zero_()
    torch.testing.assert_close(sum_fusion(x_a, x_b), concat(x_a, x_b))


def test_sum_and_product_closed_forms(device):
    xs = _inputs((4, 4, 4), 5, device, F64)
    torch.testing.assert_close(fu.SumFusion([4, 4, 4])(*xs), xs[0] + xs[1] + xs[2])
    torch.testing.assert_close(fu.ProductFusion([4, 4, 4])(*xs), xs[0] * xs[1] * xs[2])
    weighted = fu.SumFusion([4, 4, 4], weighted=True).to(device, F64)
    with torch.no_grad():
        weighted.weight_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    alpha = torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=F64, device=device), 0)
    torch.testing.assert_close(weighted(*xs), alpha[0] * xs[0] + alpha[1] * xs[1] + alpha[2] * xs[2])
    product = fu.ProductFusion([3, 5], 4).to(device, F64)
    x_a, x_b = _inputs((3, 5), 6, device, F64)
    torch.testing.assert_close(product(x_a, x_b), product.proj[0](x_a) * product.proj[1](x_b))


def test_tensor_fusion_contains_unimodal_terms_and_products(device):
    d_a, d_b = 3, 4
    x_a, x_b = _inputs((d_a, d_b), 5, device, F64)
    Z = fu.TensorFusion([d_a, d_b])(x_a, x_b).view(5, d_a + 1, d_b + 1)
    torch.testing.assert_close(Z[:, :d_a, d_b], x_a)                          # x_a * 1
    torch.testing.assert_close(Z[:, d_a, :d_b], x_b)                          # 1 * x_b
    torch.testing.assert_close(Z[:, d_a, d_b], torch.ones(5, dtype=F64, device=device))
    torch.testing.assert_close(Z[:, :d_a, :d_b], x_a[:, :, None] * x_b[:, None, :])   # x_a x_b^T


def test_tensor_fusion_three_modalities_closed_form(device):
    xs = _inputs((2, 3, 2), 4, device, F64)
    ones = [torch.cat([x, torch.ones(4, 1, dtype=F64, device=device)], 1) for x in xs]
    expected = torch.einsum("bi,bj,bk->bijk", *ones).flatten(1)
    torch.testing.assert_close(fu.TensorFusion([2, 3, 2])(*xs), expected)


@given(st.lists(st.integers(1, 4), min_size=2, max_size=3), st.integers(1, 5), st.integers(0, 10_000))
def test_tensor_fusion_norm_is_product_of_norms(dims, batch, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, d, generator=g, dtype=F64) for d in dims]
    z = fu.TensorFusion(dims)(*xs)
    expected = torch.stack([torch.sqrt((x ** 2).sum(1) + 1) for x in xs]).prod(0)   # ||a (x) b|| = ||a|| ||b||
    torch.testing.assert_close(z.norm(dim=1), expected)


@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 10_000))
def test_product_and_sum_are_symmetric_in_the_modalities(dim, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x_a, x_b = torch.randn(2, batch, dim, generator=g, dtype=F64)
    for fusion in (fu.SumFusion([dim, dim]), fu.ProductFusion([dim, dim])):
        torch.testing.assert_close(fusion(x_a, x_b), fusion(x_b, x_a))


@pytest.mark.parametrize("dims", [(3, 4), (2, 3, 2)])
def test_low_rank_fusion_equals_tensor_fusion_with_the_rebuilt_weight(dims, device):
    low = fu.LowRankFusion(dims, 5, rank=3).to(device, F64)
    with torch.no_grad():
        low.bias.normal_()
    tensor = fu.TensorFusion(dims, 5).to(device, F64)
    with torch.no_grad():
        tensor.proj.weight.copy_(low.full_weight())
        tensor.proj.bias.copy_(low.bias)
    xs = _inputs(dims, 6, device, F64)
    torch.testing.assert_close(low(*xs), tensor(*xs))


def test_low_rank_full_weight_is_sum_of_outer_products():
    low = fu.LowRankFusion([2, 3], 4, rank=2).double()
    a, b = low.factors
    expected = sum(torch.einsum("io,jo->oij", a[r], b[r]) for r in range(2)).reshape(4, -1)
    torch.testing.assert_close(low.full_weight(), expected)


def test_low_rank_factors_are_registered_and_trained(device):
    low = fu.LowRankFusion([3, 4, 2], 5, rank=3).to(device)
    params = list(low.parameters())
    for m, factor in enumerate(low.factors):
        assert isinstance(factor, nn.Parameter) and any(factor is p for p in params), f"factor {m} not registered"
        assert factor.shape == (3, low.in_dims[m] + 1, 5)
    assert any(low.bias is p for p in params)
    assert sum(p.numel() for p in params) == 3 * (4 + 5 + 3) * 5 + 5
    assert {n for n, _ in low.named_parameters()} == {"factors.0", "factors.1", "factors.2", "bias"}
    before = {n: p.detach().clone() for n, p in low.named_parameters()}
    opt = torch.optim.Adam(low.parameters(), lr=0.1)
    xs = _inputs((3, 4, 2), 8, device)
    (low(*xs) - 1).pow(2).mean().backward()
    opt.step()
    for n, p in low.named_parameters():
        assert not torch.equal(before[n], p.detach()), f"{n} did not change after an optimiser step"
    moved = low.to(F64)
    assert all(p.dtype == F64 for p in moved.factors)                    # .to() reaches every factor


def test_gated_fusion_two_modalities_is_the_gmu(device):
    gmu = fu.GatedFusion([3, 5], 4).to(device, F64)
    x_a, x_b = _inputs((3, 5), 6, device, F64)
    h_a, h_b = torch.tanh(gmu.proj[0](x_a)), torch.tanh(gmu.proj[1](x_b))
    g = torch.sigmoid(gmu.gate(torch.cat([x_a, x_b], 1)))
    torch.testing.assert_close(gmu(x_a, x_b), g * h_a + (1 - g) * h_b)
    torch.testing.assert_close(gmu.last_gates.sum(1), torch.ones(6, 4, dtype=F64, device=device))


def test_film_closed_form_identity_at_init_and_sequences(device):
    film = fu.FiLM([4, 3]).to(device, F64)
    x, c = _inputs((4, 3), 5, device, F64)
    torch.testing.assert_close(film(x, c), x)                             # gamma = 1, beta = 0 at init
    with torch.no_grad():
        film.film.weight.normal_()
        film.film.bias.normal_()
    gamma, beta = film.film(c).chunk(2, -1)
    torch.testing.assert_close(film(x, c), gamma * x + beta)
    seq = torch.randn(5, 7, 4, device=device, dtype=F64)
    torch.testing.assert_close(film(seq, c), gamma[:, None] * seq + beta[:, None])


def test_cross_attention_with_one_context_position_is_additive(device):
    fusion = fu.CrossAttentionFusion([3, 5], 6, num_heads=2).to(device, F64)
    x_q, x_c = _inputs((3, 5), 4, device, F64)
    attn = fusion.attn
    v = fusion.proj[1](x_c) @ attn.in_proj_weight[12:].T + attn.in_proj_bias[12:]      # W_V
    expected = fusion.proj[0](x_q) + attn.out_proj(v)
    torch.testing.assert_close(fusion(x_q, x_c), expected)


def test_cross_attention_matches_the_formula_and_respects_the_mask(device):
    D = 4
    fusion = fu.CrossAttentionFusion([3, 5], D).to(device, F64)
    x_q = torch.randn(2, 6, 3, device=device, dtype=F64)
    x_c = torch.randn(2, 7, 5, device=device, dtype=F64)
    q_in, c = fusion.proj[0](x_q), fusion.proj[1](x_c)
    W, b = fusion.attn.in_proj_weight, fusion.attn.in_proj_bias
    q, k, v = (t @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i, t in enumerate((q_in, c, c)))
    mask = torch.ones(2, 7, dtype=torch.bool, device=device)
    mask[1, 4:] = False
    scores = (q @ k.transpose(1, 2)) / D ** 0.5
    weights = torch.softmax(scores.masked_fill(~mask[:, None, :], float("-inf")), -1)
    expected = q_in + fusion.attn.out_proj(weights @ v)
    out = fusion(x_q, x_c, mask=mask)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(fusion.last_weights, weights)
    x_c2 = x_c.clone()
    x_c2[1, 4:] = 100.0                                                   # padded positions are ignored
    torch.testing.assert_close(fusion(x_q, x_c2, mask=mask), out)


def test_late_fusion_mean_weights_and_missing_modality(device):
    late = fu.LateFusion([3, 5], 2, weights=[1.0, 3.0]).to(device, F64)
    x_a, x_b = _inputs((3, 5), 4, device, F64)
    f_a, f_b = late.heads[0](x_a), late.heads[1](x_b)
    torch.testing.assert_close(late(x_a, x_b), 0.25 * f_a + 0.75 * f_b)
    torch.testing.assert_close(late(x_a, None), f_a)                      # weights renormalised
    torch.testing.assert_close(late(None, x_b), f_b)
    mean = fu.LateFusion([3, 5], 2).to(device, F64)
    torch.testing.assert_close(mean(x_a, x_b), (mean.heads[0](x_a) + mean.heads[1](x_b)) / 2)


# ---- the XOR lesson -----------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """Tiny full-batch training: one thread avoids oversubscribing a shared CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _xor_accuracy(model: nn.Module, steps: int = 200) -> float:
    x_a, x_b, y = make_xor_modalities(1200, dim=4, noise=0.0, seed=1)      # noise=0: Bayes accuracy 1
    tr, te = slice(0, 800), slice(800, None)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x_a[tr], x_b[tr]), y[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (model(x_a[te], x_b[te]).argmax(-1) == y[te]).float().mean().item()


@pytest.mark.parametrize("make", [lambda: fu.FusionClassifier(fu.ProductFusion([4, 4], 8), 2),
                                  lambda: fu.FusionClassifier(fu.TensorFusion([4, 4]), 2)],
                         ids=["product", "tensor"])
def test_multiplicative_fusion_solves_xor(make, one_thread):
    torch.manual_seed(0)
    assert _xor_accuracy(make()) >= 0.95


@pytest.mark.parametrize("make", [lambda: fu.LateFusion([4, 4], 2, hidden=32),
                                  lambda: fu.FusionClassifier(fu.ConcatFusion([4, 4]), 2)],
                         ids=["late_additive", "concat_linear"])
def test_additive_fusion_cannot_solve_xor(make, one_thread):
    torch.manual_seed(0)
    assert _xor_accuracy(make()) <= 0.6


# ---- ModDrop, the classifier wrapper, EMAP ------------------------------------------------------

def test_modality_dropout(device):
    drop = fu.ModalityDropout(0.4)
    xs = [torch.ones(4000, 3, device=device), torch.ones(4000, 2, device=device)]
    out = drop(*xs)
    kept = torch.stack([o[:, 0] for o in out], 1)                         # (B, 2): 1 kept, 0 dropped
    assert ((kept == 0) | (kept == 1)).all() and (kept.sum(1) >= 1).all()   # never both dropped
    for o in out:                                                        # whole modality per sample
        assert (o == o[:, :1]).all()
    rate = 1 - kept.mean().item()
    assert 0.25 < rate < 0.4                                             # p(1-p)/(1-p^2)=0.286 per modality
    drop.eval()
    assert all(torch.equal(o, x) for o, x in zip(drop(*xs), xs))


def test_fusion_classifier_pools_sequences_and_uses_encoders(device):
    model = fu.FusionClassifier(fu.CrossAttentionFusion([4, 4], 8), 3,
                                encoders=[nn.Linear(6, 4), None], hidden=5).to(device)
    out = model(torch.randn(2, 5, 6, device=device), torch.randn(2, 3, 4, device=device))
    assert out.shape == (2, 3)


def test_emap_is_exact_for_additive_models_and_removes_interactions(device):
    x_a, x_b = _inputs((3, 3), 50, device, F64)
    additive = lambda a, b: torch.stack([a.sum(1) ** 2, b[:, 0]], 1) + torch.sin(b[:, 1:2])
    torch.testing.assert_close(fu.emap(additive, x_a, x_b, chunk=7), additive(x_a, x_b))
    interaction = lambda a, b: (a[:, :1] * b[:, :1])
    got = fu.emap(interaction, x_a, x_b, chunk=16)
    ma, mb = x_a[:, 0].mean(), x_b[:, 0].mean()
    torch.testing.assert_close(got[:, 0], x_a[:, 0] * mb + ma * x_b[:, 0] - ma * mb)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_inputs_raise_value_error():
    fusion = fu.ConcatFusion([3, 4])
    with pytest.raises(ValueError, match="expects 2 modalities"):
        fusion(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"in_dims\[1\]=4"):
        fusion(torch.randn(2, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="same batch size"):
        fusion(torch.randn(2, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"must be \(B, 3\)"):
        fusion(torch.randn(2, 1, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="floating-point"):
        fusion(torch.ones(2, 3, dtype=torch.long), torch.randn(2, 4))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        fusion([[1.0, 2.0, 3.0]], torch.randn(1, 4))


@pytest.mark.parametrize("build, match", [
    (lambda: fu.SumFusion([3]), "at least 2 modalities"),
    (lambda: fu.SumFusion(3), "one feature size per modality"),
    (lambda: fu.ProductFusion([3, 0]), "positive ints"),
    (lambda: fu.SumFusion([3, 4]), "give out_dim"),
    (lambda: fu.ConcatFusion([3, 4], out_dim=0), "out_dim must be a positive int"),
    (lambda: fu.BilinearFusion([3, 4, 5]), "exactly 2 modalities"),
    (lambda: fu.LowRankFusion([3, 4], rank=0), "rank must be a positive int"),
    (lambda: fu.CrossAttentionFusion([4, 4], 6, num_heads=4), "positive divisor of out_dim=6"),
    (lambda: fu.LateFusion([3, 4]), "out_dim .* is required"),
    (lambda: fu.LateFusion([3, 4], 2, weights=[1.0]), "weights must be 2"),
    (lambda: fu.ModalityDropout(1.0), r"p must be in \[0, 1\)"),
    (lambda: fu.FusionClassifier(fu.ConcatFusion([3, 4]), 2, encoders=[None]), "one encoder"),
])
def test_bad_constructor_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_sequence_and_mask_inputs():
    cross = fu.CrossAttentionFusion([3, 4], 4)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        cross(torch.randn(2, 3), torch.randn(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    film = fu.FiLM([3, 4])
    with pytest.raises(ValueError, match=r"modality 1 must be \(B, 4\)"):
        film(torch.randn(2, 5, 3), torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="at least one modality"):
        fu.LateFusion([3, 4], 2)(None, None)
    with pytest.raises(ValueError, match="same number of samples"):
        fu.emap(lambda a, b: a, torch.randn(3, 2), torch.randn(4, 2))


def test_agreement_pairs_marginals_equal_in_both_classes():
    g = torch.Generator().manual_seed(0)
    attr = torch.tensor([0] * 300 + [1] * 200 + [2] * 200 + [3] * 200)        # one value over-represented
    i, j, y = fu.agreement_pairs(attr, 40_000, generator=g)
    assert (i != j).all()
    torch.testing.assert_close((attr[i] == attr[j]).long(), y)
    p = torch.bincount(attr).double() / len(attr)
    for side in (i, j):
        for label in (0, 1):
            freq = torch.bincount(attr[side[y == label]], minlength=4).double() / (y == label).sum()
            se = (p * (1 - p) / (y == label).sum()).sqrt()
            assert ((freq - p).abs() < 5 * se).all(), (label, freq, p)    # within 5 standard errors
    assert abs(y.double().mean().item() - 0.5) < 0.01


def test_agreement_pairs_coupling_is_exact():
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    q = fu._zero_diagonal_coupling(p)
    torch.testing.assert_close(q.sum(0), p)
    torch.testing.assert_close(q.sum(1), p)
    assert q.diagonal().abs().max() == 0


@pytest.mark.parametrize("attr, n, match", [
    (torch.tensor([0.0, 1.0]), 4, "integer"),
    (torch.tensor([0, 0, 1, 1]), 0, "positive int"),
    (torch.tensor([0, 0, 1]), 4, "each on >= 2"),
    (torch.tensor([0] * 8 + [1, 1, 2, 2]), 4, "1/2"),
])
def test_agreement_pairs_bad_input(attr, n, match):
    with pytest.raises(ValueError, match=match):
        fu.agreement_pairs(attr, n)


# ---- bilinear pooling, OGM, PID (notebook 04_fusion_competition) -----------------------------------

def _hashes(gen, d, D):
    return torch.randint(D, (d,), generator=gen), 2.0 * torch.randint(2, (d,), generator=gen) - 1


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 40), st.integers(0, 10_000))
def test_count_sketch_equals_its_dense_matrix(d, batch, D, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=g, dtype=F64)
    h, s = _hashes(g, d, D)
    S = torch.zeros(D, d, dtype=F64)
    S[h, torch.arange(d)] = s.double()                                       # S_ji = s(i) [h(i) = j]
    torch.testing.assert_close(fu.count_sketch(x, h, s, D), x @ S.T, rtol=0, atol=1e-12)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 30), st.integers(0, 10_000))
def test_sketch_of_outer_product_is_circular_convolution(d_a, d_b, D, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(3, d_a, generator=g, dtype=F64), torch.randn(3, d_b, generator=g, dtype=F64)
    (h_a, s_a), (h_b, s_b) = _hashes(g, d_a, D), _hashes(g, d_b, D)
    h = ((h_a[:, None] + h_b[None, :]) % D).flatten()
    s = (s_a[:, None] * s_b[None, :]).flatten()
    direct = fu.count_sketch((x[:, :, None] * y[:, None, :]).flatten(1), h, s, D)
    pa, pb = fu.count_sketch(x, h_a, s_a, D), fu.count_sketch(y, h_b, s_b, D)
    conv = torch.stack([sum(pa[:, i] * pb[:, (j - i) % D] for i in range(D)) for j in range(D)], 1)
    torch.testing.assert_close(conv, direct, rtol=0, atol=1e-10)
    mcb = fu.MCBFusion([d_a, d_b], sketch_dim=D).double()
    with torch.no_grad():
        mcb.h_a.copy_(h_a), mcb.s_a.copy_(s_a), mcb.h_b.copy_(h_b), mcb.s_b.copy_(s_b)
    torch.testing.assert_close(mcb(x, y), direct, rtol=0, atol=1e-10)


def test_mcb_shapes_parameters_and_projection(device):
    mcb = fu.MCBFusion([5, 7], sketch_dim=64).to(device)
    assert sum(p.numel() for p in mcb.parameters()) == 0 and mcb.out_dim == 64
    x = _inputs([5, 7], 4, device)
    assert mcb(*x).shape == (4, 64)
    proj = fu.MCBFusion([5, 7], 3, sketch_dim=16).to(device)
    assert proj(*x).shape == (4, 3) and proj.out_dim == 3


def test_mutan_equals_its_tucker_core_and_has_mlb_as_special_case(device):
    torch.manual_seed(0)
    m = fu.MutanFusion([5, 6], 3, proj_dims=(4, 7), core_dim=8, rank=2).to(device, F64)
    x_a, x_b = _inputs([5, 6], 9, device, F64)
    t_a, t_b = torch.tanh(m.proj[0](x_a)), torch.tanh(m.proj[1](x_b))
    T = m.core.full_weight().view(8, 5, 8)                                  # (t_o, t_a + 1, t_b + 1)
    one = torch.ones(9, 1, device=device, dtype=F64)
    z = torch.einsum("bi,kij,bj->bk", torch.cat([t_a, one], 1), T, torch.cat([t_b, one], 1)) + m.core.bias
    torch.testing.assert_close(m(x_a, x_b), m.out(z))
    # MLB: rank 1, identity-like factors without the appended-1 rows -> tanh(W_a x_a) * tanh(W_b x_b)
    mlb = fu.MutanFusion([5, 6], proj_dims=(8, 8), core_dim=8, rank=1).to(device, F64)
    with torch.no_grad():
        for f in mlb.core.factors:
            f.zero_()
            f[0, :8, :] = torch.eye(8, dtype=F64)
    expected = torch.tanh(mlb.proj[0](x_a)) * torch.tanh(mlb.proj[1](x_b))
    torch.testing.assert_close(mlb(x_a, x_b), expected)


def test_mlb_is_a_rank_constrained_bilinear_form(device):
    torch.manual_seed(1)
    r, out = 4, 3
    prod = fu.ProductFusion([5, 6], r).to(device, F64)
    head = nn.Linear(r, out, bias=False).to(device, F64)
    with torch.no_grad():
        prod.proj[0].bias.zero_(), prod.proj[1].bias.zero_()
    U, V, P = prod.proj[0].weight, prod.proj[1].weight, head.weight           # (r, d_a), (r, d_b), (out, r)
    W = torch.einsum("ki,ia,ib->kab", P, U, V)                                # sum of r rank-1 terms per output
    bil = fu.BilinearFusion([5, 6], out).to(device, F64)
    with torch.no_grad():
        bil.weight.copy_(W), bil.bias.zero_()
    x_a, x_b = _inputs([5, 6], 7, device, F64)
    torch.testing.assert_close(head(prod(x_a, x_b)), bil(x_a, x_b))
    assert all(torch.linalg.matrix_rank(W[k]) <= r for k in range(out))


@pytest.mark.parametrize("s_a, s_b, alpha, expected", [
    (3.0, 1.0, 0.5, (1 - math.tanh(1.0), 1.0)),
    (1.0, 4.0, 1.0, (1.0, 1 - math.tanh(3.0))),
    (2.0, 2.0, 5.0, (1.0, 1.0)),
    (5.0, 1.0, 0.0, (1.0, 1.0)),
])
def test_ogm_ge_coefficients(s_a, s_b, alpha, expected):
    got = fu.ogm_ge_coefficients(s_a, s_b, alpha)
    assert got == pytest.approx(expected, abs=1e-12)
    paper = fu.ogm_ge_coefficients(3.0, 1.0, 0.5, shifted=False)
    assert paper == pytest.approx((1 - math.tanh(1.5), 1.0), abs=1e-12)


def _gate_table(f, n_y: int) -> torch.Tensor:
    p = torch.zeros(2, 2, n_y, dtype=F64)
    for a in (0, 1):
        for b in (0, 1):
            p[a, b, f(a, b)] += 0.25
    return p


@pytest.mark.parametrize("f, n_y, expected", [
    (lambda a, b: a, 2, dict(redundancy=0, unique_a=1, unique_b=0, synergy=0)),
    (lambda a, b: b, 2, dict(redundancy=0, unique_a=0, unique_b=1, synergy=0)),
    (lambda a, b: a ^ b, 2, dict(redundancy=0, unique_a=0, unique_b=0, synergy=1)),
    (lambda a, b: a & b, 2, dict(redundancy=0.75 * (2 - math.log2(3)),
                                 unique_a=0, unique_b=0, synergy=0.5)),
])
def test_partial_information_of_logic_gates(f, n_y, expected):
    got = fu.partial_information(_gate_table(f, n_y))
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    assert got["redundancy"] + got["unique_a"] + got["unique_b"] + got["synergy"] == pytest.approx(got["total"])


def test_partial_information_copy_and_random_tables():
    copy = torch.zeros(2, 2, 2, dtype=F64)
    copy[0, 0, 0] = copy[1, 1, 1] = 0.5
    got = fu.partial_information(copy)
    assert got["redundancy"] == pytest.approx(1) and got["synergy"] == pytest.approx(0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        p = torch.rand(3, 4, 2, generator=g, dtype=F64)
        got = fu.partial_information(p / p.sum())
        assert min(got.values()) >= -1e-12                                    # I_min: all atoms non-negative
        assert sum(got[k] for k in ("redundancy", "unique_a", "unique_b", "synergy")) == pytest.approx(got["total"])


@pytest.mark.parametrize("call, match", [
    (lambda: fu.count_sketch(torch.randn(2, 3), torch.tensor([0, 1]), torch.ones(3), 4), "h must be"),
    (lambda: fu.count_sketch(torch.randn(2, 3), torch.tensor([0, 1, 4]), torch.ones(3), 4), r"values in \[0, 4\)"),
    (lambda: fu.count_sketch(torch.randn(2, 3), torch.tensor([0, 1, 2]), torch.full((3,), 0.5), 4), "signs"),
    (lambda: fu.count_sketch(torch.randn(2, 3), torch.tensor([0, 1, 2]), torch.ones(3), 0), "sketch_dim"),
    (lambda: fu.MCBFusion([3, 4], sketch_dim=0), "sketch_dim"),
    (lambda: fu.MCBFusion([3, 4, 5]), "exactly 2"),
    (lambda: fu.MutanFusion([3, 4], proj_dims=(4,)), "proj_dims"),
    (lambda: fu.ogm_ge_coefficients(0.0, 1.0, 1.0), "positive"),
    (lambda: fu.ogm_ge_coefficients(1.0, 1.0, -1.0), "alpha"),
    (lambda: fu.partial_information(torch.ones(2, 2)), r"\(\|A\|, \|B\|, \|Y\|\)"),
    (lambda: fu.partial_information(torch.ones(2, 2, 2)), "summing to 1"),
])
def test_competition_helpers_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
