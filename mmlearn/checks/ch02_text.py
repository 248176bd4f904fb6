"""Checks for the exercises of notebooks/02_preprocessing_text.ipynb and 02_preprocessing_text_subwords.ipynb."""

from __future__ import annotations

import re
import string

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
from mmlearn.preprocess.text import BPETokenizer, Vocab, WordTokenizer, pad_sequences, remove_stopwords


def _choice(seq, gen: torch.Generator):
    return seq[int(torch.randint(len(seq), (1,), generator=gen))]


def _random_sentence(gen: torch.Generator) -> str:
    words = []
    for _ in range(int(torch.randint(1, 9, (1,), generator=gen))):
        kind = int(torch.randint(5, (1,), generator=gen))
        n = int(torch.randint(1, 7, (1,), generator=gen))
        if kind <= 2:
            letters = string.ascii_letters if kind else string.ascii_lowercase
            words.append("".join(_choice(letters, gen) for _ in range(n)))
        elif kind == 3:
            words.append("".join(_choice(string.digits, gen) for _ in range(n)))
        else:
            words.append("".join(_choice(".,;:!?'()-\"", gen) for _ in range(min(n, 3))))
    seps = [_choice([" ", "  ", "\t", "\n", ""], gen) for _ in words]
    return "".join(s + w for s, w in zip(seps, words))


@register("ex-ch02-text-utf8",
          hint="Each of these Chinese characters lies in U+4E00..U+9FFF, the 3-byte range of UTF-8.")
def _check_utf8(answer) -> None:
    expect_number(answer, len("多模态大模型".encode()), what="UTF-8 bytes of '多模态大模型'", tol=0)


@register("ex-ch02-text-tokenize",
          hint="Lower-case first; a token is a run of letters/digits (\\w+) or one single punctuation mark.")
def _check_tokenize(tokenize) -> None:
    gen, ref = fresh_generator(), WordTokenizer()
    for case, text in enumerate(["The circle is NOT red.", "left of...the square!", "", *(
            _random_sentence(gen) for _ in range(30))]):
        expect_equal(tokenize(text), ref.tokenize(text), what=f"case {case}: tokenize({text!r})")


@register("ex-ch02-text-train-bpe",
          hint="Count pairs inside each chunk, times the chunk's frequency; ties go to the pair seen first; "
               "stop when the best pair occurs fewer than 2 times.")
def _check_train_bpe(train_bpe) -> None:
    gen = fresh_generator()
    corpora = [["aaabdaaabac"], ["a red circle", "a red square", "a blue circle"], ["多模态 模型 多模态"]]
    for _ in range(6):
        words = ["".join(_choice("abcd", gen) for _ in range(int(torch.randint(1, 6, (1,), generator=gen))))
                 for _ in range(6)]
        corpora.append([" ".join(_choice(words, gen) for _ in range(int(torch.randint(1, 12, (1,), generator=gen))))
                        for _ in range(3)])
    for case, texts in enumerate(corpora):
        n = int(torch.randint(1, 12, (1,), generator=gen))
        expected = BPETokenizer().train(texts, vocab_size=260 + n).merges
        got = train_bpe(list(texts), n)
        if not isinstance(got, list):
            raise CheckFailed(f"case {case}: train_bpe must return a list of (left, right) pairs, "
                              f"got {type(got).__name__}")
        expect_equal([tuple(p) for p in got], expected, what=f"case {case}: train_bpe({texts!r}, {n})")


@register("ex-ch02-text-vocab",
          hint="Specials first (ids 0-3); then tokens with count >= min_freq, by decreasing count, ties alphabetical.")
def _check_vocab(build_vocab) -> None:
    gen = fresh_generator()
    for case in range(8):
        words = ["".join(_choice("abc", gen) for _ in range(int(torch.randint(1, 3, (1,), generator=gen))))
                 for _ in range(8)]
        token_lists = [[_choice(words, gen) for _ in range(int(torch.randint(0, 10, (1,), generator=gen)))]
                       for _ in range(4)]
        min_freq = int(torch.randint(1, 4, (1,), generator=gen))
        expected = Vocab.build(token_lists, min_freq=min_freq).itos
        expect_equal(list(build_vocab(token_lists, min_freq)), expected,
                     what=f"case {case}: build_vocab({token_lists}, min_freq={min_freq})")


@register("ex-ch02-text-pad-left",
          hint="Put the padding in front: row i is [pad] * (L - len(seq)) + seq; the mask marks the real ids.")
