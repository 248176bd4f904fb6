"""Chapter 6's tiny causal LM: the book's blocks, the KV cache against recomputation, causality, bad input."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
import torch.nn.functional as F

from mmlearn.data import load_pydoc_corpus
from mmlearn.language_model import CausalLM, KVCache, LMConfig, evaluate_lm, sample_windows, train_lm

CONFIGS = [dict(positions=p, norm=n) for p in ("learned", "sinusoidal", "rope", "none") for n in ("pre", "post")]


def _model(device, dtype=torch.float64, **kw) -> CausalLM:
    cfg = dict(vocab_size=11, block_size=12, dim=16, depth=2, num_heads=2) | kw
    torch.manual_seed(1)
    m = CausalLM(LMConfig(**cfg)).to(device=device, dtype=dtype).eval()
    with torch.no_grad():                                       # random, non-trivial LayerNorm parameters
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return m


def test_blocks_are_the_books_transformer_block(device):
    m = _model(device)
    x = torch.randn(3, 7, 16, device=device, dtype=torch.float64)
    for layer, block in enumerate(m.blocks):
        torch.testing.assert_close(m._block(block, x, 0, layer, None), block(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['positions']}-{c['norm']}")
def test_kv_cache_equals_recomputation(device, cfg):
    m = _model(device, **cfg)
    idx = torch.randint(0, 11, (2, 10), device=device)
    full = m(idx)                                               # (2, 10, V)
    cache, pieces = KVCache(m.config.depth), []
    for a, b in ((0, 4), (4, 5), (5, 9), (9, 10)):              # a prompt, then uneven chunks
        pieces.append(m(idx[:, a:b], cache=cache))
    assert len(cache) == 10
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.0, None), (0.7, 3)])
def test_generate_with_cache_equals_without(device, temperature, top_k):
    m = _model(device, dtype=torch.float64, positions="rope")
    idx = torch.randint(0, 11, (3, 4), device=device)
    outs = [m.generate(idx, 20, temperature, top_k, use_cache=c, generator=torch.Generator(device).manual_seed(5))
            for c in (True, False)]                             # 24 > block_size: the context is cropped
    assert outs[0].shape == (3, 24)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][:, :4], idx, rtol=0, atol=0)


def test_causal_future_tokens_do_not_change_the_past(device):
    m = _model(device)
    idx = torch.randint(0, 11, (2, 9), device=device)
    other = idx.clone()
    other[:, 6:] = (other[:, 6:] + 1) % 11
    torch.testing.assert_close(m(idx)[:, :6], m(other)[:, :6], rtol=0, atol=0)
    assert not torch.allclose(m(idx)[:, 6:], m(other)[:, 6:])


def test_prefix_embeddings_match_token_embeddings(device):
    m = _model(device)
    idx = torch.randint(0, 11, (2, 8), device=device)
    prefix = m.tok(idx[:, :3])                                  # a prefix equal to the first 3 tokens' embeddings
    torch.testing.assert_close(m(idx[:, 3:], prefix=prefix), m(idx), rtol=1e-12, atol=1e-12)
    cache = KVCache(m.config.depth)
    first = m(None, prefix=prefix, cache=cache)
    rest = m(idx[:, 3:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), m(idx), rtol=1e-10, atol=1e-10)


def test_tied_head_and_state_round_trip(device):
    m = _model(device, positions="sinusoidal")
    assert m.head.weight is m.tok.weight
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    n = CausalLM(LMConfig(**m.config_dict())).to(device=device, dtype=torch.float64).eval()
    n.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    idx = torch.randint(0, 11, (2, 6), device=device)
    torch.testing.assert_close(n(idx), m(idx), rtol=0, atol=0)
    assert n.head.weight is n.tok.weight


def test_loss_equals_cross_entropy_and_uniform_at_zero_weights(device):
    m = _model(device)
    idx = torch.randint(0, 11, (2, 6), device=device)
    y = torch.randint(0, 11, (2, 6), device=device)
    ref = F.cross_entropy(m(idx).reshape(-1, 11), y.reshape(-1))
    torch.testing.assert_close(m.loss(idx, y), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        m.tok.weight.zero_()                                    # tied head at 0: every logit 0, loss = log V
    torch.testing.assert_close(m.loss(idx, y).item(), math.log(11), rtol=1e-12, atol=1e-12)


def test_windows_and_evaluation(device):
    data = torch.arange(50, device=device) % 11
    x, y = sample_windows(data, 8, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    torch.testing.assert_close(y[:, :-1], x[:, 1:], rtol=0, atol=0)
    m = _model(device)
    T, n = 8, 49 // 8
    xs, ys = data[: n * T].view(n, T), data[1: n * T + 1].view(n, T)
    ref = F.cross_entropy(m(xs).reshape(-1, 11), ys.reshape(-1)).item()
    assert evaluate_lm(m, data, T, batch_size=2) == pytest.approx(ref, rel=1e-10)


def test_training_learns_a_periodic_sequence():
    data = torch.tensor([1, 4, 2, 8, 5, 7] * 60)               # deterministic given the previous token
    torch.manual_seed(0)
    m = CausalLM(LMConfig(vocab_size=11, block_size=16, dim=16, depth=1, num_heads=2))
    before = evaluate_lm(m, data, 16)
    hist = train_lm(m, data, steps=150, batch_size=8, lr=1e-2, progress=False)
    assert before > 2.0 and evaluate_lm(m, data, 16) < 0.1 and len(hist["train_loss"]) == 150


def test_pydoc_corpus_split_is_by_topic_deduplicated_and_deterministic():
    from pydoc_data.topics import topics

    train, val = load_pydoc_corpus()
    assert (train, val) == load_pydoc_corpus()
    assert 300_000 < len(train) and 20_000 < len(val) < 80_000
    paragraphs = lambda text: set(re.split(r"\n(?:[ \t]*\n)+", text.strip("\n")))
    train_paras, val_paras = paragraphs(train), paragraphs(val)
    assert not {p for p in train_paras & val_paras if len(p) >= 60}         # no shared long paragraph
    names = sorted(topics)
    for i, name in enumerate(names):                                        # a validation topic is all in val
        if i % 10 == 5:
            assert paragraphs(topics[name]) - {""} <= val_paras, name
    with pytest.raises(ValueError, match="val_every"):
        load_pydoc_corpus(val_every=1)


@pytest.mark.parametrize("kw, match", [
    (dict(positions="alibi"), "positions"), (dict(norm="mid"), "norm"), (dict(dim=12, num_heads=4), "even"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        LMConfig(**(dict(vocab_size=11) | kw))


def test_bad_inputs(device):
    m = _model(device)
    with pytest.raises(ValueError, match=r"idx must be"):
        m(torch.zeros(5, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"ids in \[0, 11\)"):
        m(torch.full((1, 3), 11, device=device))
    with pytest.raises(ValueError, match=r"ids in"):
        m(torch.zeros(1, 3, device=device))
    with pytest.raises(ValueError, match="block_size = 12"):
        m(torch.zeros(1, 13, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"prefix must be \(B, P, 16\)"):
        m(None, prefix=torch.zeros(1, 2, 8, device=device, dtype=torch.float64))
    with pytest.raises(ValueError, match="need idx"):
        m(None)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(torch.zeros(1, 2, dtype=torch.long, device=device), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        m.generate(torch.zeros(1, 2, dtype=torch.long, device=device), 3, top_k=50)
    with pytest.raises(ValueError, match="longer than block_size"):
        sample_windows(torch.zeros(5, dtype=torch.long), 8, 2)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers(capsys):
    import mmlearn

    def top_p(logits, p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, probs.cumsum(-1) - probs < p)
        return logits.masked_fill(~keep, float("-inf"))

    assert mmlearn.check("ex-ch06-top-p", top_p)
    assert not mmlearn.check("ex-ch06-top-p", lambda logits, p: logits)                     # keeps everything
    assert mmlearn.check("ex-ch06-kv-cost", lambda n, c: n * (n + 1) // 2 if c else n * (n + 1) * (n + 2) // 6)
    assert not mmlearn.check("ex-ch06-kv-cost", lambda n, c: n * (n + 1) // 2 if c else n ** 3 // 3)
    assert not mmlearn.check("ex-ch06-ngram-order", 6)
    assert not mmlearn.check("ex-ch06-ngram-order", "four")
