"""Chapter 10: the shared vocabulary and sequence layout, the causal token Transformer, sampling, bad inputs."""

from __future__ import annotations

import pytest
import torch

from mmlearn.data import make_shapes
from mmlearn.generation.tokens import (
    SharedVocab,
    TokenTransformer,
    generate_captions,
    generate_codes,
    sample_next,
    sequence_loss,
)

CAPTIONS = make_shapes(40, seed=0).captions


@pytest.fixture
def vocab() -> SharedVocab:
    return SharedVocab(CAPTIONS, num_codes=10, grid=(2, 3))


def test_vocabulary_ranges_are_disjoint(vocab):
    words, codes = set(range(*vocab.word_range)), set(range(*vocab.code_range))
    assert not words & codes and not words & set(range(4)) and not codes & set(range(4))
    assert len(vocab) == 4 + len(words) + len(codes) and len(codes) == 10


def test_layout_round_trip(vocab):
    codes = torch.randint(0, 10, (5, 2, 3))
    caps = CAPTIONS[:5]
    t2i, i2t = vocab.text_to_image(caps, codes), vocab.image_to_text(codes, caps)
    assert t2i.shape == i2t.shape == (5, vocab.seq_len)
    M, n = vocab.num_image_tokens, vocab.max_words
    assert (t2i[:, n] == vocab.image_id).all() and (i2t[:, M] == vocab.text_id).all()
    assert torch.equal(vocab.ids_to_codes(t2i[:, n + 1:n + 1 + M]), codes)
    assert torch.equal(vocab.ids_to_codes(i2t[:, :M]), codes)
    for row_t2i, row_i2t, caption in zip(t2i.tolist(), i2t.tolist(), caps):
        assert vocab.decode_text(row_t2i[:n]) == caption          # left-padded caption
        assert vocab.decode_text(row_i2t[M + 1:]) == caption      # stops at <eos>
    assert torch.equal(vocab.text_to_image(caps), t2i[:, :n + 1])
    assert torch.equal(vocab.image_to_text(codes), i2t[:, :M + 1])


@pytest.mark.parametrize("T", [1, 7, 20])
def test_shapes_and_causality(T, device):
    torch.manual_seed(T)
    model = TokenTransformer(30, dim=16, depth=2, num_heads=2, max_len=20).to(device).eval()
    ids = torch.randint(1, 30, (3, T), device=device)
    logits = model(ids)
    assert logits.shape == (3, T, 30)
    for t in range(T):
        changed = ids.clone()
        changed[:, t:] = torch.randint(1, 30, (3, T - t), device=device)
        torch.testing.assert_close(model(changed)[:, :t], logits[:, :t], rtol=1e-5, atol=1e-5)
        if t:  # and a changed earlier token does change what follows (the test could fail)
            assert not torch.allclose(model(changed)[:, t:], logits[:, t:])


def test_pad_keys_are_ignored():
    model = TokenTransformer(12, dim=16, depth=1, num_heads=2, max_len=10).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7]])
    other = torch.tensor([[0, 5, 6, 7]])
    # left padding: the real tokens never see a pad, so only the positions change
    model.pos.weight.data.zero_()
    torch.testing.assert_close(model(ids)[:, 2:], model(other)[:, 1:], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(model(torch.zeros(2, 4, dtype=torch.long))).all()


def test_sequence_loss_matches_manual_cross_entropy():
    model = TokenTransformer(9, dim=8, depth=1, num_heads=2, max_len=8)
    ids = torch.tensor([[0, 0, 3, 4, 5, 6], [3, 4, 5, 6, 0, 0]])
    logp = model(ids[:, :-1]).log_softmax(-1)
    terms = [-logp[b, t, ids[b, t + 1]] for b in range(2) for t in range(5) if ids[b, t + 1] != 0]
    torch.testing.assert_close(sequence_loss(model, ids), torch.stack(terms).mean())
    for start in (1, 3):   # only the predictions made at positions >= start
        terms = [-logp[b, t, ids[b, t + 1]] for b in range(2) for t in range(start, 5) if ids[b, t + 1] != 0]
        torch.testing.assert_close(sequence_loss(model, ids, start=start), torch.stack(terms).mean())
    with pytest.raises(ValueError, match="start"):
        sequence_loss(model, ids, start=5)


def test_sample_next():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 0.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    assert sample_next(logits, temperature=0, allowed=(2, 4)).tolist() == [3, 2]
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, top_k=2, generator=gen) for _ in range(200)])
    assert set(draws[:, 0].tolist()) <= {1, 3} and set(draws[:, 1].tolist()) <= {0, 1, 2, 3}
    assert (draws[:, 0] == 1).float().mean() > 0.5      # e^5 vs e^4: ≈ 0.73
    cold = torch.stack([sample_next(logits, temperature=0.05, generator=gen) for _ in range(50)])
    assert (cold[:, 0] == 1).all()


def test_generation_shapes(vocab):
    model = TokenTransformer(len(vocab), dim=16, depth=1, num_heads=2, max_len=vocab.seq_len).eval()
    codes = generate_codes(model, vocab, CAPTIONS[:3], top_k=5, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (3, 2, 3) and codes.min() >= 0 and codes.max() < 10
    caps = generate_captions(model, vocab, codes)
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    assert all(len(c.split()) <= vocab.max_words for c in caps)


def test_bad_inputs(vocab):
    model = TokenTransformer(len(vocab), dim=16, depth=1, num_heads=2, max_len=vocab.seq_len)
    with pytest.raises(ValueError, match=r"\(B, T\).*got shape \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"\[0, {len(vocab)}\)"):
        model(torch.full((1, 3), len(vocab)))
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"known words.*purple"):
        vocab.encode_text("a small purple circle")
    with pytest.raises(ValueError, match=r"\(B, 2, 3\).*got shape \(1, 3, 3\)"):
        vocab.codes_to_ids(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values in \[0, 10\)"):
        vocab.codes_to_ids(torch.full((1, 2, 3), 10))
    with pytest.raises(ValueError, match="word ids"):
        vocab.decode_text([vocab.code_offset])
    with pytest.raises(ValueError, match="one caption per image"):
        vocab.image_to_text(torch.zeros(2, 2, 3, dtype=torch.long), CAPTIONS[:1])
    with pytest.raises(ValueError, match="allowed"):
        sample_next(torch.zeros(1, 4), allowed=(3, 9))
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        sample_next(torch.zeros(4))
