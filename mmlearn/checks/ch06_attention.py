"""Checks for the exercises of chapter 6 (notebooks/06_attention_*.ipynb)."""

from __future__ import annotations

import math

import torch

from mmlearn.checks import (
    CheckFailed,
    call_student,
    expect_close,
    expect_equal,
    expect_number,
    fresh_generator,
    register,
)

F64 = torch.float64



# ---- 06_attention_derivation --------------------------------------------------------------------

@register("ex-ch06-stable-softmax", hint="Subtract the maximum of each row before exponentiating; it cancels.")
def _check_stable_softmax(stable_softmax) -> None:
    gen = fresh_generator()
    cases = [torch.randn(3, 5, generator=gen, dtype=F64),
             torch.randn(2, 4, 6, generator=gen, dtype=F64) * 3,
             1000.0 + torch.randn(2, 7, generator=gen, dtype=F64),  # exp(1000) overflows
             -1000.0 + torch.randn(3, 4, generator=gen, dtype=F64)]  # exp(-1000) underflows to 0/0
    for case, x in enumerate(cases):
        got = call_student(stable_softmax, x.clone(), what=f"case {case}")
        if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            raise CheckFailed(f"case {case} (values around {x.mean().item():.0f}): the result contains inf or NaN")
        expect_close(got, torch.softmax(x, dim=-1), what=f"case {case}: softmax over the last axis of shape "
                     f"{tuple(x.shape)}", atol=1e-10, rtol=1e-8)


@register("ex-ch06-qk-variance", hint="Expand var(sum_i q_i k_i): the terms are independent, and "
                                      "var(q_i k_i) = E[q_i^2] E[k_i^2] when the means are 0.")
def _check_qk_variance(qk_variance) -> None:
    gen = fresh_generator()
    for case in range(5):
        d = int(torch.randint(1, 512, (1,), generator=gen))
        sq, sk = (float(v) for v in 0.2 + 2 * torch.rand(2, generator=gen))
        got = call_student(qk_variance, d, sq, sk, what=f"case {case}")
        expect_number(got, d * sq**2 * sk**2, what=f"case {case}: var(q·k) for d={d}, sigma_q={sq:.3f}, "
                      f"sigma_k={sk:.3f}", tol=1e-6 * max(1.0, d * sq**2 * sk**2))


# ---- 06_attention_transformer -------------------------------------------------------------------

@register("ex-ch06-decoder-mask", hint="Combine two boolean conditions with &: key j <= query i, and key j < length.")
def _check_decoder_mask(decoder_mask) -> None:
    gen = fresh_generator()
    for case in range(4):
        B, T = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        j = torch.arange(T)
        want = (j[None, :] <= j[:, None])[None] & (j[None, None, :] < lengths[:, None, None])
        got = call_student(decoder_mask, lengths.clone(), T, what=f"case {case}")
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
            raise CheckFailed(f"case {case}: expected a boolean tensor (True = may attend), got "
                              f"{getattr(got, 'dtype', type(got).__name__)}")
        if got.shape != want.shape:
            raise CheckFailed(f"case {case}: lengths={lengths.tolist()}, T={T}: expected shape {tuple(want.shape)}, "
                              f"got {tuple(got.shape)}")
        bad = (got != want).nonzero()
        if len(bad):
            b, i, k = (int(v) for v in bad[0])
            raise CheckFailed(f"case {case}: lengths={lengths.tolist()}, T={T}: entry [batch {b}, query {i}, key {k}] "
                              f"should be {bool(want[b, i, k])} (True = may attend)")


@register("ex-ch06-block-params", hint="Attention: 4 matrices dim x dim plus 4 bias vectors; FFN: two Linear layers; "
                                       "each LayerNorm has a weight and a bias of size dim.")
def _check_block_params(answer) -> None:
    d = 64
    expect_number(answer, (4 * d * d + 4 * d) + (2 * 4 * d * d + 4 * d + d) + 2 * 2 * d,
                  what="parameters of TransformerBlock(64, 4)", tol=0.5)


@register("ex-ch06-rope-relative", hint="R(m)^T R(n) = R(n - m): rotate k by the difference of positions only.")
def _check_rope_relative(relative_score) -> None:
    from mmlearn.attention import apply_rope

    gen = fresh_generator()
    for case in range(4):
        d = 2 * int(torch.randint(1, 6, (1,), generator=gen))
        q, k = torch.randn(2, 1, d, generator=gen, dtype=F64)
        m, n = (int(v) for v in torch.randint(0, 50, (2,), generator=gen))
        want = (apply_rope(q, torch.tensor([m])) * apply_rope(k, torch.tensor([n]))).sum()
        got = call_student(relative_score, q[0].clone(), k[0].clone(), n - m, what=f"case {case}")
        expect_close(got, want.item(), what=f"case {case}: score of q at position {m} and k at {n} (d={d})",
                     atol=1e-9, rtol=1e-7)


