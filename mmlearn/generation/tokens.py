"""Chapter 10 — one causal Transformer over words and image codes (the idea of DALL·E and Chameleon).

:class:`SharedVocab` gives words, image codes and four special tokens disjoint id ranges in one
vocabulary and lays out the two training orders

    text → image:  <pad>… w_1 … w_n <image> c_1 … c_M            (caption left-padded to a fixed length)
    image → text:  c_1 … c_M <text> w_1 … w_n <eos> <pad>…

:class:`TokenTransformer` is a decoder-only Transformer (the book's causal ``TransformerEncoder``) over
that vocabulary; :func:`sequence_loss` is next-token cross-entropy; :func:`sample_next` draws from the
logits with temperature and top-k; :func:`generate_codes` and :func:`generate_captions` use the same weights
for both directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmlearn._validate import require_int, require_positive, require_rank
from mmlearn.attention import TransformerEncoder
from mmlearn.preprocess import WordTokenizer

__all__ = ["SPECIAL_TOKENS", "SharedVocab", "TokenTransformer", "sequence_loss", "sample_next",
           "generate_codes", "generate_captions"]

SPECIAL_TOKENS = ("<pad>", "<image>", "<text>", "<eos>")


class SharedVocab:
    """One vocabulary: ids ``0..3`` special tokens, then ``W`` words, then ``K`` image codes.

    ``SharedVocab(captions, num_codes, grid=(8, 8))`` learns the words with the book's ``WordTokenizer``.
    ``max_words`` is the longest caption seen (in words); ``seq_len = M + max_words + 2``.
    """

    pad_id, image_id, text_id, eos_id = range(4)

    def __init__(self, captions: Sequence[str], num_codes: int, grid: tuple[int, int] = (8, 8)) -> None:
        self.tokenizer = WordTokenizer().train(captions)
        self.words = [w for w in self.tokenizer.vocab.itos if w not in ("<pad>", "<unk>", "<bos>", "<eos>")]
        self.word_to_id = {w: len(SPECIAL_TOKENS) + i for i, w in enumerate(self.words)}
        self.num_codes, self.grid = require_int(num_codes, "num_codes"), tuple(grid)
        self.code_offset = len(SPECIAL_TOKENS) + len(self.words)
        self.max_words = max(len(self.tokenizer.tokenize(c)) for c in captions)
        self.num_image_tokens = self.grid[0] * self.grid[1]
        self.seq_len = self.num_image_tokens + self.max_words + 2

    def __len__(self) -> int:
        return self.code_offset + self.num_codes

    @property
    def word_range(self) -> tuple[int, int]:
        """[start, stop) of the word ids."""
        return len(SPECIAL_TOKENS), self.code_offset

    @property
    def code_range(self) -> tuple[int, int]:
        """[start, stop) of the image-code ids."""
        return self.code_offset, len(self)

    def encode_text(self, caption: str) -> list[int]:
        """Caption -> word ids (a word never seen raises ValueError: the grammar is closed)."""
        words = self.tokenizer.tokenize(caption)
        unknown = [w for w in words if w not in self.word_to_id]
        if unknown or not words or len(words) > self.max_words:
            raise ValueError(f"caption must have 1..{self.max_words} known words, got {caption!r} (unknown: {unknown})")
        return [self.word_to_id[w] for w in words]

    def decode_text(self, ids: Sequence[int]) -> str:
        """Word ids -> caption; stops at <eos>, skips other special tokens, rejects code ids."""
        words = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if self.code_offset <= i or i < 0:
                raise ValueError(f"ids must be word ids in [0, {self.code_offset}), got {i}")
            if i >= len(SPECIAL_TOKENS):
                words.append(self.words[i - len(SPECIAL_TOKENS)])
        return " ".join(words)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) in [0, K) -> ids (B, h·w) in the code range (raster order)."""
        codes = require_rank(codes, "codes", 3, "(B, h, w)")
        if tuple(codes.shape[1:]) != self.grid or codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(f"codes must be (B, {self.grid[0]}, {self.grid[1]}) with values in [0, {self.num_codes}), "
                             f"got shape {tuple(codes.shape)}, values in [{int(codes.min())}, {int(codes.max())}]")
        return codes.reshape(len(codes), -1) + self.code_offset

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, h·w) in the code range -> codes (B, h, w)."""
        ids = require_rank(ids, "ids", 2, "(B, h·w)")
        lo, hi = self.code_range
        if ids.shape[1] != self.num_image_tokens or ids.min() < lo or ids.max() >= hi:
            raise ValueError(f"ids must be (B, {self.num_image_tokens}) with values in [{lo}, {hi}), "
                             f"got shape {tuple(ids.shape)}, values in [{int(ids.min())}, {int(ids.max())}]")
        return (ids - self.code_offset).reshape(len(ids), *self.grid)

    def text_to_image(self, captions: Sequence[str], codes: torch.Tensor | None = None) -> torch.Tensor:
        """[<pad>…; words; <image>; codes] (B, seq_len); without ``codes``, the prompt (B, max_words + 1)."""
        rows = [[self.pad_id] * (self.max_words - len(w)) + w + [self.image_id]
                for w in (self.encode_text(c) for c in captions)]
        prompt = torch.tensor(rows, dtype=torch.long)  # (B, max_words + 1)
        if codes is None:
            return prompt
        image = self.codes_to_ids(codes).cpu()
        pad = torch.full((len(rows), 1), self.pad_id, dtype=torch.long)
        return torch.cat([prompt, image, pad], 1)      # (B, seq_len): one trailing pad keeps both orders equal length

    def image_to_text(self, codes: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """[codes; <text>; words; <eos>; <pad>…] (B, seq_len); without ``captions``, the prompt (B, M + 1)."""
        image = self.codes_to_ids(codes).cpu()
        prompt = torch.cat([image, torch.full((len(image), 1), self.text_id, dtype=torch.long)], 1)
        if captions is None:
            return prompt
        if len(captions) != len(image):
            raise ValueError(f"need one caption per image: {len(image)} images, got {len(captions)} captions")
        rows = [w + [self.eos_id] + [self.pad_id] * (self.max_words - len(w))
                for w in (self.encode_text(c) for c in captions)]
        return torch.cat([prompt, torch.tensor(rows, dtype=torch.long)], 1)  # (B, seq_len)


class TokenTransformer(nn.Module):
    """Decoder-only Transformer over a shared vocabulary: token + learned position embeddings, ``depth``
    causal pre-LN blocks (:class:`mmlearn.attention.TransformerEncoder` with ``causal=True``), a linear head.

    ``forward(ids (B, T)) -> logits (B, T, V)``; position t sees ids[:, :t+1] only, and never attends to
    ``<pad>`` keys (except itself, so that a row of pads stays finite).
    """

    def __init__(self, vocab_size: int, *, dim: int = 64, depth: int = 2, num_heads: int = 4, max_len: int = 128,
                 mlp_ratio: float = 2.0, dropout: float = 0.0, pad_id: int = 0) -> None:
        super().__init__()
        self.vocab_size, self.max_len = require_int(vocab_size, "vocab_size"), require_int(max_len, "max_len")
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = TransformerEncoder(dim, depth, num_heads, causal=True, mlp_ratio=mlp_ratio, dropout=dropout,
                                         need_weights=False)  # fused attention: no weights kept
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = require_rank(ids, "ids", 2, "(B, T)")
        if ids.dtype != torch.long or ids.shape[1] > self.max_len or ids.shape[1] == 0:
            raise ValueError(f"ids must be a LongTensor (B, T) with 1 <= T <= {self.max_len}, "
                             f"got {ids.dtype} of shape {tuple(ids.shape)}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
        T = ids.shape[1]
        keep = (ids != self.pad_id)[:, None, :] | torch.eye(T, dtype=torch.bool, device=ids.device)  # (B, T, T)
        x = self.embed(ids) + self.pos(torch.arange(T, device=ids.device))                           # (B, T, dim)
        return self.head(self.blocks(x, keep))                                                       # (B, T, V)


def sequence_loss(model: TokenTransformer, ids: torch.Tensor, pad_id: int = 0, start: int = 0) -> torch.Tensor:
    """Next-token cross-entropy  −(1/|S|) Σ_{t ∈ S} log p(ids[t+1] | ids[:t+1]),

    S = the positions t >= ``start`` whose target ids[t+1] is not <pad>. ``start = 0``: the whole sequence;
    ``start`` = the position of ``<image>`` (or ``<text>``): only −log p(what follows | prompt).
    """
    ids = require_rank(ids, "ids", 2, "(B, T)")
    start = require_int(start, "start", 0, ids.shape[1] - 2)
    logits = model(ids[:, :-1])[:, start:]                   # (B, T-1-start, V)
    return F.cross_entropy(logits.transpose(1, 2), ids[:, start + 1:], ignore_index=pad_id)


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                allowed: tuple[int, int] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one id per row of ``logits`` (B, V) from softmax(logits / temperature) restricted to the
    ``top_k`` largest logits and to ids in ``allowed = [start, stop)``; ``temperature=0`` is argmax."""
    logits = require_rank(logits, "logits", 2, "(B, V)").clone()
    require_positive(temperature, "temperature", allow_zero=True)
    if allowed is not None:
        start, stop = allowed
        if not 0 <= start < stop <= logits.shape[1]:
            raise ValueError(f"allowed must be [start, stop) inside [0, {logits.shape[1]}), got {allowed}")
        logits[:, :start], logits[:, stop:] = -torch.inf, -torch.inf
    if temperature == 0:
        return logits.argmax(1)
    if top_k is not None:
        k = require_int(top_k, "top_k")
        kth = logits.topk(min(k, logits.shape[1]), dim=1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = torch.softmax(logits / temperature, 1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).flatten().to(logits.device)


@torch.no_grad()
def generate_codes(model: TokenTransformer, vocab: SharedVocab, captions: Sequence[str], *,
                   temperature: float = 1.0, top_k: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Text → image: extend [<pad>…; words; <image>] by M code ids, one at a time -> codes (B, h, w)."""
    device = next(model.parameters()).device
    ids = vocab.text_to_image(captions).to(device)           # (B, max_words + 1)
    for _ in range(vocab.num_image_tokens):
        nxt = sample_next(model(ids)[:, -1], temperature=temperature, top_k=top_k,
                          allowed=vocab.code_range, generator=generator)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return vocab.ids_to_codes(ids[:, -vocab.num_image_tokens:].cpu()).to(device)


@torch.no_grad()
def generate_captions(model: TokenTransformer, vocab: SharedVocab, codes: torch.Tensor, *,
                      temperature: float = 0.0, generator: torch.Generator | None = None) -> list[str]:
    """Image → text: extend [codes; <text>] by words until <eos> (greedy by default) -> captions."""
    device = next(model.parameters()).device
    ids = vocab.image_to_text(codes).to(device)              # (B, M + 1)
    allowed = (vocab.eos_id, vocab.code_offset)              # <eos> and the words
    for _ in range(vocab.max_words):                        # a caption has at most max_words words
        nxt = sample_next(model(ids)[:, -1], temperature=temperature, allowed=allowed, generator=generator)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return [vocab.decode_text(row) for row in ids[:, vocab.num_image_tokens + 1:].tolist()]
