"""Checks for the exercises of chapter 8 (notebooks/08_practice_*.ipynb)."""

from __future__ import annotations

import math

import torch

from mmlearn.checks import CheckFailed, expect_close, expect_equal, expect_number, fresh_generator, register


def _call(fn, *args, what: str):
    """Call the student's function; turn a wrong return type into specific feedback."""
    out = fn(*args)
    if out is None:
        raise CheckFailed(f"{what}: your function returned None — did you forget `return`?")
    return out


# ---- 08_practice_project ---------------------------------------------------------------------------

@register("ex-ch08-confusion", hint="Row = true class, column = predicted class; count each (true, predicted) pair.")
def _check_confusion(confusion) -> None:
    gen = fresh_generator()
    for case in range(5):
        c = int(torch.randint(2, 7, (1,), generator=gen))
        n = int(torch.randint(1, 60, (1,), generator=gen))
        target = torch.randint(0, c, (n,), generator=gen)
        pred = torch.randint(0, c, (n,), generator=gen)
        expected = torch.zeros(c, c, dtype=torch.long)
        for t, p in zip(target.tolist(), pred.tolist()):
            expected[t, p] += 1
        got = _call(confusion, pred, target, c, what=f"case {case}")
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"case {case}: expected a ({c}, {c}) tensor, got {type(got).__name__}")
        if got.shape != (c, c):
            raise CheckFailed(f"case {case}: expected shape ({c}, {c}) for {c} classes, got {tuple(got.shape)}")
        if int(got.sum()) != n:
            raise CheckFailed(f"case {case}: the entries should add up to the {n} examples, got {int(got.sum())}")
        if not torch.equal(got.long(), expected):
            if torch.equal(got.long(), expected.T):
                raise CheckFailed(f"case {case}: your matrix is transposed — rows must be the TRUE class")
            raise CheckFailed(f"case {case}: counts differ for pred={pred.tolist()[:8]}…, "
                              f"target={target.tolist()[:8]}…")


def _early_stopping_reference(losses: list[float], patience: int) -> tuple[int, int]:
    best, best_epoch, bad = math.inf, -1, 0
    for epoch, loss in enumerate(losses):
        if loss < best:
            best, best_epoch, bad = loss, epoch, 0
        else:
            bad += 1
        if bad >= patience:
            return best_epoch, epoch
    return best_epoch, len(losses) - 1


@register("ex-ch08-early-stop", hint="Count epochs since the last strict improvement; stop when the count reaches "
                                     "patience; the best epoch is where the minimum so far was set.")
def _check_early_stop(early_stopping_epochs) -> None:
    gen = fresh_generator()
    fixed = [([1.0, 0.8, 0.9, 0.95, 0.7, 0.71], 2), ([0.5, 0.5, 0.5], 1), ([3.0, 2.0, 1.0], 2)]
    cases = fixed + [((torch.rand(int(torch.randint(3, 15, (1,), generator=gen)), generator=gen)).tolist(),
                      int(torch.randint(1, 4, (1,), generator=gen))) for _ in range(6)]
    for case, (losses, patience) in enumerate(cases):
        expected = _early_stopping_reference(losses, patience)
        got = _call(early_stopping_epochs, list(losses), patience, what=f"case {case}")
        try:
            got = (int(got[0]), int(got[1]))
        except (TypeError, ValueError, IndexError):
            raise CheckFailed(f"case {case}: return a pair (best_epoch, stop_epoch) of ints, got {got!r}") from None
        shown = [round(v, 3) for v in losses]
        expect_equal(got, expected, what=f"case {case}: val losses {shown}, patience {patience}")


# ---- 08_practice_diagnosis -------------------------------------------------------------------------

@register("ex-ch08-sens-spec",
          hint="Sensitivity = M[1,1] / (M[1,0] + M[1,1]); specificity = M[0,0] / (M[0,0] + M[0,1]).")
def _check_sens_spec(sens_spec_from_confusion) -> None:
    gen = fresh_generator()
    for case in range(5):
        M = torch.randint(1, 50, (2, 2), generator=gen)
        sens, spec = M[1, 1].item() / M[1].sum().item(), M[0, 0].item() / M[0].sum().item()
        got = _call(sens_spec_from_confusion, M.clone(), what=f"case {case}")
        try:
            g_sens, g_spec = (float(v) for v in got)
        except (TypeError, ValueError):
            raise CheckFailed(f"case {case}: return a pair (sensitivity, specificity), got {got!r}") from None
        if abs(g_sens - spec) < 1e-6 and abs(g_spec - sens) < 1e-6 and abs(sens - spec) > 1e-6:
            raise CheckFailed(f"case {case}: you returned (specificity, sensitivity) — swap them")
        expect_close(g_sens, sens, what=f"case {case}: sensitivity of M={M.tolist()}", atol=1e-9)
        expect_close(g_spec, spec, what=f"case {case}: specificity of M={M.tolist()}", atol=1e-9)


