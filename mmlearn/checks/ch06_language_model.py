"""Checks for the exercises of notebooks/06_attention_language_model.ipynb."""

from __future__ import annotations

import torch

from mmlearn.checks import CheckFailed, call_student, expect_close, expect_equal, fresh_generator, register


@register("ex-ch06-kv-cost", hint="With the cache step t costs t products; without it, step t recomputes a causal "
                                  "t-token attention, 1 + 2 + ... + t products. Sum over t = 1..n.")
def _check_kv_cost(query_key_products) -> None:
    gen = fresh_generator()
    ns = [1, 2, 3, 10] + torch.randint(4, 2000, (4,), generator=gen).tolist()
    for n in ns:
        cached = sum(t for t in range(1, n + 1))
        full = sum(t * (t + 1) // 2 for t in range(1, n + 1))
        expect_equal(call_student(query_key_products, n, True, what=f"n = {n}, cached"), cached,
                     what=f"query-key products for n = {n} with the cache")
        expect_equal(call_student(query_key_products, n, False, what=f"n = {n}, not cached"), full,
                     what=f"query-key products for n = {n} without the cache")


def _reference_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    out = torch.full_like(logits, float("-inf"))
    for r, row in enumerate(logits):
        probs = row.softmax(dim=-1)
        order = probs.argsort(descending=True).tolist()
        mass = 0.0
        for i in order:
            out[r, i] = row[i]
            mass += probs[i].item()
            if mass >= p:
                break
    return out


@register("ex-ch06-top-p", hint="Sort by probability, keep a token while the mass of the tokens before it is "
                                "below p, and put the decision back in vocabulary order.")
def _check_top_p(top_p_filter) -> None:
    gen = fresh_generator()
    for case in range(6):
        B, V = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(2, 30, (1,), generator=gen))
        logits = 3 * torch.randn(B, V, generator=gen, dtype=torch.float64)
        p = [0.05, 0.5, 0.9, 0.999, 0.3, 0.75][case]
        got = call_student(top_p_filter, logits.clone(), p, what=f"case {case}")
        expected = _reference_top_p(logits, p)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            raise CheckFailed(f"case {case}: expected a tensor of shape {tuple(expected.shape)}")
        kept_got, kept_exp = torch.isfinite(got), torch.isfinite(expected)
        if not torch.equal(kept_got, kept_exp):
            raise CheckFailed(f"case {case} (p = {p}, V = {V}): you kept {int(kept_got.sum())} tokens, "
                              f"the nucleus has {int(kept_exp.sum())}")
        expect_close(got[kept_got], expected[kept_exp], what=f"case {case}: the kept logits must be unchanged")


def _reference_best_order() -> int:
    from mmlearn.data import load_pydoc_corpus
    from mmlearn.preprocess import CharTokenizer

    tr_text, va_text = load_pydoc_corpus()
    tok = CharTokenizer().train([tr_text])
    tr, va, V = torch.tensor(tok.encode(tr_text)), torch.tensor(tok.encode(va_text)), len(tok)

    def codes(ids: torch.Tensor, n: int) -> torch.Tensor:
        c = torch.zeros(len(ids) - n + 1, dtype=torch.long)
        for j in range(n):
            c = c * V + ids[j:len(ids) - n + 1 + j]
        return c

    def counts_of(table: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        keys, counts = table.unique(return_counts=True)
        i = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
        return torch.where(keys[i] == query, counts[i], 0).double()

    losses = []
    for n in range(1, 7):
        full = counts_of(codes(tr, n), codes(va, n))
        ctx = counts_of(codes(tr[:-1], n - 1), codes(va[:-1], n - 1)) if n > 1 else torch.full_like(full, len(tr))
        losses.append(-((full + 1) / (ctx + V)).log().mean().item())
    return 1 + min(range(6), key=losses.__getitem__)


@register("ex-ch06-ngram-order", hint="Compute the validation cross-entropy for every n from 1 to 6 with add-one "
                                      "smoothing over the whole vocabulary (V = len(tokenizer)), and take the lowest.")
def _check_ngram_order(best_order) -> None:
    if not isinstance(best_order, int) or isinstance(best_order, bool):
        raise CheckFailed(f"best_order must be an int between 1 and 6, got {best_order!r}")
    expected = _reference_best_order()
    if best_order != expected:
        raise CheckFailed(f"order {best_order} is not the one with the lowest validation loss; measure every n "
                          "from 1 to 6 on the book's split")