# ---- 06_attention_backward_flash ----------------------------------------------------------------

@register("ex-ch06-softmax-jacobian", hint="dp_i/ds_j = p_i (delta_ij - p_j): diag(p) minus an outer product.")
def _check_softmax_jacobian(softmax_jacobian) -> None:
    gen = fresh_generator()
    for case in range(4):
        n = int(torch.randint(1, 8, (1,), generator=gen))
        s = 3 * torch.randn(n, generator=gen, dtype=F64)
        want = torch.autograd.functional.jacobian(lambda z: torch.softmax(z, 0), s)
        expect_close(call_student(softmax_jacobian, s.clone(), what=f"case {case}"), want,
                     what=f"case {case}: Jacobian of softmax at a random s of size {n}", atol=1e-10, rtol=1e-8)


@register("ex-ch06-merge-stats", hint="The new max is max(m1, m2); rescale each sum to it: l1 * exp(m1 - m).")
def _check_merge_stats(merge_stats) -> None:
    gen = fresh_generator()
    for case in range(5):
        n = int(torch.randint(2, 20, (1,), generator=gen))
        x = 5 * torch.randn(n, generator=gen, dtype=F64) + (300.0 if case == 4 else 0.0)
        cut = int(torch.randint(1, n, (1,), generator=gen))
        a, b = x[:cut], x[cut:]
        m1, m2 = a.max(), b.max()
        l1, l2 = torch.exp(a - m1).sum(), torch.exp(b - m2).sum()
        got = call_student(merge_stats, m1, l1, m2, l2, what=f"case {case}")
        if not isinstance(got, tuple) or len(got) != 2:
            raise CheckFailed(f"case {case}: expected a tuple (m, l), got {type(got).__name__}")
        expect_close(got[0], x.max().item(), what=f"case {case}: merged maximum m", atol=1e-12)
        expect_close(got[1], torch.exp(x - x.max()).sum().item(), what=f"case {case}: merged sum l "
                     f"(blocks of sizes {cut} and {n - cut})", atol=1e-10, rtol=1e-9)


