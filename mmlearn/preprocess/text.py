"""Text preprocessing (chapter 2): tokenisers, a vocabulary with special tokens, stop words, padding.

Every tokenizer here maps a string to a list of integer ids and back, and reserves the same four
special ids, so the padding and masking code of later chapters works with any of them::

    <pad> = 0    <unk> = 1    <bos> = 2    <eos> = 3

- :class:`WordTokenizer` — lower-cases, splits on whitespace and punctuation (each CJK character is
  a word); unknown words map to ``<unk>``. Lossy: case and spacing are not kept.
- :class:`CharTokenizer` — one id per character seen in training; exact round-trip for those.
- :class:`BPETokenizer` — byte-level byte-pair encoding: starts from the 256 byte values, so any
  Unicode text (Chinese included) round-trips exactly; ``train`` records its merges in order.
- :class:`WordPieceTokenizer` — WordPiece: merges by the likelihood score c(ab) / (c(a) c(b)),
  encodes greedily longest-match-first with "##" continuation pieces.
- :func:`max_match` — forward / backward maximum-matching segmentation of text without spaces.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

# CJK ideographs (Chinese has no spaces between words: without a segmenter, one character = one word)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")

# Byte-level BPE pre-tokenisation (GPT-2 style): a chunk is an optional space + letters, digits, or
# other symbols, or a run of whitespace. Merges never cross chunk boundaries. The alternatives cover
# every character, so "".join(chunks) == text.
_CHUNK_RE = re.compile(r" ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")

ENGLISH_STOPWORDS = frozenset("""
a an the and or but if of at by for with about to from in on into onto up down out off over under
above below is are was were be been being am do does did have has had this that these those there
here it its i me my we our you your he him his she her they them their what which who whom
as so than too very can will just not no nor only own same such then once all any both each few
more most other some again further
""".split())
"""A small English stop-word list, shaped like the popular ones (NLTK, scikit-learn): note that it
contains negations (``not``, ``no``) and spatial words (``above``, ``below``, ``over``, ``under``)."""

CHINESE_STOPWORDS = frozenset("""
的 了 和 是 在 也 就 都 而 及 与 着 或 这 那 之 把 被 对 从 等 吗 呢 吧 啊 个 一个 我们 你们 他们 它们 不 没有
""".split())
"""A small Chinese stop-word list (function words); like many published lists it contains the
negations 不 and 没有."""


def _require_text(text: object, name: str = "text") -> str:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a str, got {type(text).__name__}")
    return text


def _require_texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise ValueError(f"texts must be an iterable of str (a list of documents), got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        _require_text(t, f"texts[{i}]")
    return texts


def _require_ids(ids: object) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"ids must be a 1-D integer tensor or a list of int, got {ids.dtype} {tuple(ids.shape)}")
        return ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValueError(f"ids must be a list of int, got {type(ids).__name__}")
    ids = list(ids)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"ids must contain only int, got {[type(i).__name__ for i in ids][:5]}...")
    return ids


# ---- vocabulary ---------------------------------------------------------------------------------

class Vocab:
    """A two-way map token <-> id. Ids 0..3 are the special tokens <pad>, <unk>, <bos>, <eos>.

    ``Vocab.build(token_lists, min_freq, max_size)`` orders the other tokens by decreasing
    frequency (ties: alphabetical), so the result is deterministic.
    """

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.itos: list[str] = list(SPECIALS)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(SPECIALS)}
        for t in tokens:
            if not isinstance(t, str):
                raise ValueError(f"tokens must be str, got {type(t).__name__}")
            if t not in self.stoi:
                self.stoi[t] = len(self.itos)
                self.itos.append(t)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Vocabulary of the tokens seen at least ``min_freq`` times, at most ``max_size`` ids in all."""
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < len(SPECIALS):
            raise ValueError(f"max_size must be >= {len(SPECIALS)} (the special tokens), got {max_size}")
        counts = Counter(t for tokens in token_lists for t in tokens)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                        key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max_size - len(SPECIALS)]
        return cls(ranked)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token -> id; a token not in the vocabulary becomes ``<unk>`` (id 1)."""
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Id -> token; raises ValueError for an id outside ``[0, len(self))``."""
        ids = _require_ids(ids)
        bad = [i for i in ids if not 0 <= i < len(self.itos)]
        if bad:
            raise ValueError(f"ids must be in [0, {len(self.itos)}), got {bad[:5]}")
        return [self.itos[i] for i in ids]

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID


# ---- word and character tokenizers --------------------------------------------------------------

class _VocabTokenizer:
    """Shared ``train``/``encode``/``decode`` for tokenizers that split a string into string tokens."""

    joiner = ""
    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, min_freq: int = 1, max_size: int | None = None) -> None:
        self.min_freq, self.max_size = min_freq, max_size
        self.vocab = Vocab()

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def train(self, texts: Iterable[str]) -> _VocabTokenizer:
        """Build the vocabulary from ``texts``; returns ``self``."""
        texts = _require_texts(texts)
        self.vocab = Vocab.build((self.tokenize(t) for t in texts), self.min_freq, self.max_size)
        return self

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """String -> ids (unknown tokens -> ``<unk>``); ``add_special`` wraps them in <bos> ... <eos>."""
        ids = self.vocab.encode(self.tokenize(_require_text(text)))
        return [BOS_ID, *ids, EOS_ID] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> string, dropping <pad>, <bos>, <eos> (``<unk>`` stays visible)."""
        tokens = self.vocab.decode(ids)
        return self.joiner.join(t for t in tokens if t not in ("<pad>", "<bos>", "<eos>"))


class WordTokenizer(_VocabTokenizer):
    """Lower-case, then split into words and punctuation marks; each CJK character is its own word.

    ``"A red circle, left of..."`` -> ``["a", "red", "circle", ",", "left", "of", ".", ".", "."]``.
    ``decode`` joins words with single spaces: case and the original spacing are lost.
    """

    joiner = " "

    def __init__(self, min_freq: int = 1, max_size: int | None = None, lowercase: bool = True) -> None:
        super().__init__(min_freq, max_size)
        self.lowercase = lowercase

    def tokenize(self, text: str) -> list[str]:
        text = _require_text(text)
        return _WORD_RE.findall(text.lower() if self.lowercase else text)


class CharTokenizer(_VocabTokenizer):
    """One token per Unicode character (code point); exact round-trip for characters seen in training."""

    def tokenize(self, text: str) -> list[str]:
        return list(_require_text(text))


# ---- byte-level BPE -----------------------------------------------------------------------------

BYTE_OFFSET = len(SPECIALS)   # byte value b has id b + 4; merge number i creates id 260 + i


def pair_counts(chunks: dict[tuple[int, ...], int]) -> Counter:
    """How often each adjacent pair of ids occurs, over chunks weighted by their frequency.

    Overlapping pairs all count (``(a, a, a)`` holds ``(a, a)`` twice). The Counter keeps the order
    of first occurrence, which breaks ties between equally frequent pairs.
    """
    counts: Counter = Counter()
    for ids, freq in chunks.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] += freq
    return counts


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    ``merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]`` (occurrences never overlap).
    """
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text must be valid Unicode (no lone surrogates), got {error.object[error.start:error.end]!r}"
                         ) from None