@register("ex-ch08-ceiling-image-labs", hint="Only patients with a lesion and a normal marker are uncertain; "
                                             "what is the best guess for them, and how often is it wrong?")
def _check_ceiling_image_labs(answer) -> None:
    expect_number(answer, 1 - 0.5 * 0.5 * 0.3, what="the ceiling of an image + labs model", tol=1e-3)


# ---- 08_practice_applications ----------------------------------------------------------------------

@register("ex-ch08-mrr", hint="rank_i = 1 + number of items scored strictly higher than the match s[i, i]; "
                              "average 1 / rank_i over the rows.")
def _check_mrr(mean_reciprocal_rank) -> None:
    gen = fresh_generator()
    for case in range(5):
        n = int(torch.randint(2, 12, (1,), generator=gen))
        m = n + int(torch.randint(0, 5, (1,), generator=gen))
        s = torch.randn(n, m, generator=gen, dtype=torch.float64)
        rank = 1 + (s > s.diagonal()[:, None]).sum(1)
        got = _call(mean_reciprocal_rank, s.clone(), what=f"case {case}")
        expect_close(float(got), (1.0 / rank).mean().item(), what=f"case {case}: MRR of a ({n}, {m}) similarity",
                     atol=1e-9)


# ---- 08_practice_challenges ------------------------------------------------------------------------

@register("ex-ch08-power-law", hint="log err = log a − b log n is a straight line: fit it by least squares "
                                    "(torch.linalg.lstsq or the closed form of a 1-D regression).")
def _check_power_law(fit_power_law) -> None:
    gen = fresh_generator()
    for case in range(4):
        a = float(torch.empty(1).uniform_(0.5, 3.0, generator=gen))
        b = float(torch.empty(1).uniform_(0.1, 1.0, generator=gen))
        n = torch.tensor([50.0, 100.0, 200.0, 400.0, 800.0, 1600.0], dtype=torch.float64)
        noise = 1 + (0.05 * torch.randn(len(n), generator=gen, dtype=torch.float64) if case else 0)
        err = a * n ** (-b) * noise
        x, y = n.log(), err.log()
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        ref_b, ref_a = -slope.item(), math.exp((y.mean() - slope * x.mean()).item())
        got = _call(fit_power_law, n.clone(), err.clone(), what=f"case {case}")
        try:
            g_a, g_b = (float(v) for v in got)
        except (TypeError, ValueError):
            raise CheckFailed(f"case {case}: return a pair (a, b), got {got!r}") from None
        if g_b < 0 < ref_b:
            raise CheckFailed(f"case {case}: b should be positive for a decreasing error (err = a · n^(-b))")
        expect_close(g_b, ref_b, what=f"case {case}: exponent b", atol=1e-6, rtol=1e-4)
        expect_close(g_a, ref_a, what=f"case {case}: prefactor a", atol=1e-6, rtol=1e-4)


# ---- 08_practice_applications (second edition) -------------------------------------------------------

@register("ex-ch08-random-ranking", hint="The rank of the match is uniform on 1..N; average 1/r over r = 1..N.")
def _check_random_ranking(answer) -> None:
    expected = sum(1 / r for r in range(1, 41)) / 40
    if answer is not None and abs(float(answer) - 1 / 40) < 1e-9:
        raise CheckFailed("1/40 is recall@1 of chance; the mean reciprocal rank averages 1/rank over ranks 1..40")
    expect_number(answer, expected, what="expected MRR of a random ranking, N = 40", tol=1e-4)


@register("ex-ch08-word-order", hint="words = caption.split(); reorder them with torch.randperm(len(words), "
                                     "generator=generator); join with spaces.")
def _check_shuffle_words(shuffle_words) -> None:
    caption = "a large red circle left of a small blue square"
    outputs = set()
    for case in range(20):
        gen = torch.Generator().manual_seed(case)
        got = _call(shuffle_words, caption, gen, what=f"call {case}")
        if not isinstance(got, str):
            raise CheckFailed(f"call {case}: expected a string, got {type(got).__name__}")
        if sorted(got.split()) != sorted(caption.split()):
            raise CheckFailed(f"call {case}: {got!r} is not a reordering of the words of {caption!r}")
        outputs.add(got)
    if len(outputs) < 5:
        raise CheckFailed(f"20 calls with different generators gave only {len(outputs)} different orders: "
                          "use the generator to draw a random permutation")


@register("ex-ch08-data-factor", hint="Solve a (m n)^(-b) = a n^(-b) / r for m.")
def _check_data_factor(data_factor) -> None:
    for b, r in ((0.5, 2.0), (0.25, 2.0), (1.0, 10.0), (0.23, 2.0), (0.7, 3.5)):
        got = _call(data_factor, b, r, what=f"b = {b}, r = {r}")
        if isinstance(got, (int, float)) and abs(got - r ** b) < 1e-9 and abs(r ** b - r ** (1 / b)) > 1e-6:
            raise CheckFailed(f"b = {b}, r = {r}: you returned r^b; solve m^(-b) = 1/r for m")
        expect_number(got, r ** (1 / b), what=f"b = {b}, r = {r}", tol=1e-6 * r ** (1 / b))