def _tile_grads(tile_backward, q, k, v, g, B: int, case: int) -> tuple[torch.Tensor, ...]:
    """Run the student's one-tile backward over every (query block, key block) pair and assemble dQ, dK, dV."""
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ k.T * scale
    lse = torch.logsumexp(s, dim=-1, keepdim=True)  # (L, 1)
    delta = (g * (torch.softmax(s, dim=-1) @ v)).sum(dim=-1, keepdim=True)  # (L, 1)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for i in range(0, q.shape[0], B):
        for j in range(0, k.shape[0], B):
            rows, cols = slice(i, i + B), slice(j, j + B)
            got = call_student(tile_backward, q[rows], k[cols], v[cols], g[rows], lse[rows], delta[rows],
                               what=f"case {case}")
            if not isinstance(got, tuple) or len(got) != 3:
                raise CheckFailed(f"case {case}: expected a tuple (dq_i, dk_j, dv_j), got {type(got).__name__}")
            for name, t, want in zip(("dq_i", "dk_j", "dv_j"), got, (q[rows], k[cols], v[cols])):
                if not isinstance(t, torch.Tensor) or t.shape != want.shape:
                    raise CheckFailed(f"case {case}: {name} must have shape {tuple(want.shape)}, got "
                                      f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            dq[rows] += got[0]
            dk[cols] += got[1]
            dv[cols] += got[2]
    return dq, dk, dv


@register("ex-ch06-tile-backward", hint="P = exp(q_i k_j^T / sqrt(d) - lse_i); dv_j = P^T do_i; "
                                        "dS = P * (do_i v_j^T - delta_i); then dq_i and dk_j, each with 1/sqrt(d).")
def _check_tile_backward(tile_backward) -> None:
    gen = fresh_generator()
    for case in range(3):
        L, S, d, dv_, B = (int(x) for x in torch.randint(2, 12, (5,), generator=gen))
        leaves = [torch.randn(n, m, generator=gen, dtype=F64, requires_grad=True)
                  for n, m in ((L, d), (S, d), (S, dv_))]
        g = torch.randn(L, dv_, generator=gen, dtype=F64)
        (torch.softmax(leaves[0] @ leaves[1].T / math.sqrt(d), dim=-1) @ leaves[2]).backward(g)
        got = _tile_grads(tile_backward, *(t.detach() for t in leaves), g, B, case)
        for name, ours, leaf in zip(("dQ", "dK", "dV"), got, leaves):
            expect_close(ours, leaf.grad, what=f"case {case}: {name} summed over tiles of {B} (L={L}, S={S}, d={d})",
                         atol=1e-10, rtol=1e-8)


@register("ex-ch06-flash-block-size", hint="Measure flash_attention(q, k, v, block_size=B) followed by .backward(g) "
                                            "inside measure_peak_memory, with L = 512, d = 64, float32, 2-D tensors.")
def _check_flash_block_size(peak_by_block) -> None:
    from mmlearn.attention import flash_attention, measure_peak_memory

    if not isinstance(peak_by_block, dict) or sorted(peak_by_block) != [16, 64, 256]:
        raise CheckFailed(f"expected a dict with the keys 16, 64, 256 (block sizes), got {peak_by_block!r}")
    for B in (16, 256):
        q, k, v = (torch.randn(512, 64, requires_grad=True) for _ in range(3))
        g = torch.randn(512, 64)
        want = measure_peak_memory(lambda: flash_attention(q, k, v, block_size=B).backward(g))[1]  # noqa: B023
        expect_number(peak_by_block[B], want, what=f"peak bytes of forward + backward with block_size={B}",
                      tol=0.1 * want)


@register("ex-ch06-fast-path-time", hint="Set block.need_weights on every block of encoder.blocks, then time "
                                          "encoder(x).square().mean().backward() with time.perf_counter().")
def _check_fast_path_time(train_step_seconds) -> None:
    from mmlearn.attention import TransformerEncoder

    gen = fresh_generator()
    encoder = TransformerEncoder(8, 2, 2)
    x = torch.randn(2, 5, 8, generator=gen)
    for need_weights in (True, False, True):
        encoder.zero_grad()
        got = call_student(train_step_seconds, encoder, x, need_weights, what=f"need_weights={need_weights}")
        if not isinstance(got, float) or not math.isfinite(got) or got <= 0:
            raise CheckFailed(f"need_weights={need_weights}: expected a positive float (seconds), got {got!r}")
        if any(b.need_weights != need_weights for b in encoder.blocks):
            raise CheckFailed(f"need_weights={need_weights}: every block's need_weights must be set to it")
        if any((b.attn_weights is None) == need_weights for b in encoder.blocks):
            raise CheckFailed(f"need_weights={need_weights}: the blocks' attn_weights show that the forward pass "
                              "did not run on this path (run encoder(x) after setting the flag)")
        if any(p.grad is None or not p.grad.abs().sum() > 0 for p in encoder.blocks[0].attn.parameters()):
            raise CheckFailed(f"need_weights={need_weights}: no gradient reached the attention parameters: "
                              "call .backward() on encoder(x).square().mean()")


# ---- 06_attention_cross -------------------------------------------------------------------------

@register("ex-ch06-cross-count", hint="Each head has one weight per (query, key) pair.")
def _check_cross_count(answer) -> None:
    expect_equal(answer, 4 * 12 * 64, what="number of attention weights (4 heads, 12 tokens, 8 x 8 patches)")


@register("ex-ch06-cross-attention", hint="Project: q = text @ W_q, k = patches @ W_k, v = patches @ W_v; then "
                                          "softmax(q k^T / sqrt(d)) v.")
def _check_cross_attention(cross_attention) -> None:
    gen = fresh_generator()
    for case in range(4):
        B, L, S, d_t, d_i, d = (int(v) for v in torch.randint(1, 9, (6,), generator=gen))
        text = torch.randn(B, L, d_t, generator=gen, dtype=F64)
        patches = torch.randn(B, S, d_i, generator=gen, dtype=F64)
        W_q = torch.randn(d_t, d, generator=gen, dtype=F64)
        W_k, W_v = torch.randn(2, d_i, d, generator=gen, dtype=F64)
        scores = (text @ W_q) @ (patches @ W_k).transpose(-2, -1) / math.sqrt(d)
        weights = torch.softmax(scores, dim=-1)
        got = call_student(cross_attention, text, patches, W_q, W_k, W_v, what=f"case {case}")
        if not isinstance(got, tuple) or len(got) != 2:
            raise CheckFailed(f"case {case}: expected a tuple (out, weights), got {type(got).__name__}")
        where = f"case {case}: text {tuple(text.shape)}, patches {tuple(patches.shape)}, d={d}"
        expect_close(got[1], weights, what=f"{where}: weights", atol=1e-10, rtol=1e-8)
        expect_close(got[0], weights @ (patches @ W_v), what=f"{where}: out", atol=1e-10, rtol=1e-8)


@register("ex-ch06-effective-keys", hint="exp of the entropy -sum w log w over the last dimension; "
                                         "torch.special.xlogy(w, w) handles w = 0.")
def _check_perplexity(perplexity) -> None:
    gen = fresh_generator()
    uniform = torch.full((3, 5), 0.2, dtype=torch.float64)
    expect_close(perplexity(uniform), torch.full((3,), 5.0, dtype=torch.float64), what="uniform on 5 keys",
                 atol=1e-10)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    got = perplexity(one_hot)
    if torch.isnan(torch.as_tensor(got)).any():
        raise CheckFailed("a one-hot row gives nan: use the convention 0 log 0 = 0 (torch.special.xlogy)")
    expect_close(got, torch.ones(1, dtype=torch.float64), what="one-hot row", atol=1e-10)
    w = torch.softmax(torch.randn(2, 4, 7, generator=gen, dtype=torch.float64), -1)
    expect_close(perplexity(w), torch.exp(-(w * w.log()).sum(-1)), what="random rows of shape (2, 4, 7)", atol=1e-10)


def _reference_entropy_gap(maps: torch.Tensor) -> torch.Tensor:
    def ent(p: torch.Tensor) -> torch.Tensor:
        return -torch.special.xlogy(p, p).sum(-1)

    return ent(maps.mean(-2)) - ent(maps).mean(-1)


@register("ex-ch06-average-blurs", hint="G = H(mean of the maps over the head axis -2) - mean of the heads' H; "
                                        "torch.special.xlogy(p, p) is p log p with 0 log 0 = 0.")
def _check_entropy_gap(entropy_gap) -> None:
    gen = fresh_generator()
    disjoint = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.3, 0.7]], dtype=F64)
    got = call_student(entropy_gap, disjoint.clone(), what="two heads on disjoint keys")
    if torch.isnan(torch.as_tensor(got)).any():
        raise CheckFailed("maps with zero weights give nan: use the convention 0 log 0 = 0 (torch.special.xlogy)")
    expect_close(got, torch.tensor(math.log(2), dtype=F64), what="two heads on disjoint keys (G = log 2)",
                 atol=1e-10)
    same = torch.softmax(torch.randn(1, 6, generator=gen, dtype=F64), -1).expand(3, 6)
    expect_close(call_student(entropy_gap, same.clone(), what="three equal heads"), torch.tensor(0.0, dtype=F64),
                 what="three heads with the same map (G = 0)", atol=1e-10)
    for case, shape in enumerate([(4, 2, 9), (2, 3, 5, 7)]):
        maps = torch.softmax(3 * torch.randn(shape, generator=gen, dtype=F64), -1)
        expect_close(call_student(entropy_gap, maps.clone(), what=f"case {case}"), _reference_entropy_gap(maps),
                     what=f"case {case}: maps of shape {shape} (..., H, S)", atol=1e-10, rtol=1e-8)


