"""Checks for the exercises of chapter 9 (notebooks/09_alignment_*.ipynb)."""

from __future__ import annotations

import math

import torch

from mmlearn.alignment import _extended_targets, ctc_log_alpha
from mmlearn.checks import CheckFailed, call_student, expect_close, expect_equal, fresh_generator, register

F64 = torch.float64


@register("ex-ch09-min-frames", hint="Each label needs a frame; between two equal neighbours a blank must "
                                     "separate them, or the collapse merges them.")
def _check_min_frames(min_frames) -> None:
    gen = fresh_generator()
    cases = [[1], [1, 1], [2, 2, 2], [1, 2, 1], [3, 3, 1, 1, 2]]
    cases += [torch.randint(1, 4, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).tolist()
              for _ in range(6)]
    for case, target in enumerate(cases):
        expected = len(target) + sum(a == b for a, b in zip(target, target[1:]))
        expect_equal(call_student(min_frames, list(target), what=f"case {case}"), expected,
                     what=f"case {case}: the minimum number of frames for target {target}")


def reference_log_beta(log_probs: torch.Tensor, target: list[int], blank: int = 0) -> torch.Tensor:
    """log β_t(s) (Graves' convention: it includes y_{l'_s}(t)) as α of the time-reversed problem."""
    ext = _extended_targets(torch.tensor([target], dtype=torch.long).reshape(1, -1), None, blank)
    alpha_rev = ctc_log_alpha(log_probs.flip(0)[:, None], ext.flip(1), blank)[:, 0]    # (T, L)
    return alpha_rev.flip(0).flip(1)


@register("ex-ch09-ctc-beta", hint="Mirror the alpha recursion: start at the last two states at t = T-1 and "
                                   "move from s to s, s+1 and (when allowed) s+2, backwards in time.")
def _check_ctc_beta(ctc_log_beta) -> None:
    gen = fresh_generator()
    for case in range(4):
        S = int(torch.randint(1, 4, (1,), generator=gen))
        target = torch.randint(1, 4, (S,), generator=gen).tolist()
        T = S + sum(a == b for a, b in zip(target, target[1:])) + int(torch.randint(0, 5, (1,), generator=gen))
        log_probs = torch.randn(T, 4, generator=gen, dtype=F64).log_softmax(-1)
        got = call_student(ctc_log_beta, log_probs.clone(), list(target), what=f"case {case}")
        expected = reference_log_beta(log_probs, target)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            raise CheckFailed(f"case {case}: expected a tensor of shape {tuple(expected.shape)} = (T, 2S+1)")
        reachable = expected > -1e29
        zero_ok = torch.equal(got.detach() > -1e29, reachable) or torch.equal(torch.isfinite(got.detach()), reachable)
        if not zero_ok:
            raise CheckFailed(f"case {case}: the states with probability 0 are not where they should be "
                              f"(target {target}, T = {T})")
        expect_close(torch.where(reachable, got.detach().to(F64), torch.zeros_like(expected)),
                     torch.where(reachable, expected, torch.zeros_like(expected)),
                     what=f"case {case}: log beta for target {target}, T = {T}", atol=1e-8, rtol=1e-8)


@register("ex-ch09-dtw-band", hint="Only cells with |i - j·T1/T2| <= w may be used: give every other cell an "
                                   "infinite cost and run the ordinary recursion.")
def _check_dtw_band(dtw_band) -> None:
    gen = fresh_generator()
    for case in range(5):
        T1, T2 = (int(v) for v in torch.randint(2, 9, (2,), generator=gen))
        w = int(torch.randint(1, 4, (1,), generator=gen))
        cost = torch.rand(T1, T2, generator=gen, dtype=F64)
        expected = _brute_band(cost, w)
        got = call_student(dtw_band, cost.clone(), w, what=f"case {case}")
        what = f"case {case}: banded DTW cost, shape {(T1, T2)}, w = {w}"
        if math.isinf(expected):  # the band leaves no path from corner to corner
            expect_equal(float(got), math.inf, what=what + " (no path fits in this band)")
        else:
            expect_close(float(got), expected, what=what, atol=1e-9, rtol=1e-9)


def _brute_band(cost: torch.Tensor, w: int) -> float:
    T1, T2 = cost.shape
    inside = [[abs(i - j * (T1 - 1) / max(T2 - 1, 1)) <= w for j in range(T2)] for i in range(T1)]
    best: dict[tuple[int, int], float] = {}
    for i in range(T1):
        for j in range(T2):
            if not inside[i][j]:
                best[i, j] = math.inf
                continue
            prev = [best[p] for p in ((i - 1, j), (i, j - 1), (i - 1, j - 1)) if p[0] >= 0 and p[1] >= 0]
            best[i, j] = float(cost[i, j]) + (min(prev) if prev else 0.0)
    return best[T1 - 1, T2 - 1]