@register("ex-ch08-test-size", hint="SE = sqrt(a(1 - a)/n) is largest at a = 1/2; solve 1/(2 sqrt(n)) <= 0.01.")
def _check_test_size(answer) -> None:
    if answer == 10_000:
        raise CheckFailed("10000 solves sqrt(1/n) <= 0.01; the worst case of a(1 - a) is 1/4, not 1")
    expect_equal(answer, 2500, what="smallest n with a standard error of at most 0.01 for every a")


def _roc_reference(scores: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Thresholds just below each distinct score, from the highest down: (FPR, TPR) lists with (0, 0) first."""
    pos, neg = int(labels.sum()), int((1 - labels).sum())
    fpr, tpr = [0.0], [0.0]
    for t in sorted(set(scores.tolist()), reverse=True):
        hit = scores >= t
        tpr.append(int((hit & (labels == 1)).sum()) / pos)
        fpr.append(int((hit & (labels == 0)).sum()) / neg)
    return fpr, tpr


@register("ex-ch08-roc", hint="Sort by decreasing score; cumulative sums of positives and negatives give TP and "
                              "FP at every threshold; keep one point per distinct score.")
def _check_roc(roc_points) -> None:
    gen = fresh_generator()
    for case in range(6):
        n = int(torch.randint(4, 40, (1,), generator=gen))
        labels = torch.randint(0, 2, (n,), generator=gen)
        labels[0], labels[1] = 0, 1                                         # both classes present
        scores = torch.randint(0, 6, (n,), generator=gen).double() / 5 if case % 2 else torch.rand(n, generator=gen)
        got = _call(roc_points, scores, labels, what=f"case {case}")
        if not (isinstance(got, tuple) and len(got) == 2):
            raise CheckFailed(f"case {case}: expected a tuple (fpr, tpr), got {type(got).__name__}")
        fpr, tpr = _roc_reference(scores, labels)
        expect_close(torch.as_tensor(got[0]).double(), torch.tensor(fpr, dtype=torch.float64),
                     what=f"case {case} ({'with' if case % 2 else 'without'} tied scores): false-positive rates")
        expect_close(torch.as_tensor(got[1]).double(), torch.tensor(tpr, dtype=torch.float64),
                     what=f"case {case}: true-positive rates")


# ---- 08_practice_trust -----------------------------------------------------------------------------

@register("ex-ch08-ig-linear", hint="The gradient of w·x + c is w everywhere: the path integral of a constant.")
def _check_ig_linear(ig_linear) -> None:
    gen = fresh_generator()
    for case in range(5):
        b, d = (int(v) for v in torch.randint(1, 9, (2,), generator=gen))
        w = torch.randn(d, generator=gen, dtype=torch.float64)
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
        base = torch.zeros(b, d, dtype=torch.float64) if case == 0 else torch.randn(b, d, generator=gen,
                                                                                    dtype=torch.float64)
        got = _call(ig_linear, w.clone(), x.clone(), base.clone(), what=f"case {case}")
        if not isinstance(got, torch.Tensor) or got.shape != (b, d):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"case {case}: expected a ({b}, {d}) tensor of attributions, got {shape}")
        if case and torch.allclose(got.double(), x * w) and not torch.allclose(x * w, (x - base) * w):
            raise CheckFailed(f"case {case}: your attributions ignore the baseline; use x - baseline")
        expect_close(got.double(), (x - base) * w, what=f"case {case}: attributions for B={b}, d={d}", atol=1e-9)
        expect_close(got.double().sum(1), (x - base) @ w, what=f"case {case}: completeness (sum over features)",
                     atol=1e-9)


@register("ex-ch08-attack-auc", hint="Compare every member with every non-member: 1 when the member's loss is "
                                     "lower, 1/2 for a tie; average over the pairs.")
def _check_attack_auc(attack_auc) -> None:
    gen = fresh_generator()
    for case in range(6):
        n1, n0 = (int(v) for v in torch.randint(1, 30, (2,), generator=gen))
        if case % 2:
            a = torch.randint(0, 4, (n1,), generator=gen).double()
            b = torch.randint(0, 4, (n0,), generator=gen).double()
        else:
            a = torch.rand(n1, generator=gen, dtype=torch.float64)
            b = torch.rand(n0, generator=gen, dtype=torch.float64)
        expected = ((a[:, None] < b[None, :]).double() + 0.5 * (a[:, None] == b[None, :]).double()).mean().item()
        got = float(_call(attack_auc, a.clone(), b.clone(), what=f"case {case}"))
        if abs(got - (1 - expected)) < 1e-9 and abs(expected - 0.5) > 1e-9:
            raise CheckFailed(f"case {case}: you got 1 - AUC: a member should have the LOWER loss")
        expect_close(got, expected, what=f"case {case} ({'with' if case % 2 else 'without'} ties): "
                                         f"{n1} members, {n0} non-members", atol=1e-9)