def _reference_unassigned_loss(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    same = ((pos - target) ** 2).sum(-1).mean(-1)
    swapped = ((pos - target.flip(1)) ** 2).sum(-1).mean(-1)
    return torch.minimum(same, swapped).mean()


@register("ex-ch06-unassigned-heads", hint="For each sample: (1/2)(|o1-y1|² + |o2-y2|²) and the same with y1, y2 "
                                           "swapped; take the smaller, then the mean over the batch.")
def _check_unassigned_loss(unassigned_loss) -> None:
    gen = fresh_generator()
    for case, B in enumerate((1, 5, 16)):
        pos = torch.rand(B, 2, 2, generator=gen, dtype=F64)
        target = torch.rand(B, 2, 2, generator=gen, dtype=F64)
        maps = torch.softmax(torch.randn(B, 2, 64, generator=gen, dtype=F64), -1)
        got = call_student(unassigned_loss, (pos.clone(), maps), target.clone(), what=f"case {case}")
        expect_close(got, _reference_unassigned_loss(pos, target), what=f"case {case}: batch of {B}",
                     atol=1e-10, rtol=1e-8)
        swapped = call_student(unassigned_loss, (pos.flip(1), maps.flip(1)), target.clone(), what=f"case {case}")
        expect_close(swapped, got, what=f"case {case}: the same with the two heads swapped (must not change)",
                     atol=1e-10, rtol=1e-8)
