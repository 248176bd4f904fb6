"""Checks for the exercises of chapter 7 (notebooks/07_multimodal_transformers_*.ipynb)."""

from __future__ import annotations

import math
from collections import Counter

import torch

from mmlearn.checks import CheckFailed, call_student, expect_close, expect_number, fresh_generator, register

F64 = torch.float64



def _randint(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=gen))


# ---- 07_multimodal_transformers_vit ------------------------------------------------------------

@register("ex-ch07-resize-pos", hint="Make the embeddings a (1, d, g, g) image (features as channels, grid row by "
                                     "row), interpolate bilinearly with align_corners=False, and undo the reshapes.")
def _check_resize_pos(resize_positions) -> None:
    import torch.nn.functional as F

    gen = fresh_generator()
    for case in range(4):
        g, G, d = _randint(gen, 2, 5), _randint(gen, 2, 9), _randint(gen, 1, 6)
        pos = torch.randn(g * g, d, generator=gen, dtype=F64)
        want = F.interpolate(pos.T.reshape(1, d, g, g), size=(G, G), mode="bilinear",
                             align_corners=False).reshape(d, G * G).T
        got = call_student(resize_positions, pos.clone(), G, what=f"case {case}")
        expect_close(got, want, what=f"case {case}: {g}x{g} grid of {d}-dim embeddings resized to {G}x{G}",
                     atol=1e-10, rtol=1e-8)


@register("ex-ch07-vit-scores", hint="Count the tokens first: (224 / 16)² patches plus one [CLS] token. "
                                     "Every token scores every token.")
def _check_vit_scores(answer) -> None:
    expect_number(answer, (14 * 14 + 1) ** 2, what="attention scores per head and layer", tol=0.5)


# ---- 07_multimodal_transformers_clip -----------------------------------------------------------

@register("ex-ch07-clip-loss", hint="Normalise both sets of rows, multiply by exp(logit_scale) (it is a LOG), and "
                                    "average the cross-entropy of the rows and of the columns with targets 0..N-1.")
def _check_clip_loss(clip_loss) -> None:
    from mmlearn.losses import clip_loss as reference

    gen = fresh_generator()
    for case in range(4):
        n, d = _randint(gen, 2, 9), _randint(gen, 2, 8)
        img, txt = 3 * torch.randn(n, d, generator=gen, dtype=F64), torch.randn(n, d, generator=gen, dtype=F64)
        s = float(torch.empty(1, dtype=F64).uniform_(0.0, 4.6, generator=gen))
        got = call_student(clip_loss, img.clone(), txt.clone(), torch.tensor(s, dtype=F64), what=f"case {case}")
        want = reference(img, txt, torch.tensor(s, dtype=F64))
        if isinstance(got, torch.Tensor) and got.numel() == 1 and abs(float(got) - float(want)) > 1e-6:
            wrong_scale = reference(img, txt, torch.tensor(math.log(s), dtype=F64)) if s > 0 else None
            if wrong_scale is not None and abs(float(got) - float(wrong_scale)) < 1e-6:
                raise CheckFailed(f"case {case}: logit_scale = {s:.3f} is the LOG of the multiplier: "
                                  f"multiply by exp(logit_scale), not by logit_scale")
        expect_close(got, want, what=f"case {case}: N={n}, d={d}, logit_scale={s:.3f}", atol=1e-8, rtol=1e-6)


@register("ex-ch07-loss-floor", hint="Count how often each caption occurs in the batch (collections.Counter); "
                                     "pair i contributes log(multiplicity of its caption).")
def _check_loss_floor(loss_floor) -> None:
    gen = fresh_generator()
    words = ["a red circle", "a blue square", "a green triangle", "a small red circle", "a yellow square"]
    for case in range(5):
        n = _randint(gen, 1, 30)
        captions = [words[int(i)] for i in torch.randint(0, _randint(gen, 1, len(words)), (n,), generator=gen)]
        counts = Counter(captions)
        want = sum(math.log(counts[c]) for c in captions) / n
        got = call_student(loss_floor, list(captions), what=f"case {case}")
        expect_number(got, want, what=f"case {case}: floor for {n} captions with multiplicities "
                      f"{sorted(counts.values(), reverse=True)}", tol=1e-9)


