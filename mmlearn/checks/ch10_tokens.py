"""Checks for the exercises of chapter 10, image tokens (notebooks/10_generation_vqvae.ipynb and
notebooks/10_generation_tokens.ipynb)."""

from __future__ import annotations

import math
import numbers

import torch

from mmlearn.checks import CheckFailed, call_student, expect_close, fresh_generator, register

F64 = torch.float64


def _reference_kmeans_step(z: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    out = codebook.clone()
    for k in range(len(codebook)):
        members = z[codes == k]
        if len(members):
            out[k] = members.mean(0)
    return out


@register("ex-ch10-kmeans-step", hint="Sum the vectors assigned to each code (index_add_) and divide by how many "
                                      "there are (bincount); leave codes with no vectors where they were.")
def _check_kmeans_step(kmeans_step) -> None:
    gen = fresh_generator()
    for case in range(5):
        N, D, K = (int(v) for v in torch.randint(1, 40, (3,), generator=gen))
        z = torch.randn(N, D, generator=gen, dtype=F64)
        codebook = torch.randn(K, D, generator=gen, dtype=F64)
        codes = torch.randint(0, K, (N,), generator=gen)
        got = call_student(kmeans_step, z.clone(), codes.clone(), codebook.clone(), what=f"case {case}")
        expect_close(got, _reference_kmeans_step(z, codes, codebook),
                     what=f"case {case}: N = {N} vectors, K = {K} codes (some may be unused)", atol=1e-10, rtol=1e-10)


@register("ex-ch10-vq-perplexity", hint="p_k = bincount(codes, minlength=K) / number of codes; skip p_k = 0 "
                                        "in the entropy; return exp(entropy).")
def _check_perplexity(perplexity) -> None:
    gen = fresh_generator()
    cases = [(torch.arange(8), 8), (torch.zeros(3, 4, dtype=torch.long), 5)]
    for _ in range(4):
        K = int(torch.randint(2, 30, (1,), generator=gen))
        cases.append((torch.randint(0, K, tuple(int(s) for s in torch.randint(1, 6, (2,), generator=gen)),
                                    generator=gen), K))
    for case, (codes, K) in enumerate(cases):
        p = torch.bincount(codes.flatten(), minlength=K).double() / codes.numel()
        p = p[p > 0]
        expected = float(torch.exp(-(p * p.log()).sum()))
        got = call_student(perplexity, codes.clone(), K, what=f"case {case}")
        got = float(got) if isinstance(got, (numbers.Real, torch.Tensor)) else got
        if not isinstance(got, float) or not math.isclose(got, expected, rel_tol=1e-6):
            raise CheckFailed(f"case {case}: codes of shape {tuple(codes.shape)}, K = {K}: expected {expected:.6g}, "
                              f"got {got!r}")


@register("ex-ch10-codebook-size", hint="used = K - codebook_stats(codes, K)['dead'] for each K.")
def _check_codebook_size(used) -> None:
    Ks = (8, 32, 128)
    if not isinstance(used, (list, tuple)) or len(used) != len(Ks):
        raise CheckFailed(f"expected a list of {len(Ks)} numbers (one per K in {Ks}), got {used!r}")
    for K, u in zip(Ks, used):
        if not isinstance(u, numbers.Integral) or not 1 <= u <= K:
            raise CheckFailed(f"for K = {K} the number of used codes must be an integer in [1, {K}], got {u!r}")


def _reference_image_nll(model, vocab, caption: str, codes: torch.Tensor) -> float:
    ids = vocab.text_to_image([caption], codes)                     # (1, seq_len)
    logp = model(ids[:, :-1]).log_softmax(-1)[0]                    # (seq_len - 1, V)
    start = vocab.max_words                                         # the <image> position
    return -sum(float(logp[start + m, ids[0, start + 1 + m]]) for m in range(vocab.num_image_tokens))


@register("ex-ch10-image-nll", hint="The logits at the <image> position predict the first code; sum the log-"
                                    "probabilities of the M codes, each read at the position just before it.")
def _check_image_nll(image_nll) -> None:
    from mmlearn.data import make_shapes
    from mmlearn.generation.tokens import SharedVocab, TokenTransformer
    gen = fresh_generator()
    seed = int(torch.randint(0, 10_000, (1,), generator=gen))
    batch = make_shapes(30, seed=seed)
    for case, grid in enumerate([(2, 2), (3, 4)]):
        vocab = SharedVocab(batch.captions, num_codes=7, grid=grid)
        torch.manual_seed(seed + case)
        model = TokenTransformer(len(vocab), dim=16, depth=1, num_heads=2, max_len=vocab.seq_len).double().eval()
        caption, codes = batch.captions[case], torch.randint(0, 7, (1, *grid), generator=gen)
        with torch.no_grad():
            expected = _reference_image_nll(model, vocab, caption, codes)
            got = call_student(image_nll, model, vocab, caption, codes.clone(), what=f"case {case}")
        got = float(got) if isinstance(got, (numbers.Real, torch.Tensor)) else got
        if not isinstance(got, float) or not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-8):
            raise CheckFailed(f"case {case}: caption {caption!r}, a {grid[0]}×{grid[1]} grid of codes: expected "
                              f"-log p(codes | caption) = {expected:.6g}, got {got!r}")


@register("ex-ch10-top-k", hint="Set every logit below the k-th largest to -inf, divide by the temperature, softmax.")
def _check_top_k(top_k_distribution) -> None:
    gen = fresh_generator()
    for case in range(5):
        B, V = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(2, 30, (1,), generator=gen))
        k = int(torch.randint(1, V + 1, (1,), generator=gen))
        tau = float(torch.empty(1).uniform_(0.2, 3.0, generator=gen))
        logits = torch.randn(B, V, generator=gen, dtype=F64)
        kth = logits.topk(k, dim=1).values[:, -1:]
        expected = torch.softmax((logits / tau).masked_fill(logits < kth, -torch.inf), 1)
        got = call_student(top_k_distribution, logits.clone(), k, tau, what=f"case {case}")
        expect_close(got, expected, what=f"case {case}: logits {B}×{V}, k = {k}, temperature {tau:.2f}",
                     atol=1e-10, rtol=1e-8)


@register("ex-ch10-token-cost", hint="seconds = a list of three positive times, one per sequence length.")
def _check_token_cost(seconds) -> None:
    if not isinstance(seconds, (list, tuple)) or len(seconds) != 3:
        raise CheckFailed(f"expected a list of 3 times (one per length 64, 256, 1024), got {seconds!r}")
    if not all(isinstance(s, numbers.Real) and 0 < s < 600 for s in seconds):
        raise CheckFailed(f"each time must be a positive number of seconds, got {list(seconds)}")
    if seconds[2] <= seconds[0]:
        raise CheckFailed(f"a sequence 16 times longer cannot be faster: got {seconds[0]:.4g} s for T = 64 and "
                          f"{seconds[2]:.4g} s for T = 1024 — did you time the right thing?")