@register("ex-ch09-edit-distance", hint="d(i, j) = min(d(i-1, j) + 1, d(i, j-1) + 1, d(i-1, j-1) + [a_i != b_j]), "
                                        "with d(i, 0) = i and d(0, j) = j.")
def _check_edit_distance(edit_distance) -> None:
    from mmlearn.metrics import edit_distance as reference

    gen = fresh_generator()
    cases = [("", ""), ("abc", ""), ("", "ab"), ("kitten", "sitting"), (["a", "red", "circle"], ["a", "circle"])]
    for _ in range(6):
        a, b = (torch.randint(0, 3, (int(torch.randint(0, 8, (1,), generator=gen)),), generator=gen).tolist()
                for _ in range(2))
        cases.append((a, b))
    for case, (a, b) in enumerate(cases):
        expect_equal(call_student(edit_distance, a, b, what=f"case {case}"), reference(a, b),
                     what=f"case {case}: edit distance between {a!r} and {b!r}")


@register("ex-ch09-feasible", hint="After a stride-s subsampling, T frames become ceil(T / s); compare that with "
                                   "the minimum number of frames of the target.")
def _check_feasible(feasible) -> None:
    gen = fresh_generator()
    for case in range(12):
        text = "".join("abl "[int(i)] for i in torch.randint(0, 4, (int(torch.randint(1, 15, (1,), generator=gen)),),
                                                               generator=gen))
        frames, stride = int(torch.randint(1, 40, (1,), generator=gen)), int(torch.randint(1, 5, (1,), generator=gen))
        needed = len(text) + sum(a == b for a, b in zip(text, text[1:]))
        expect_equal(bool(call_student(feasible, frames, text, stride, what=f"case {case}")),
                     math.ceil(frames / stride) >= needed,
                     what=f"case {case}: can {frames} frames with stride {stride} carry {text!r}")


@register("ex-ch09-chance-recall", hint="Under a random order the match is equally likely at each of the N "
                                        "positions; count the positions that are < k.")
def _check_chance_recall(chance_recall) -> None:
    gen = fresh_generator()
    cases = [(1, 1), (1, 100), (10, 100), (5, 5)]
    cases += [(int(k), int(n)) for n in torch.randint(2, 500, (6,), generator=gen)
              for k in torch.randint(1, int(n) + 1, (1,), generator=gen)]
    for case, (k, n) in enumerate(cases):
        expect_close(float(call_student(chance_recall, k, n, what=f"case {case}")), k / n,
                     what=f"case {case}: expected recall@{k} of a random ranking of {n} items", atol=1e-12)


@register("ex-ch09-masked-mean", hint="Build a (B, T) boolean mask arange(T) < lengths[:, None], multiply, sum "
                                      "over time and divide by the lengths (not by T).")
def _check_masked_mean(my_masked_mean) -> None:
    from mmlearn.alignment import masked_mean

    gen = fresh_generator()
    for case in range(5):
        B, T, d = (int(v) for v in torch.randint(1, 9, (3,), generator=gen))
        h = torch.randn(B, T, d, generator=gen, dtype=F64)
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        expect_close(call_student(my_masked_mean, h.clone(), lengths.clone(), what=f"case {case}"),
                     masked_mean(h, lengths), what=f"case {case}: h {(B, T, d)}, lengths {lengths.tolist()}",
                     atol=1e-10, rtol=1e-10)


@register("ex-ch09-template-voices", hint="One fraction per query voice: 'en' and the three HELDOUT_VOICES, each "
                                          "a count of right templates out of 8.")
def _check_template_voices(template_accuracy) -> None:
    from mmlearn.speech import HELDOUT_VOICES

    expected = {"en", *HELDOUT_VOICES}
    if not isinstance(template_accuracy, dict) or set(template_accuracy) != expected:
        raise CheckFailed(f"expected a dict with the keys {sorted(expected)}, got {template_accuracy!r}")
    for voice, value in template_accuracy.items():
        if not isinstance(value, (int, float)) or not 0 <= value <= 1 or abs(8 * value - round(8 * value)) > 1e-9:
            raise CheckFailed(f"{voice}: expected a fraction of the 8 queries (k/8), got {value!r}")
    if template_accuracy["en"] != 1.0:
        raise CheckFailed(f"with the templates' own voice every query should find its caption (measured: 8 of 8), "
                          f"got {template_accuracy['en']!r}: check the features and the DTW cost")