# ---- 07_multimodal_transformers_captioning -----------------------------------------------------

@register("ex-ch07-beam-step", hint="Add each beam's score to its log-probabilities and flatten the (k, V) candidates "
                                    "of each image; the flat index of a winner holds its prefix and its word "
                                    "(integer division and remainder by V).")
def _check_beam_step(beam_step) -> None:
    gen = fresh_generator()
    for case in range(4):
        B, k, V = _randint(gen, 1, 3), _randint(gen, 1, 4), _randint(gen, 4, 9)
        scores = -5 * torch.rand(B, k, generator=gen, dtype=F64)
        log_probs = torch.log_softmax(torch.randn(B, k, V, generator=gen, dtype=F64), dim=-1)
        got = call_student(beam_step, scores.clone(), log_probs.clone(), k, what=f"case {case}")
        if not (isinstance(got, tuple) and len(got) == 3):
            raise CheckFailed(f"case {case}: expected a tuple (new_scores, parent, token), got {type(got).__name__}")
        new_scores, idx = (scores[:, :, None] + log_probs).view(B, k * V).topk(k, dim=1)
        what = f"case {case} (B={B}, k={k}, V={V})"
        expect_close(got[0], new_scores, what=f"{what}: new_scores (best first)", atol=1e-10)
        for name, want, have in (("parent", idx // V, got[1]), ("token", idx % V, got[2])):
            if not isinstance(have, torch.Tensor) or have.shape != want.shape or not torch.equal(have.long(), want):
                shown = have[0].tolist() if isinstance(have, torch.Tensor) and have.ndim == 2 else have
                raise CheckFailed(f"{what}: {name} should be a (B, k) integer tensor; first expected row "
                                  f"{want[0].tolist()}, got {shown}")


@register("ex-ch07-bleu2", hint="Count matching unigrams and bigrams (clipped), divide by the candidate's counts, "
                                "take the geometric mean; here c = r, so BP = exp(1 - r/c) = 1.")
def _check_bleu2(answer) -> None:
    expect_number(answer, math.sqrt(8 / 9 * 6 / 8), what="BLEU-2 of the candidate", tol=5e-4)


# ---- 07_multimodal_transformers_vlm ------------------------------------------------------------

@register("ex-ch07-prefix-mask", hint="Start from the causal lower triangle, then open the prefix's columns to "
                                      "every query.")
def _check_prefix_mask(prefix_lm_mask) -> None:
    gen = fresh_generator()
    for case in range(5):
        T = _randint(gen, 1, 9)
        n = _randint(gen, 0, T)
        want = torch.ones(T, T, dtype=torch.bool).tril()
        want[:, :n] = True
        got = call_student(prefix_lm_mask, n, T, what=f"case {case}")
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or got.shape != want.shape:
            raise CheckFailed(f"case {case}: expected a boolean ({T}, {T}) tensor (True = may attend), got "
                              f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}"
                              f"{' ' + str(got.dtype) if isinstance(got, torch.Tensor) else ''}")
        bad = (got != want).nonzero()
        if len(bad):
            i, j = (int(v) for v in bad[0])
            raise CheckFailed(f"case {case}: n_prefix={n}, T={T}: entry [query {i}, key {j}] should be "
                              f"{bool(want[i, j])}")


@register("ex-ch07-llava-tokens", hint="A ViT-L/14 cuts a 336 × 336 image into 14 × 14 patches; LLaVA's projector "
                                       "maps each patch token (not the [CLS] token) to one LM token.")
def _check_llava_tokens(answer) -> None:
    expect_number(answer, (336 // 14) ** 2, what="image tokens LLaVA-1.5 adds to the prompt", tol=0.5)


@register("ex-ch07-flamingo-cost", hint="LLaVA: one self-attention over S + T tokens, (S + T)^2 scores. "
                                       "Flamingo: text self-attention (T^2) plus cross-attention to the image (T S).")
def _check_flamingo_cost(answer) -> None:
    expect_number(answer, (576 + 100) ** 2 / (100 ** 2 + 100 * 576), what="ratio of attention scores, LLaVA / Flamingo",
                  tol=0.01)


# ---- 07_multimodal_transformers_siglip ---------------------------------------------------------

@register("ex-ch07-siglip-loss", hint="Normalise the rows, logits = exp(logit_scale) * x @ y.T + logit_bias, labels "
                                      "+1 on the diagonal and -1 elsewhere; -logsigmoid(labels * logits).sum() / N.")
def _check_siglip_loss(siglip_loss) -> None:
    from mmlearn.losses import siglip_loss as reference

    gen = fresh_generator()
    for case in range(5):
        n, d = _randint(gen, 1, 9), _randint(gen, 2, 8)
        img, txt = 3 * torch.randn(n, d, generator=gen, dtype=F64), torch.randn(n, d, generator=gen, dtype=F64)
        s = float(torch.empty(1, dtype=F64).uniform_(0.0, 4.6, generator=gen))
        b = float(torch.empty(1, dtype=F64).uniform_(-12.0, 2.0, generator=gen))
        if case == 4:
            s, b = math.log(1000.0), 0.0                                           # logits of +-1000
        got = call_student(siglip_loss, img.clone(), txt.clone(), torch.tensor(s, dtype=F64),
                           torch.tensor(b, dtype=F64), what=f"case {case}")
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not torch.isfinite(got).all():
            raise CheckFailed(f"case {case} (logits up to ±{math.exp(s):.0f}): the loss is not finite; "
                              "log(sigmoid(u)) underflows — use a stable log-sigmoid")
        want = reference(img, txt, torch.tensor(s, dtype=F64), torch.tensor(b, dtype=F64))
        expect_close(got, want, what=f"case {case}: N = {n}, d = {d}, s = {s:.2f}, b = {b:.2f}",
                     atol=1e-8, rtol=1e-8)


@register("ex-ch07-siglip-bias", hint="With every logit equal to b, set the derivative of -log σ(b) - (N-1) log σ(-b) "
                                      "to zero: σ(b) = 1/N.")
def _check_siglip_bias(answer) -> None:
    expect_number(answer, -math.log(32767), what="the best starting bias for N = 32768", tol=0.01)


@register("ex-ch07-siglip-floor", hint="For each caption count m (collections.Counter) add m log m - (m-1) log(m-1), "
                                       "with 0 log 0 = 0, and divide by the batch size.")
def _check_siglip_floor(floor_sigmoid) -> None:
    gen = fresh_generator()
    words = ["a red circle", "a blue square", "a small green triangle", "a large yellow circle"]
    cases = [["x"] * 5, ["a", "b", "c"]]
    for _ in range(3):
        n = _randint(gen, 1, 12)
        cases.append([words[_randint(gen, 0, len(words) - 1)] for _ in range(n)])
    for case, caps in enumerate(cases):
        counts = Counter(caps)
        want = sum(counts[c] * math.log(counts[c]) - (counts[c] - 1) * math.log(max(counts[c] - 1, 1))
                   for c in caps) / len(caps)
        got = call_student(floor_sigmoid, list(caps), what=f"case {case}")
        expect_number(got, want, what=f"case {case}: the floor for a batch of {len(caps)} captions "
                                      f"with counts {sorted(counts.values(), reverse=True)}", tol=1e-9)


# ---- 07_multimodal_transformers_resamplers -----------------------------------------------------

@register("ex-ch07-pope-metrics", hint="Count true positives (said yes, is yes), the yes answers and the actual yeses; "
                                       "precision = tp / yes answers, recall = tp / actual yeses.")
def _check_pope_metrics(pope_metrics) -> None:
    gen = fresh_generator()
    cases = [(["yes"] * 4, ["yes", "no", "yes", "no"]), (["no"] * 4, ["yes", "no", "yes", "no"])]
    for _ in range(3):
        n = _randint(gen, 2, 12)
        flips = (torch.rand(2, n, generator=gen) < 0.5).tolist()
        cases.append(tuple(["yes" if v else "no" for v in row] for row in flips))
    for case, (pred, truth) in enumerate(cases):
        tp = sum(p == "yes" and t == "yes" for p, t in zip(pred, truth))
        said, real = pred.count("yes"), truth.count("yes")
        prec, rec = (tp / said if said else 0.0), (tp / real if real else 0.0)
        want = {"accuracy": sum(p == t for p, t in zip(pred, truth)) / len(truth), "precision": prec, "recall": rec,
                "F1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "yes-rate": said / len(pred)}
        got = call_student(pope_metrics, list(pred), list(truth), what=f"case {case}")
        if not isinstance(got, dict):
            raise CheckFailed(f"case {case}: expected a dict with keys {sorted(want)}, got {type(got).__name__}")
        for key, value in want.items():
            if key not in got:
                raise CheckFailed(f"case {case}: the dict has no key {key!r}")
            expect_number(got[key], value, what=f"case {case} ({len(pred)} answers): {key}", tol=1e-9)


@register("ex-ch07-pope-always-yes", hint="Balanced: n positives, n negatives. All yes: recall 1, precision 1/2; "
                                          "F1 is their harmonic mean.")
def _check_pope_always_yes(answer) -> None:
    expect_number(answer, 2 / 3, what="F1 of the always-yes model on a balanced set", tol=1e-3)


@register("ex-ch07-resampler-cost", hint="Full attention over S tokens has S² scores: S = 576 + 100 for LLaVA-1.5, "
                                         "64 + 100 with the resampler.")
def _check_resampler_cost(answer) -> None:
    expect_number(answer, (576 + 100) ** 2 / (64 + 100) ** 2, what="ratio of attention scores", tol=0.01)


@register("ex-ch07-probe-heldout", hint="nn.Linear(x.shape[1], num_classes); Adam on F.cross_entropy(probe(x), y) "
                                        "for `steps` full-batch steps; return the layer.")
def _check_linear_probe(fit_linear_probe) -> None:
    gen = fresh_generator()
    centres = 4 * torch.eye(4, 6)[torch.randperm(4, generator=gen)]            # well separated by construction
    y = torch.randint(0, 4, (400,), generator=gen)
    x = centres[y] + torch.randn(400, 6, generator=gen)
    torch.manual_seed(0)
    probe = call_student(fit_linear_probe, x[:300], y[:300], 4, what="fit_linear_probe(x, y, 4)")
    if not isinstance(probe, torch.nn.Module):
        raise CheckFailed(f"expected the trained nn.Linear, got {type(probe).__name__}")
    with torch.no_grad():
        acc = (probe(x[300:]).argmax(-1) == y[300:]).float().mean().item()
    if acc < 0.9:
        raise CheckFailed(f"on four well-separated Gaussian classes the probe reaches only {acc:.2f} on held-out "
                          "points (expected > 0.9): is it trained, on the cross-entropy, for enough steps?")


# ---- 07_multimodal_transformers_vit: more exercises ----------------------------------------------

@register("ex-ch07-permute-patches", hint="patchify -> (B, N, C·p·p); index the N axis with perm; fold back with "
                                          "F.fold (or view/permute the (H/p, W/p, C, p, p) grid).")
def _check_permute_patches(permute_patches) -> None:
    import torch.nn.functional as F

    gen = fresh_generator()
    for case in range(4):
        p, gh, gw, c, b = _randint(gen, 1, 4), _randint(gen, 1, 4), _randint(gen, 1, 4), _randint(gen, 1, 3), 2
        x = torch.randn(b, c, gh * p, gw * p, generator=gen, dtype=F64)
        perm = torch.randperm(gh * gw, generator=gen)
        cols = F.unfold(x, p, stride=p)[:, :, perm]                                # (B, C·p·p, N), reordered
        want = F.fold(cols, (gh * p, gw * p), p, stride=p)
        got = call_student(permute_patches, x.clone(), p, perm.clone(), what=f"case {case}")
        expect_close(got, want, what=f"case {case}: {b}x{c}x{gh * p}x{gw * p} images, {p}x{p} patches, "
                                     f"perm {perm.tolist()}", atol=1e-12, rtol=0)


@register("ex-ch07-object-patches", hint="Pixel mask: max over the colour channels > threshold; a patch overlaps an "
                                         "object if any of its pixels does (a p x p max-pool with stride p).")
def _check_object_patches(object_patches) -> None:
    gen = fresh_generator()
    for case in range(4):
        p, g, b = _randint(gen, 1, 4), _randint(gen, 1, 4), _randint(gen, 1, 3)
        x = (torch.rand(b, 3, g * p, g * p, generator=gen) < 0.05).float() * torch.rand(b, 3, g * p, g * p,
                                                                                          generator=gen)
        pix = x.amax(1) > 0.05                                                      # (B, H, W)
        want = pix.view(b, g, p, g, p).any(4).any(2).flatten(1)                     # (B, g*g), row by row
        got = call_student(object_patches, x.clone(), p, what=f"case {case}")
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise CheckFailed(f"case {case}: expected a (B, N) = {tuple(want.shape)} tensor, got "
                              f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        wrong = (got.bool() != want).nonzero()
        if len(wrong):
            i, n = wrong[0].tolist()
            raise CheckFailed(f"case {case} ({p}x{p} patches on a {g}x{g} grid): image {i}, patch {n} should be "
                              f"{bool(want[i, n])}, got {bool(got[i, n])} ({len(wrong)} patches wrong)")


# ---- 07_multimodal_transformers_vit_analysis ------------------------------------------------------

@register("ex-ch07-flops-growth", hint="Tokens T = (224/p)² + 1 for p = 16 and p = 8; the two attention products "
                                       "cost 4 T² d each layer, so the ratio is (T_8 / T_16)².")
def _check_flops_growth(answer) -> None:
    expect_number(answer, (28 ** 2 + 1) ** 2 / (14 ** 2 + 1) ** 2,
                  what="attention FLOPs at p = 8 divided by those at p = 16 (224 x 224, with [CLS])", tol=0.01)


@register("ex-ch07-sincos-dot", hint="Each half contributes Σ_i [sin(aω_i) sin(bω_i) + cos(aω_i) cos(bω_i)] = "
                                     "Σ_i cos((a - b) ω_i), ω_i = base^(-4i/dim), i < dim/4.")
def _check_sincos_dot(sincos_dot) -> None:
    from mmlearn.models import sincos_positions_2d

    gen = fresh_generator()
    for case in range(5):
        h, w, dim = _randint(gen, 1, 6), _randint(gen, 1, 6), 4 * _randint(gen, 1, 6)
        P = sincos_positions_2d(h, w, dim, dtype=F64)
        n, m = _randint(gen, 0, h * w - 1), _randint(gen, 0, h * w - 1)
        dr, dc = n // w - m // w, n % w - m % w
        got = call_student(sincos_dot, dr, dc, dim, what=f"case {case}")
        expect_close(got, float(P[n] @ P[m]), what=f"case {case}: offset (Δr, Δc) = ({dr}, {dc}), dim {dim}",
                     atol=1e-9, rtol=1e-9)


@register("ex-ch07-vit-flops", hint="T = (image_size/patch_size)² + 1. Attention: Q K^T and A V, 2 T² d each. "
                                    "Linear: Q, K, V, output projections 4 · 2 T d²; MLP 2 · 2 T d (r d).")
def _check_vit_flops(vit_flops) -> None:
    gen = fresh_generator()
    for case in range(5):
        p = _randint(gen, 1, 8)
        size, dim, ratio = p * _randint(gen, 1, 8), 4 * _randint(gen, 1, 32), float(_randint(gen, 1, 4))
        T = (size // p) ** 2 + 1
        want = {"attention": 4 * T * T * dim, "linear": 8 * T * dim ** 2 + 4 * ratio * T * dim ** 2}
        got = call_student(vit_flops, size, p, dim, ratio, what=f"case {case}")
        if not isinstance(got, dict) or set(got) != set(want):
            raise CheckFailed(f"case {case}: expected a dict with keys {sorted(want)}, got {got!r}")
        for key, value in want.items():
            expect_close(got[key], value, what=f"case {case} (image {size}, patch {p}, dim {dim}, mlp_ratio "
                                              f"{ratio:g}): {key} FLOPs of one layer", atol=0.5, rtol=1e-9)


# ---- 07_multimodal_transformers_decoding -------------------------------------------------------

@register("ex-ch07-lp-tie", hint="The long caption wins when -2.6 / lp(10) > -2.0 / lp(5), i.e. when "
                                 "(15/10)^alpha > 2.6/2.0; solve for alpha with logarithms.")
def _check_lp_tie(answer) -> None:
    expect_number(answer, math.log(2.6 / 2.0) / math.log(15 / 10), what="the smallest alpha at which the "
                  "nine-word caption wins", tol=1e-3)


@register("ex-ch07-nucleus-size", hint="Add the probabilities in decreasing order and stop at the first "
                                       "partial sum that reaches p.")
def _check_nucleus_size(answer) -> None:
    expect_number(answer, 3, what="the number of words in the nucleus for p = 0.8", tol=0)


@register("ex-ch07-mix-inputs", hint="Draw one uniform number per position; keep the gold token where it is below "
                                     "eps and always at position 0 (<bos>); torch.where picks the rest.")
def _check_mix_inputs(mix_inputs) -> None:
    from mmlearn.checks import expect_value_error

    gen = fresh_generator()
    B, T = _randint(gen, 2, 6), _randint(gen, 3, 9)
    gold = torch.randint(4, 20, (B, T), generator=gen)
    gold[:, 0] = 2
    pred = (gold + torch.randint(1, 5, (B, T), generator=gen)) % 20     # differs from gold everywhere
    for eps, want in ((1.0, gold), (0.0, torch.cat([gold[:, :1], pred[:, 1:]], 1))):
        got = call_student(mix_inputs, gold.clone(), pred.clone(), eps, None, what=f"eps = {eps}")
        if not isinstance(got, torch.Tensor) or got.shape != gold.shape:
            raise CheckFailed(f"eps = {eps}: expected a tensor of shape {tuple(gold.shape)}, got {got!r:.60}")
        if not torch.equal(got, want):
            raise CheckFailed(f"eps = {eps}: expected {'the gold tokens' if eps else '<bos>, then the predictions'} "
                              f"everywhere; {int((got != want).sum())} of {got.numel()} positions differ")
    big_gold = torch.randint(4, 20, (200, 50), generator=gen)
    big_pred = (big_gold + 1) % 20
    got = call_student(mix_inputs, big_gold, big_pred, 0.3, torch.Generator().manual_seed(1), what="eps = 0.3")
    share = (got[:, 1:] == big_gold[:, 1:]).double().mean().item()
    se = math.sqrt(0.3 * 0.7 / (200 * 49))
    if abs(share - 0.3) > 5 * se:
        raise CheckFailed(f"eps = 0.3: {share:.3f} of the positions after <bos> kept the gold token; expected "
                          f"0.3 within 5 standard errors ({5 * se:.3f})")
    if not bool((got[:, 0] == big_gold[:, 0]).all()):
        raise CheckFailed("position 0 (<bos>) must always be the gold token")
    expect_value_error(mix_inputs, gold, pred, 1.5, None, what="mix_inputs(..., eps=1.5)")


@register("ex-ch07-objects-named", hint="Count the words of the caption that are shape names "
                                        "(circle, square, triangle).")
def _check_objects_named(objects_named) -> None:
    from mmlearn.data import make_shapes

    gen = fresh_generator()
    batch = make_shapes(20, max_objects=3, seed=int(torch.randint(0, 10_000, (1,), generator=gen)))
    for case, (caption, n) in enumerate(zip(batch.captions, batch.labels["n_objects"].tolist())):
        got = call_student(objects_named, caption, what=f"case {case}")
        expect_number(got, n, what=f"case {case}: objects named in {caption!r}", tol=0)
    expect_number(call_student(objects_named, "", what="the empty caption"), 0, what="the empty caption", tol=0)


# ---- 07_multimodal_transformers_llava ------------------------------------------------------------

@register("ex-ch07-llava-answer-mask", hint="t = torch.arange(T); compare it with prompt_lengths[:, None] and "
                                            "lengths[:, None] by broadcasting.")
def _check_llava_answer_mask(answer_mask) -> None:
    gen = fresh_generator()
    for case in range(4):
        B, T = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen))
        lengths = torch.randint(0, T + 1, (B,), generator=gen)
        prompt = (torch.rand(B, generator=gen) * (lengths + 1)).long().clamp(max=lengths)
        want = torch.tensor([[int(p) <= t < int(n) for t in range(T)] for p, n in zip(prompt, lengths)]).view(B, T)
        got = call_student(answer_mask, prompt, lengths, T, what=f"case {case}")
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or got.shape != (B, T):
            raise CheckFailed(f"case {case}: expected a bool tensor of shape {(B, T)}, got "
                              f"{getattr(got, 'dtype', type(got).__name__)} {tuple(getattr(got, 'shape', ()))}")
        if not torch.equal(got, want):
            row = int((got != want).any(1).nonzero()[0])
            raise CheckFailed(f"case {case}: row {row} (prompt_length {int(prompt[row])}, length {int(lengths[row])}, "
                              f"T = {T}): expected {want[row].int().tolist()}, got {got[row].int().tolist()}")


@register("ex-ch07-llava-mask-weight", hint="Without the mask every predicted token has weight 1/(Q + A); "
                                            "the answer has A of them.")
def _check_llava_mask_weight(answer) -> None:
    expect_number(answer, 2 / 12, what="share of the unmasked loss from the answer tokens (Q = 10, A = 2)", tol=1e-3)


@register("ex-ch07-llava-projector-params", hint="Two nn.Linear layers: (d_v -> d) and (d -> d), each with a bias.")
def _check_llava_projector_params(projector_params) -> None:
    for d_v, d in ((64, 64), (1024, 4096), (3, 5), (7, 2)):
        want = sum(p.numel() for p in torch.nn.Sequential(torch.nn.Linear(d_v, d), torch.nn.Linear(d, d)).parameters())
        got = call_student(projector_params, d_v, d, what=f"projector_params({d_v}, {d})")
        expect_number(got, want, what=f"projector_params({d_v}, {d})", tol=0.5)


@register("ex-ch07-llava-num-tokens", hint="tokens.transpose(1, 2).reshape(B, d, g, g), F.avg_pool2d with kernel "
                                           "g // k, then flatten(2).transpose(1, 2).")
def _check_llava_pool_tokens(pool_tokens) -> None:
    gen = fresh_generator()
    for case, (B, g, d, k) in enumerate(((2, 4, 3, 2), (1, 4, 5, 1), (3, 6, 2, 3), (2, 4, 4, 4))):
        x = torch.randn(B, g * g, d, generator=gen)
        grid = x.view(B, g, g, d)                                                 # row-major cells
        s = g // k
        want = grid.view(B, k, s, k, s, d).mean((2, 4)).reshape(B, k * k, d)
        got = call_student(pool_tokens, x, k, what=f"case {case}: pool_tokens of {(B, g * g, d)} to k = {k}")
        expect_close(got, want, what=f"case {case}: {g}x{g} grid of {d}-dim tokens pooled to {k}x{k}")


@register("ex-ch07-siglip-bias-shift", hint="For each noise level build y = x + eps * noise, scan the bias on a fine "
                                             "grid with siglip_loss at e^s = 10, and keep the bias of the lowest loss.")
def _check_siglip_bias_shift(best_biases) -> None:
    try:
        values = [float(b) for b in best_biases]
    except (TypeError, ValueError):
        raise CheckFailed(f"best_biases must be a list of three numbers, got {best_biases!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise CheckFailed(f"expected three finite best biases (noise 4, 1, 0.25), got {values}")
    if any(v > -math.log(255) + 0.5 for v in values):
        raise CheckFailed(f"every best bias should lie below -log(N - 1) = {-math.log(255):.2f} for N = 256, "
                          f"got {values}")
    if not values[0] > values[1] > values[2]:
        raise CheckFailed(f"the best bias should move down as the noise shrinks (4 -> 1 -> 0.25), got {values}")
