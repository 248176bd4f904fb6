"""Tests of mmlearn.preprocess.text: tokenizers, vocabulary, stop words, padding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmlearn.preprocess import BPETokenizer, CharTokenizer, Vocab, WordTokenizer, pad_sequences, remove_stopwords
from mmlearn.preprocess.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, merge_pair, pair_counts

CORPUS = [
    "a large red circle left of a small blue square",
    "a small green triangle right of a large yellow circle",
    "what colour is the circle? red",
    "多模态大模型是一种能够处理不同类型数据的神经网络模型。",
    "Les modèles multimodaux traitent les images, le texte et le son.",
]


_BPE = BPETokenizer().train(CORPUS * 3, vocab_size=400)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return _BPE


# ---- vocabulary and word/char tokenizers ----------------------------------------------------------

def test_special_ids_are_shared_by_every_tokenizer(bpe):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    for tok in (WordTokenizer().train(CORPUS), CharTokenizer().train(CORPUS), bpe, Vocab()):
        assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert Vocab().itos == ["<pad>", "<unk>", "<bos>", "<eos>"]


def test_vocab_build_orders_by_frequency_then_alphabet_and_respects_limits():
    v = Vocab.build([["b", "a", "c", "a"], ["c", "d"]])
    assert v.itos[4:] == ["a", "c", "b", "d"]
    assert Vocab.build([["b", "a", "c", "a"], ["c", "d"]], min_freq=2).itos[4:] == ["a", "c"]
    assert len(Vocab.build([["b", "a", "c", "a"]], max_size=5)) == 5
    assert v.encode(["a", "zebra"]) == [4, UNK_ID]
    assert v.decode([4, 5]) == ["a", "c"]


def test_word_tokenizer_lowercases_splits_punctuation_and_cjk():
    tok = WordTokenizer()
    assert tok.tokenize("A Red circle, LEFT of... it!") == ["a", "red", "circle", ",", "left", "of", ".", ".", ".",
                                                           "it", "!"]
    assert tok.tokenize("  \t\n ") == []
    assert tok.tokenize("多模态model") == ["多", "模", "态", "model"]


def test_word_tokenizer_unknown_words_map_to_unk_and_specials_wrap():
    tok = WordTokenizer().train(CORPUS)
    ids = tok.encode("a purple circle", add_special=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and ids[2] == UNK_ID
    assert tok.decode(ids) == "a <unk> circle"
    assert tok.decode(tok.encode("A large RED circle.")) == "a large red circle ."   # lossy: case, spacing
    assert tok.decode(tok.encode(CORPUS[0])) == CORPUS[0]


@given(st.lists(st.sampled_from(sorted(set("".join(CORPUS)))), max_size=60))
def test_char_tokenizer_round_trips_seen_characters(chars):
    tok = CharTokenizer().train(CORPUS)
    text = "".join(chars)
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text)


def test_char_tokenizer_unseen_character_is_unk():
    tok = CharTokenizer().train(["abc"])
    assert tok.encode("abz") == [tok.vocab.stoi["a"], tok.vocab.stoi["b"], UNK_ID]


# ---- byte-level BPE ---------------------------------------------------------------------------------

def test_bpe_merges_on_hand_computed_corpus():
    # "aaabdaaabac": pairs aa:4 ab:2 bd:1 da:1 ba:1 ac:1 -> merge (a,a)=Z -> "ZabdZabac"
    # pairs Za:2 ab:2 bd dZ ba ac: tie, (Z,a) seen first -> Y="aaa" -> "YbdYbac"; Yb:2 -> X="aaab" -> "XdXac"
    # every pair now occurs once: training stops with 3 merges.
    tok = BPETokenizer().train(["aaabdaaabac"], vocab_size=300)
    a, b = ord("a") + 4, ord("b") + 4
    assert tok.merges == [(a, a), (260, a), (261, b)]
    assert tok.merge_counts == [4, 2, 2]
    assert [tok.token_bytes[i] for i in (260, 261, 262)] == [b"aa", b"aaa", b"aaab"]
    assert tok.encode("aaabdaaabac") == [262, ord("d") + 4, 262, a, ord("c") + 4]
    assert len(tok) == 263


def test_bpe_vocab_size_is_respected_and_prefix_of_longer_training():
    small = BPETokenizer().train(CORPUS, vocab_size=270)
    large = BPETokenizer().train(CORPUS, vocab_size=320)
    assert len(small) == 270
    assert large.merges[:10] == small.merges


def test_merge_pair_and_pair_counts():
    assert merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 7) == [7, 3, 7]
    assert merge_pair([], (1, 2), 7) == []
    counts = pair_counts({(5, 5, 5): 2, (1, 5): 1})
    assert counts == {(5, 5): 4, (1, 5): 1}


def test_bpe_round_trips_chinese_and_compresses_it(bpe):
    text = "多模态大模型"
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))   # the corpus contains it: merges apply


def test_bpe_encoding_is_the_result_of_applying_merges_in_order(bpe):
    # reference: apply every merge, in training order, to the whole byte sequence of each chunk
    for text in CORPUS:
        ref = []
        for chunk in bpe.pretokenize(text):
            ids = [b + 4 for b in chunk.encode("utf-8")]
            for i, pair in enumerate(bpe.merges):
                ids = merge_pair(ids, pair, 260 + i)
            ref += ids
        assert bpe.encode(text) == ref


@given(st.one_of(st.text(max_size=80),
                 st.text(alphabet=st.sampled_from(sorted(set("".join(CORPUS))) + ["😀", "é", "\n"]), max_size=80)))
def test_bpe_round_trips_any_unicode(text):
    ids = _BPE.encode(text)
    assert _BPE.decode(ids) == text
    assert all(0 <= i < len(_BPE) for i in ids)
    assert "".join(_BPE.pretokenize(text)) == text


def test_bpe_decode_of_a_cut_character_is_replacement_not_crash(bpe):
    first_byte = "多".encode()[0] + 4
    assert bpe.decode([first_byte]) == "\ufffd"
    assert bpe.decode([PAD_ID, BOS_ID, *bpe.encode("ok"), EOS_ID]) == "ok"


def test_bpe_from_merges_reproduces_tokenizer(bpe):
    copy = BPETokenizer(bpe.merges[:20])
    assert copy.merges == bpe.merges[:20]
    assert copy.encode("a large red circle") == BPETokenizer().train(CORPUS * 3, 280).encode("a large red circle")


# ---- stop words and padding ---------------------------------------------------------------------

def test_remove_stopwords_default_chinese_and_custom():
    tokens = WordTokenizer().tokenize("The circle is not red")
    assert remove_stopwords(tokens) == ["circle", "red"]               # the negation is lost (by design of the list)
    assert remove_stopwords(tokens, {"the", "is"}) == ["circle", "not", "red"]
    assert remove_stopwords(list("多模态的模型"), "chinese") == list("多模态模型")


@given(st.lists(st.lists(st.integers(0, 50), max_size=12), min_size=1, max_size=8),
       st.one_of(st.none(), st.integers(1, 10)), st.sampled_from(["right", "left"]), st.integers(0, 3))
def test_pad_sequences_properties(seqs, max_len, truncate, pad_id):
    ids, mask = pad_sequences(seqs, pad_id, max_len=max_len, truncate=truncate)
    L = max_len if max_len is not None else max(len(s) for s in seqs)
    assert ids.shape == mask.shape == (len(seqs), L)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    for row, m, s in zip(ids.tolist(), mask.tolist(), seqs):
        n = min(len(s), L)
        kept = s[:n] if truncate == "right" else s[len(s) - n:]
        assert m == [True] * n + [False] * (L - n)          # mask from lengths, real tokens first
        assert row == kept + [pad_id] * (L - n)


def test_pad_sequences_on_device(device):
    ids, mask = pad_sequences([[1, 2], [3]], device=device)
    assert ids.device.type == device.type and mask.device.type == device.type
    torch.testing.assert_close(ids.cpu(), torch.tensor([[1, 2], [3, 0]]))


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_input_raises_value_error(bpe):
    with pytest.raises(ValueError, match="non-empty list"):
        pad_sequences([])
    with pytest.raises(ValueError, match="non-empty list"):
        pad_sequences(torch.ones(2, 3))
    with pytest.raises(ValueError, match="truncate"):
        pad_sequences([[1]], truncate="middle")
    with pytest.raises(ValueError, match="max_len"):
        pad_sequences([[1]], max_len=0)
    with pytest.raises(ValueError, match="only int"):
        pad_sequences([[1.5, 2]])
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer().train(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="texts must be an iterable"):
        BPETokenizer().train("just one string", vocab_size=300)
    with pytest.raises(ValueError, match="texts\\[1\\] must be a str"):
        WordTokenizer().train(["ok", 3])
    with pytest.raises(ValueError, match="text must be a str"):
        WordTokenizer().encode(["a", "list"])
    with pytest.raises(ValueError, match="lone surrogates"):
        bpe.encode("bad \ud800 text")
    with pytest.raises(ValueError, match="ids must be in"):
        bpe.decode([10_000])
    with pytest.raises(ValueError, match="ids must be in"):
        WordTokenizer().train(CORPUS).decode([-1])
    with pytest.raises(ValueError, match="tokenize the text first"):
        remove_stopwords("the circle is red")
    with pytest.raises(ValueError, match="'english', 'chinese'"):
        remove_stopwords(["a"], "french")
    with pytest.raises(ValueError, match="merge must be a pair"):
        BPETokenizer([(4, 999)])


# ---- maximum matching and WordPiece -------------------------------------------------------------

from mmlearn.preprocess.text import WordPieceTokenizer, max_match  # noqa: E402

_DICT = {"研究", "研究生", "生命", "起源", "多模态", "模型", "大模型", "模态"}


def _fmm_reference(text: str, words: set[str]) -> list[str]:
    """Forward maximum matching by trying every end position, longest first (no length cap)."""
    out, p = [], 0
    while p < len(text):
        end = max((e for e in range(p + 2, len(text) + 1) if text[p:e] in words), default=p + 1)
        out.append(text[p:end])
        p = end
    return out


def test_max_match_known_cases() -> None:
    assert max_match("研究生命起源", _DICT) == ["研究生", "命", "起源"]          # forward: greedy mistake
    assert max_match("研究生命起源", _DICT, reverse=True) == ["研究", "生命", "起源"]
    assert max_match("多模态大模型", _DICT) == ["多模态", "大模型"]
    assert max_match("", _DICT) == []


@given(st.lists(st.sampled_from(list("研究生命起源多模态大型")), max_size=12))
def test_max_match_matches_reference_and_covers_text(chars: list[str]) -> None:
    text = "".join(chars)
    fwd, bwd = max_match(text, _DICT), max_match(text, _DICT, reverse=True)
    assert fwd == _fmm_reference(text, _DICT)
    assert bwd == [w[::-1] for w in reversed(_fmm_reference(text[::-1], {w[::-1] for w in _DICT}))]
    assert "".join(fwd) == "".join(bwd) == text
    assert all(w in _DICT or len(w) == 1 for w in fwd + bwd)


def test_wordpiece_greedy_longest_match_first() -> None:
    wp = WordPieceTokenizer()
    for piece in ["un", "##aff", "##able", "##a", "##f", "a", "u", "##n", "##b", "##l", "##e"]:
        wp.vocab.stoi[piece] = len(wp.vocab.itos)
        wp.vocab.itos.append(piece)
    assert wp.tokenize_word("unaffable") == ["un", "##aff", "##able"]          # BERT's example
    assert wp.tokenize_word("unable") == ["un", "##able"]
    assert wp.tokenize_word("xun") == ["<unk>"]                                 # no piece starts with x
    assert wp.decode(wp.encode("unaffable unable")) == "unaffable unable"


def test_wordpiece_train_uses_likelihood_score() -> None:
    # "ab" occurs 3 times but a and b are frequent elsewhere; "##x ##y" occurs twice, never apart
    texts = ["ab ab ab aaaa bbbb axy axy"]
    wp = WordPieceTokenizer().train(texts, vocab_size=len(SPECIALS_N) + 7 + 1)
    assert wp.merges[0] == ("##x", "##y")
    counts = _pair_counts_pieces(texts)
    assert max(counts, key=counts.get) == ("a", "##b")                         # BPE's choice: the most frequent


SPECIALS_N = ("<pad>", "<unk>", "<bos>", "<eos>")


def _pair_counts_pieces(texts: list[str]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for w in " ".join(texts).split():
        pieces = [w[0]] + ["##" + c for c in w[1:]]
        for pair in zip(pieces, pieces[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def test_wordpiece_round_trips_training_words() -> None:
    wp = WordPieceTokenizer().train(CORPUS, vocab_size=120)
    for text in CORPUS[:3]:
        words = WordTokenizer().tokenize(text)
        assert wp.decode(wp.encode(text)) == " ".join(words)
        assert UNK_ID not in wp.encode(text)
    assert len(wp) == 120


def test_segmentation_bad_input() -> None:
    with pytest.raises(ValueError, match="text must be a str"):
        max_match(["研究"], _DICT)
    with pytest.raises(ValueError, match="dictionary must be a collection"):
        max_match("研究", "研究")
    with pytest.raises(ValueError, match="vocab_size must be an int"):
        WordPieceTokenizer().train(CORPUS, vocab_size=5)
    with pytest.raises(ValueError, match="texts must be an iterable"):
        WordPieceTokenizer().train("a text", vocab_size=100)