class BPETokenizer:
    """Byte-level byte-pair encoding (Sennrich et al., 2016; GPT-2's byte-level variant).

    Training starts from the 256 byte values (ids 4..259, after the 4 special tokens) and repeats
    ``vocab_size - 260`` times: count adjacent pairs, merge the most frequent pair (ties: first seen)
    into a new id. ``merges[i] = (left, right)`` created id ``260 + i``; ``merge_counts[i]`` is how
    often that pair occurred when it was merged. Training stops early when no pair occurs twice.

    Encoding a text applies the merges in the order they were learned, so any string — any language,
    any emoji — becomes ids, and ``decode(encode(text)) == text`` exactly.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, merges: Iterable[tuple[int, int]] = ()) -> None:
        self.merges: list[tuple[int, int]] = []
        self.merge_counts: list[int] = []
        self.token_bytes: list[bytes] = [s.encode() for s in SPECIALS] + [bytes([b]) for b in range(256)]
        for pair in merges:
            self._add_merge(tuple(pair))
        self._cache: dict[str, list[int]] = {}

    def _add_merge(self, pair: tuple[int, int], count: int = 0) -> None:
        if len(pair) != 2 or not all(isinstance(i, int) and BYTE_OFFSET <= i < len(self.token_bytes) for i in pair):
            raise ValueError(f"a merge must be a pair of existing non-special ids in [{BYTE_OFFSET}, "
                             f"{len(self.token_bytes)}), got {pair!r}")
        self.merges.append(pair)
        self.merge_counts.append(count)
        self.token_bytes.append(self.token_bytes[pair[0]] + self.token_bytes[pair[1]])

    def __len__(self) -> int:
        return len(self.token_bytes)

    @property
    def ranks(self) -> dict[tuple[int, int], int]:
        """Merge pair -> the id it creates (= its priority: lower ids were learned first)."""
        return {pair: BYTE_OFFSET + 256 + i for i, pair in enumerate(self.merges)}

    @staticmethod
    def pretokenize(text: str) -> list[str]:
        """Split into chunks (optional space + word, number, symbols, or whitespace); merges stay inside."""
        return _CHUNK_RE.findall(_require_text(text))

    def train(self, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn ``vocab_size - 260`` merges from ``texts`` (fewer if no pair repeats); returns ``self``."""
        texts = _require_texts(texts)
        if not isinstance(vocab_size, int) or vocab_size < BYTE_OFFSET + 256:
            raise ValueError(f"vocab_size must be an int >= {BYTE_OFFSET + 256} (4 specials + 256 bytes), "
                             f"got {vocab_size!r}")
        self.__init__()
        words = Counter(c for t in texts for c in self.pretokenize(t))   # chunk string -> frequency
        chunks = {tuple(b + BYTE_OFFSET for b in _utf8(w)): f for w, f in words.items()}
        while len(self) < vocab_size:
            counts = pair_counts(chunks)
            if not counts:
                break
            pair, count = max(counts.items(), key=lambda kv: kv[1])   # first seen wins ties
            if count < 2:
                break
            new_id = len(self)
            self._add_merge(pair, count)
            chunks = {tuple(merge_pair(ids, pair, new_id)): f for ids, f in chunks.items()}
        return self

    def _encode_chunk(self, chunk: str, ranks: dict[tuple[int, int], int]) -> list[int]:
        ids = [b + BYTE_OFFSET for b in _utf8(chunk)]
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break
            ids = merge_pair(ids, pair, ranks[pair])
        return ids

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """String -> ids: UTF-8 bytes of each chunk, then the learned merges, earliest first."""
        ranks = self.ranks
        ids: list[int] = []
        for chunk in self.pretokenize(text):
            if chunk not in self._cache:
                if len(self._cache) > 50_000:
                    self._cache.clear()
                self._cache[chunk] = self._encode_chunk(chunk, ranks)
            ids.extend(self._cache[chunk])
        return [BOS_ID, *ids, EOS_ID] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> string: concatenate the bytes of each token (specials dropped), decode UTF-8.

        A sequence that cuts a multi-byte character is not valid UTF-8: its broken bytes become U+FFFD.
        """
        ids = _require_ids(ids)
        bad = [i for i in ids if not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"ids must be in [0, {len(self)}), got {bad[:5]}")
        return b"".join(self.token_bytes[i] for i in ids if i >= BYTE_OFFSET).decode("utf-8", errors="replace")

    def token_str(self, i: int) -> str:
        """A readable form of token ``i`` (its bytes as text, or as escapes where not valid UTF-8)."""
        return self.token_bytes[i].decode("utf-8", errors="backslashreplace")


# ---- stop words and padding ---------------------------------------------------------------------

def remove_stopwords(tokens: Sequence[str], stopwords: Iterable[str] | str | None = None) -> list[str]:
    """Drop every token that is in ``stopwords``.

    ``stopwords``: ``None`` or ``"english"`` -> :data:`ENGLISH_STOPWORDS`; ``"chinese"`` ->
    :data:`CHINESE_STOPWORDS`; or any collection of words. Matching is exact (tokenize first:
    :class:`WordTokenizer` lower-cases).
    """
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValueError(f"tokens must be a list of str (tokenize the text first), got {type(tokens).__name__}")
    if stopwords is None or stopwords == "english":
        stop = ENGLISH_STOPWORDS
    elif stopwords == "chinese":
        stop = CHINESE_STOPWORDS
    elif isinstance(stopwords, str):
        raise ValueError(f"stopwords must be 'english', 'chinese', None or a collection of words, got {stopwords!r}")
    else:
        stop = frozenset(stopwords)
    return [t for t in tokens if t not in stop]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID, max_len: int | None = None,
                  truncate: str = "right", *, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length id lists into ``ids`` (N, L) and a boolean ``mask`` (N, L), True = real token.

    L = ``max_len`` or the longest sequence. Shorter sequences are padded on the right with
    ``pad_id``; longer ones are truncated: ``truncate="right"`` keeps the first L ids, ``"left"``
    keeps the last L. The mask comes from the lengths, not from the values (a real id equal to
    ``pad_id`` stays True).
    """
    if isinstance(seqs, (str, torch.Tensor)) or not isinstance(seqs, Sequence) or len(seqs) == 0:
        raise ValueError(f"seqs must be a non-empty list of id sequences, got {type(seqs).__name__} {seqs!r:.40}")
    if truncate not in ("right", "left"):
        raise ValueError(f"truncate must be 'right' or 'left', got {truncate!r}")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")
    if not isinstance(pad_id, int) or isinstance(pad_id, bool):
        raise ValueError(f"pad_id must be an int, got {pad_id!r}")
    rows = [_require_ids(s) for s in seqs]
    L = max_len if max_len is not None else max(len(r) for r in rows)
    rows = [r[:L] if truncate == "right" else r[max(len(r) - L, 0):] for r in rows]
    ids = torch.tensor([r + [pad_id] * (L - len(r)) for r in rows], dtype=torch.long, device=device)  # (N, L)
    lengths = torch.tensor([len(r) for r in rows], device=ids.device)                                # (N,)
    mask = torch.arange(L, device=ids.device)[None, :] < lengths[:, None]                             # (N, L)
    return ids, mask