def _check_pad_left(pad_left) -> None:
    gen = fresh_generator()
    for case in range(10):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        seqs = [torch.randint(0, 50, (int(torch.randint(0, 8, (1,), generator=gen)),), generator=gen).tolist()
                for _ in range(n)]
        if all(len(s) == 0 for s in seqs):
            seqs[0] = [7]
        pad_id = int(torch.randint(0, 3, (1,), generator=gen))
        ids, mask = pad_sequences([s[::-1] for s in seqs], pad_id)
        expected_ids, expected_mask = ids.flip(1), mask.flip(1)
        got = pad_left(seqs, pad_id)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise CheckFailed(f"case {case}: pad_left must return a tuple (ids, mask), got {type(got).__name__}")
        expect_close(got[0], expected_ids, what=f"case {case}: ids of pad_left({seqs}, pad_id={pad_id})")
        if not isinstance(got[1], torch.Tensor) or got[1].dtype != torch.bool:
            raise CheckFailed(f"case {case}: the mask must be a bool tensor, got {getattr(got[1], 'dtype', got[1])}")
        expect_equal(got[1].tolist(), expected_mask.tolist(), what=f"case {case}: mask of pad_left({seqs})")


@register("ex-ch02-text-stopwords",
          hint="Keep every word that can change the meaning or the answer: relations, numbers, yes/no, negations.")
def _check_stopwords(stopwords) -> None:
    from mmlearn.data import RELATIONS, make_shapes

    if isinstance(stopwords, str) or not hasattr(stopwords, "__iter__"):
        raise CheckFailed(f"answer must be a set of words, got {type(stopwords).__name__}")
    stop, tok = set(stopwords), WordTokenizer()
    missing = {"a", "the", "is"} - stop
    if missing:
        raise CheckFailed(f"your list keeps {sorted(missing)}: a stop-word list should remove at least these")
    key = lambda text: tuple(remove_stopwords(tok.tokenize(text), stop))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=fresh_generator()))
    batch = make_shapes(300, max_objects=3, seed=seed)
    relation = re.compile("|".join(RELATIONS))
    for text in batch.captions + batch.questions:          # each text vs its twins with another relation
        for twin in {relation.sub(r, text) for r in RELATIONS} - {text}:
            if key(twin) == key(text):
                raise CheckFailed(f"after removing your stop words, {text!r} and {twin!r} both become "
                                  f"{' '.join(key(text))!r}: a model can no longer tell them apart")
    seen: dict[tuple[str, ...], str] = {}
    for text in sorted(set(batch.questions) | set(batch.captions)):
        if key(text) in seen:
            raise CheckFailed(f"after removing your stop words, {seen[key(text)]!r} and {text!r} both become "
                              f"{' '.join(key(text))!r}")
        seen[key(text)] = text
    for answer in sorted(set(batch.answers) | {"yes", "no"}):
        if not key(answer):
            raise CheckFailed(f"your list deletes the answer {answer!r}: a VQA model could never output it")


# ---- notebooks/02_preprocessing_text_subwords.ipynb ----------------------------------------------

@register("ex-ch02-text2-fmm", hint="At each position try the lengths from the longest dictionary word down "
                                   "to 2; no match means one character.")
def _check_fmm(fmm) -> None:
    from mmlearn.preprocess.text import max_match

    gen = fresh_generator()
    alphabet = "研究生命起源多模态大型"
    cases = [("研究生命起源", {"研究", "研究生", "生命", "起源"}), ("", {"a"}), ("abc", set())]
    for _ in range(25):
        words = {"".join(_choice(alphabet, gen) for _ in range(int(torch.randint(2, 5, (1,), generator=gen))))
                 for _ in range(int(torch.randint(1, 8, (1,), generator=gen)))}
        text = "".join(_choice(alphabet, gen) for _ in range(int(torch.randint(0, 15, (1,), generator=gen))))
        cases.append((text, words))
    for case, (text, words) in enumerate(cases):
        got = call_student(fmm, text, set(words), what=f"case {case}")
        expect_equal(got, max_match(text, words), what=f"case {case}: fmm({text!r}, {sorted(words)})")


@register("ex-ch02-text2-heaps", hint="Words with n·p_k ≥ 1 have appeared; solve n·k^(-s) ≈ 1 for k.")
def _check_heaps(answer) -> None:
    expect_number(answer, 1 / 1.25, what="the Heaps exponent for s = 1.25", tol=1e-3)


@register("ex-ch02-text2-oov", hint="Walk down Counter(train).most_common() and add each word's held-out "
                                   "count until at most 5 % of the held-out words are uncovered.")
def _check_oov(answer) -> None:
    from collections import Counter
    from pydoc_data.topics import topics

    words = [t for t in WordTokenizer().tokenize("\n".join(topics[k] for k in sorted(topics))) if t.isalpha()]
    cut = int(0.8 * len(words))
    held, covered, expected = Counter(words[cut:]), 0, None
    for k, (w, _) in enumerate(Counter(words[:cut]).most_common(), start=1):
        covered += held.get(w, 0)
        if 1 - covered / (len(words) - cut) <= 0.05:
            expected = k
            break
    expect_number(answer, expected, what="the smallest vocabulary size K with OOV <= 5 %", tol=0)


@register("ex-ch02-text2-nfd", hint="Count the letters, then add one combining mark for each accented letter.")
def _check_nfd(answer) -> None:
    import unicodedata

    expect_number(answer, len(unicodedata.normalize("NFD", "Ångström")), what="code points of NFD('Ångström')",
                  tol=0)
