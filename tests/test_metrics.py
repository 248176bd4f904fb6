"""Tests of mmlearn.metrics: accuracy, retrieval recall@k, corpus BLEU (hand-computed cases)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmlearn.metrics import (
    accuracy,
    bleu,
    char_error_rate,
    edit_distance,
    error_rate,
    recall_at_k,
    word_error_rate,
)

# ---- accuracy -----------------------------------------------------------------------------------


def test_accuracy_logits_and_labels(device):
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]], device=device)
    target = torch.tensor([0, 1, 1], device=device)
    assert accuracy(logits, target) == pytest.approx(2 / 3)
    assert accuracy(logits.argmax(1), target) == pytest.approx(2 / 3)


# ---- recall@k -----------------------------------------------------------------------------------


def _recall_reference(sim: torch.Tensor, k: int) -> float:
    """Brute force: sort each row, find where the diagonal item lands."""
    hits = 0
    for i in range(sim.shape[0]):
        order = sim[i].argsort(descending=True).tolist()
        hits += order.index(i) < k
    return hits / sim.shape[0]


def test_recall_identity_and_constructed(device):
    assert recall_at_k(torch.eye(5, device=device), 1) == 1.0
    # row 0: its match (col 0) is 2nd; row 1: 3rd; rows 2, 3: 1st
    sim = torch.tensor([[0.5, 0.9, 0.1, 0.0],
                        [0.8, 0.2, 0.7, 0.0],
                        [0.0, 0.1, 0.9, 0.3],
                        [0.2, 0.1, 0.3, 0.4]], device=device)
    assert recall_at_k(sim, 1) == pytest.approx(0.5)
    assert recall_at_k(sim, 2) == pytest.approx(0.75)
    assert recall_at_k(sim, 3) == pytest.approx(1.0)
    # text -> image is the transpose
    assert recall_at_k(sim.T, 1) == pytest.approx(_recall_reference(sim.T.cpu(), 1))


def test_recall_extra_gallery_items_and_ties(device):
    sim = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.5]], device=device)   # N=2 queries, M=3 items
    assert recall_at_k(sim, 1) == pytest.approx(0.5)
    assert recall_at_k(sim, 2) == pytest.approx(1.0)
    # ties count against the query: a collapsed model scores 0, not 1
    assert recall_at_k(torch.zeros(4, 4, device=device), 1) == 0.0
    assert recall_at_k(torch.zeros(4, 4, device=device), 4) == 1.0


@given(st.integers(2, 12), st.integers(0, 3), st.integers(0, 10_000))
def test_recall_matches_brute_force(n, extra, seed):
    g = torch.Generator().manual_seed(seed)
    sim = torch.randn(n, n + extra, generator=g, dtype=torch.float64)   # continuous: no ties
    for k in range(1, n + extra + 1):
        assert recall_at_k(sim, k) == pytest.approx(_recall_reference(sim, k))


@pytest.mark.parametrize("sim, k, match", [
    (torch.zeros(4), 1, "similarity must be"),
    (torch.zeros(3, 2), 1, "1 <= N <= M"),
    (torch.zeros(2, 2), 0, "k must be"),
    (torch.zeros(2, 2), 3, "k must be"),
    (torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), 1, "finite"),
    ([[1.0]], 1, "torch.Tensor"),
])
def test_recall_bad_input(sim, k, match):
    with pytest.raises(ValueError, match=match):
        recall_at_k(sim, k)


# ---- BLEU ---------------------------------------------------------------------------------------


def _split(*texts: str) -> list[list[str]]:
    return [t.split() for t in texts]


def test_bleu_identical_is_one():
    cand = _split("the cat sat on the mat", "a dog")
    assert bleu(cand, [[c] for c in cand], max_n=2) == pytest.approx(1.0)


def test_bleu_papineni_modified_precision():
    # Papineni et al. (2002), example 2: "the" x7 is clipped to the 2 "the"s of reference 1: p1 = 2/7;
    # c = 7 equals the closest reference length 7, so BP = exp(1 - 7/7) = 1.
    cand = _split("the the the the the the the")
    refs = [_split("the cat is on the mat", "there is a cat on the mat")]
    assert bleu(cand, refs, max_n=1) == pytest.approx(2 / 7)


def test_bleu_four_grams_by_hand():
    # p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, BP = 1  ->  (1/12) ** (1/4)
    cand, refs = _split("the cat sat on a mat"), [_split("the cat sat on the mat")]
    assert bleu(cand, refs) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)


def test_bleu_brevity_penalty():
    # p1 = p2 = 1, c = 2, r = 6: BP = exp(1 - 6/2) = e^-2
    assert bleu(_split("the cat"), [_split("the cat sat on the mat")], max_n=2) == pytest.approx(math.exp(-2))


def test_bleu_is_corpus_level_not_mean_of_sentences():
    # counts are pooled over the corpus: p1 = (4 + 2)/8, p2 = (3 + 0)/6 -> sqrt(3/4 * 1/2);
    # the mean of sentence BLEUs would be (1 + 0)/2 because sentence 2 has no matching bigram.
    cand = _split("a b c d", "a x c y")
    refs = [_split("a b c d"), _split("a b c d")]
    assert bleu(cand, refs, max_n=2) == pytest.approx(math.sqrt(0.75 * 0.5))
    assert bleu(cand[1:], refs[1:], max_n=2) == 0.0


def test_bleu_closest_reference_length_ties_go_to_the_shorter():
    # c = 5, references of length 4 and 6 are equally close: r = 4, so c > r and BP = 1 (not exp(1 - 6/5))
    cand = _split("a b c d e")
    refs = [_split("a b c d", "a b c d e f")]
    assert bleu(cand, refs, max_n=1) == pytest.approx(1.0)


def test_bleu_clips_by_the_max_over_references():
    # "the" appears twice in reference 2: both candidate "the"s count
    assert bleu(_split("the the"), [_split("the cat", "the the dog")], max_n=1) == pytest.approx(1.0)


@given(st.lists(st.lists(st.sampled_from("abcde"), min_size=1, max_size=8), min_size=1, max_size=5),
       st.randoms(use_true_random=False))
def test_bleu_bounds_and_order_invariance(cands, rnd):
    refs = [[rnd.sample(c, len(c)) + ["a"]] for c in cands]      # shuffled copies, one word longer
    score = bleu(cands, refs, max_n=2)
    assert 0.0 <= score <= 1.0
    order = list(range(len(cands)))
    rnd.shuffle(order)
    assert bleu([cands[i] for i in order], [refs[i] for i in order], max_n=2) == pytest.approx(score)


@pytest.mark.parametrize("cands, refs, max_n, match", [
    ([], [], 4, "candidates must be"),
    (["a b"], [[["a", "b"]]], 4, "split the string"),
    ([["a"]], [], 4, "one list of references per candidate"),
    ([["a"]], [["a"]], 4, "non-empty list of token lists"),
    ([["a"]], [[]], 4, "non-empty list of token lists"),
    ([["a"]], [[["a"]]], 0, "max_n must be"),
])
def test_bleu_bad_input(cands, refs, max_n, match):
    with pytest.raises(ValueError, match=match):
        bleu(cands, refs, max_n=max_n)


# ---- edit distance, WER, CER ------------------------------------------------------------------

def _brute_edit_distance(a, b):
    """Plain recursion over the three last operations (exponential; tiny inputs only)."""
    if not a or not b:
        return len(a) + len(b)
    return min(_brute_edit_distance(a[:-1], b) + 1, _brute_edit_distance(a, b[:-1]) + 1,
               _brute_edit_distance(a[:-1], b[:-1]) + (a[-1] != b[-1]))


@given(st.text("abc", max_size=6), st.text("abc", max_size=6))
def test_edit_distance_equals_brute_force_and_is_a_metric(a, b):
    d = edit_distance(a, b)
    assert d == _brute_edit_distance(a, b) == edit_distance(b, a)
    assert (d == 0) == (a == b) and abs(len(a) - len(b)) <= d <= max(len(a), len(b))


def test_wer_and_cer_on_known_cases():
    ref = ["a large red circle", "a small blue square"]
    hyp = ["a large red circles", "a blue square square"]
    # words: 1 substitution; 1 deletion + 1 insertion -> 3 errors over 8 reference words
    assert word_error_rate(hyp, ref) == pytest.approx(3 / 8)
    assert char_error_rate(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert word_error_rate(["a a a a"], ["a"]) == 3.0  # insertions: WER can exceed 1


@pytest.mark.parametrize("hyp, ref", [([], []), (["a"], ["a", "b"]), ([""], [""])])
def test_error_rate_bad_input(hyp, ref):
    with pytest.raises(ValueError, match="hypotheses|empty"):
        error_rate(hyp, ref)