# ---- Chinese word segmentation: maximum matching ------------------------------------------------

def max_match(text: str, dictionary: Iterable[str], *, reverse: bool = False) -> list[str]:
    """Greedy dictionary segmentation (maximum matching) of a text without spaces.

    Forward (``reverse=False``): at position p take the longest dictionary word w with
    text[p : p + |w|] == w, else the single character text[p]; continue after it. Backward
    (``reverse=True``) does the same from the end of the text. ``"".join(result) == text``.
    """
    text = _require_text(text)
    if isinstance(dictionary, str) or not isinstance(dictionary, Iterable):
        raise ValueError(f"dictionary must be a collection of words, got {type(dictionary).__name__}")
    words = {w for w in dictionary if isinstance(w, str) and w}
    longest = max((len(w) for w in words), default=1)
    s = text[::-1] if reverse else text
    vocab = {w[::-1] for w in words} if reverse else words
    out, p = [], 0
    while p < len(s):
        n = next((n for n in range(min(longest, len(s) - p), 1, -1) if s[p:p + n] in vocab), 1)
        out.append(s[p:p + n])
        p += n
    return [w[::-1] for w in reversed(out)] if reverse else out


# ---- WordPiece ----------------------------------------------------------------------------------

def _wordpiece_split(word: str) -> tuple[str, ...]:
    return (word[0], *("##" + c for c in word[1:]))


