"""Evaluation metrics: accuracy, retrieval recall@k, corpus BLEU, edit distance, WER and CER."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from mmlearn._validate import require_rank, require_tensor


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of correct predictions: mean(argmax(output) == target).

    ``output`` is either logits ``(N, C)`` or predicted labels ``(N,)``; ``target`` is ``(N,)``.
    """
    output, target = require_tensor(output, "output"), require_tensor(target, "target")
    pred = output.argmax(dim=-1) if output.ndim == target.ndim + 1 else output
    if pred.shape != target.shape:
        raise ValueError(f"output must be (N, C) logits or (N,) labels matching target {tuple(target.shape)}, "
                         f"got shape {tuple(output.shape)}")
    if target.numel() == 0:
        raise ValueError("accuracy of an empty batch is undefined: got 0 targets")
    return (pred == target).float().mean().item()


def recall_at_k(similarity: torch.Tensor, k: int) -> float:
    """Retrieval recall@k: the fraction of queries whose match is among their k most similar items.

    ``similarity`` is ``(N, M)`` with ``M >= N``: row i is query i, and its one true match is column i.
    recall@k = (1/N) Σ_i [ rank_i < k ], where rank_i = #{j ≠ i : s_ij ≥ s_ii} — ties count against the
    query, so a model that maps everything to one point scores 0, not 1. Deduplicate the gallery first:
    two identical captions tie exactly. Text→image retrieval is ``recall_at_k(similarity.T, k)`` (N = M).
    """
    similarity = require_rank(similarity, "similarity", 2, "(N, M) with M >= N")
    n, m = similarity.shape
    if n == 0 or m < n:
        raise ValueError(f"similarity must be (N, M) with 1 <= N <= M (row i's match is column i), "
                         f"got shape {tuple(similarity.shape)}")
    if not torch.isfinite(similarity).all():
        raise ValueError("similarity must be finite, got NaN or inf entries")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise ValueError(f"k must be an int in [1, {m}], got {k!r}")
    idx = torch.arange(n, device=similarity.device)
    match = similarity[idx, idx]                                        # (N,)
    rank = (similarity >= match[:, None]).sum(dim=1) - 1                # (N,) other items at least as similar
    return (rank < k).float().mean().item()


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _closest_length(c: int, refs: Sequence[Sequence[str]]) -> int:
    """The reference length closest to the candidate length c (ties: the shorter), as in BLEU."""
    return min((len(r) for r in refs), key=lambda r: (abs(r - c), r))


def bleu(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
         max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al., 2002), no smoothing.

    p_n = Σ_cand Σ_g min(count_cand(g), max_ref count_ref(g)) / Σ_cand Σ_g count_cand(g)   (n-grams g)
    BP  = 1 if c > r else exp(1 - r/c)     (c: total candidate length, r: total closest-reference length)
    BLEU = BP · exp( (1/max_n) Σ_{n=1..max_n} log p_n )      — 0 when some p_n is 0.

    ``candidates``: a list of token lists; ``references``: for each candidate, a list of token lists.
    """
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be a positive int, got {max_n!r}")
    _check_bleu_inputs(candidates, references)
    matches, totals = [0] * max_n, [0] * max_n
    c_len = r_len = 0
    for cand, refs in zip(candidates, references):
        c_len += len(cand)
        r_len += _closest_length(len(cand), refs)
        for n in range(1, max_n + 1):
            counts = _ngrams(cand, n)
            best: Counter = Counter()
            for ref in refs:
                best |= _ngrams(ref, n)                     # element-wise max over references
            matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += sum(counts.values())
    if c_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return bp * math.exp(log_p)


def _check_bleu_inputs(candidates, references) -> None:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or len(candidates) == 0:
        raise ValueError(f"candidates must be a non-empty list of token lists, got {type(candidates).__name__}")
    if not isinstance(references, Sequence) or len(references) != len(candidates):
        n = len(references) if isinstance(references, Sequence) else type(references).__name__
        raise ValueError(f"references must hold one list of references per candidate ({len(candidates)}), got {n}")
    for i, (cand, refs) in enumerate(zip(candidates, references)):
        if isinstance(cand, str) or not isinstance(cand, Sequence):
            raise ValueError(f"candidate {i} must be a list of tokens (split the string first), got {cand!r}")
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0 \
                or any(isinstance(r, str) or not isinstance(r, Sequence) for r in refs):
            raise ValueError(f"references[{i}] must be a non-empty list of token lists, got {refs!r}")


# ---- speech recognition: edit distance, WER, CER ---------------------------------------------

def edit_distance(hypothesis: Sequence, reference: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions turning one into the other.

    d(i, j) = min(d(i-1, j) + 1, d(i, j-1) + 1, d(i-1, j-1) + [h_i ≠ r_j]),  d(i, 0) = i, d(0, j) = j,
    for the first i items of ``hypothesis`` and the first j of ``reference``; one row kept at a time.
    """
    previous = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, start=1):
        current = [i]
        for j, r in enumerate(reference, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1]


def error_rate(hypotheses: Sequence[Sequence], references: Sequence[Sequence]) -> float:
    """Σ edit_distance(h, r) / Σ len(r): word error rate on word lists, character error rate on strings.

    Pooled over the corpus (not a mean of per-utterance rates). Insertions count, so it can exceed 1.
    """
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"need as many hypotheses as references (at least one), got {len(hypotheses)} and "
                         f"{len(references)}")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("the references are all empty: the error rate is undefined")
    return sum(edit_distance(h, r) for h, r in zip(hypotheses, references)) / total


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """WER: :func:`error_rate` over whitespace-separated words."""
    return error_rate([h.split() for h in hypotheses], [r.split() for r in references])


def char_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """CER: :func:`error_rate` over characters (spaces included)."""
    return error_rate(list(hypotheses), list(references))