def _join_pieces(a: str, b: str) -> str:
    return a + b.removeprefix("##")


class WordPieceTokenizer:
    """WordPiece (Schuster & Nakajima, 2012; BERT): subword pieces, "##" marks a piece inside a word.

    ``train`` starts from the characters (a word's first character plain, the others "##"-prefixed)
    and merges, again and again, the adjacent pair with the highest **likelihood score**

        score(a, b) = c(ab) / (c(a) c(b))        (c = counts in the corpus' current segmentation),

    not the most frequent pair as BPE does. ``encode`` cuts each word **greedily, longest match
    first**: the longest vocabulary piece that starts the word, then the longest "##" piece that
    continues it, …; a word that cannot be covered becomes ``<unk>``. Words come from
    :class:`WordTokenizer` (lower-cased, punctuation split off); ids 0–3 are the usual specials.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self) -> None:
        self.vocab = Vocab()
        self.merges: list[tuple[str, str]] = []
        self._words = WordTokenizer()

    def __len__(self) -> int:
        return len(self.vocab)

    def _best_pair(self, words: dict[tuple[str, ...], int]) -> tuple[str, str] | None:
        pairs: Counter = Counter()
        units: Counter = Counter()
        for pieces, f in words.items():
            for u in pieces:
                units[u] += f
            for pair in zip(pieces, pieces[1:]):
                pairs[pair] += f
        if not pairs:
            return None
        return max(pairs, key=lambda p: pairs[p] / (units[p[0]] * units[p[1]]))   # first seen wins ties

    def train(self, texts: Iterable[str], vocab_size: int) -> WordPieceTokenizer:
        """Learn pieces from ``texts`` until the vocabulary (specials + characters + merges) has
        ``vocab_size`` entries or no pair is left; returns ``self``."""
        texts = _require_texts(texts)
        counts = Counter(w for t in texts for w in self._words.tokenize(t))
        words = {_wordpiece_split(w): f for w, f in counts.items()}
        alphabet = sorted({u for pieces in words for u in pieces})
        if not isinstance(vocab_size, int) or vocab_size < len(SPECIALS) + len(alphabet):
            raise ValueError(f"vocab_size must be an int >= {len(SPECIALS) + len(alphabet)} (specials + the "
                             f"{len(alphabet)} initial pieces), got {vocab_size!r}")
        self.vocab, self.merges = Vocab(alphabet), []
        while len(self.vocab) < vocab_size and (pair := self._best_pair(words)) is not None:
            new = _join_pieces(*pair)
            self.merges.append(pair)
            if new not in self.vocab:
                self.vocab.stoi[new] = len(self.vocab.itos)
                self.vocab.itos.append(new)
            words = {self._merge(p, pair, new): f for p, f in words.items()}
        return self

    @staticmethod
    def _merge(pieces: tuple[str, ...], pair: tuple[str, str], new: str) -> tuple[str, ...]:
        out, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
                out.append(new)
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        return tuple(out)

    def tokenize_word(self, word: str) -> list[str]:
        """Greedy longest-match-first pieces of one word, or ``["<unk>"]`` if it cannot be covered."""
        pieces, start = [], 0
        while start < len(word):
            prefix = "##" if start else ""
            end = next((e for e in range(len(word), start, -1) if prefix + word[start:e] in self.vocab), None)
            if end is None:
                return [SPECIALS[UNK_ID]]
            pieces.append(prefix + word[start:end])
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self._words.tokenize(_require_text(text)) for p in self.tokenize_word(w)]

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        ids = self.vocab.encode(self.tokenize(text))
        return [BOS_ID, *ids, EOS_ID] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> words: a "##" piece is glued to the previous one; specials dropped."""
        words: list[str] = []
        for t in self.vocab.decode(_require_ids(ids)):
            if t in SPECIALS[:1] + SPECIALS[2:]:
                continue
            if t.startswith("##") and words:
                words[-1] += t[2:]
            else:
                words.append(t)
        return " ".join(words)
