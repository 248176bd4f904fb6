"""Tests of mmlearn.models: ViT, text encoder, CLIP, zero-shot, captioner + beam search, gated
cross-attention, TinyVLM."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlearn.attention import keep_weights
from mmlearn.models import (
    CLIP,
    Captioner,
    GatedCrossAttention,
    GridEncoder,
    PerceiverResampler,
    QFormer,
    SigLIP,
    TextTransformer,
    TinyVLM,
    VisionTransformer,
    zero_shot_classify,
)

V = 12  # vocabulary size of the toy texts (ids 0..3 are <pad> <unk> <bos> <eos>)


class VectorEncoder(nn.Module):
    """A linear 'encoder' of flat vectors, so that tests can build CLIPs on toy data."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin, self.out_dim = nn.Linear(d_in, d_out), d_out

    def forward(self, x, mask=None):
        return self.lin(x)


class TokenEncoder(nn.Module):
    """Images (B, 3, 8, 8) -> 4 tokens (B, 4, d): a 4x4 patch conv; the memory of the toy captioner."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.conv, self.out_dim = nn.Conv2d(3, d, 4, stride=4), d

    def forward(self, images):
        return self.conv(images).flatten(2).transpose(1, 2)   # (B, 4, d)


def tiny_captioner(device, **kw) -> Captioner:
    return Captioner(V, TokenEncoder(), dim=16, depth=1, num_heads=2, max_len=8, **kw).to(device)


# ---- ViT ----------------------------------------------------------------------------------------


def test_vit_shapes(device):
    vit = VisionTransformer(16, 4, dim=32, depth=1, num_heads=4).to(device)
    x = torch.rand(3, 3, 16, 16, device=device)
    assert vit.tokens(x).shape == (3, 1 + 16, 32)
    assert vit(x).shape == (3, 32)
    assert VisionTransformer(16, 8, dim=32, depth=1, num_classes=5).to(device)(x).shape == (3, 5)
    mean_pool = VisionTransformer(16, 4, dim=32, depth=1, pool="mean").to(device)
    torch.testing.assert_close(mean_pool(x), mean_pool.tokens(x)[:, 1:].mean(1))


def test_vit_sees_every_patch(device):
    """Changing one pixel changes the [CLS] output: attention mixes every patch into it."""
    vit = VisionTransformer(16, 4, dim=32, depth=1, num_heads=4).to(device).double()
    x = torch.rand(1, 3, 16, 16, device=device, dtype=torch.float64)
    y = x.clone()
    y[0, :, 15, 15] += 1.0
    assert not torch.allclose(vit(x), vit(y))


@pytest.mark.parametrize("shape", [(2, 3, 16), (2, 1, 16, 16), (2, 3, 12, 12)])
def test_vit_bad_images(shape):
    with pytest.raises(ValueError, match="images must be"):
        VisionTransformer(16, 4, dim=32, depth=1)(torch.rand(shape))


# ---- grid encoder -------------------------------------------------------------------------------


def test_grid_encoder_tokens_know_their_cell(device):
    enc = GridEncoder(3, width=4, image_size=16).to(device).eval()
    x = torch.rand(2, 3, 16, 16, device=device)
    tokens = enc(x)
    assert tokens.shape == (2, 4, 16) and enc.out_dim == 16
    feats = enc.features(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens - feats, enc.pos.expand(2, -1, -1))   # position embedding per cell
    with pytest.raises(ValueError, match="multiple of 8"):
        GridEncoder(image_size=20)
    with pytest.raises(ValueError, match="images must be"):
        enc(torch.rand(2, 3, 32, 32, device=device))


# ---- text encoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("pool, causal", [("mean", False), ("last", True), ("last", False)])
def test_text_transformer_ignores_padding(device, pool, causal):
    enc = TextTransformer(V, 16, depth=2, num_heads=2, max_len=10, pool=pool, causal=causal).to(device).double()
    ids = torch.tensor([[4, 5, 6], [7, 8, 9]], device=device)
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long, device=device)], dim=1)
    torch.testing.assert_close(enc(ids), enc(padded))
    assert enc(ids).shape == (2, 16)


def test_text_bag_of_words_ignores_order(device):
    enc = TextTransformer(V, 16, depth=0).to(device)
    a = torch.tensor([[4, 5, 6]], device=device)
    torch.testing.assert_close(enc(a), enc(a.flip(1)))
    torch.testing.assert_close(enc(a), enc.embed(a).mean(1))


def test_text_bad_input():
    enc = TextTransformer(V, 16, depth=1, max_len=4)
    with pytest.raises(ValueError, match="ids must lie in"):
        enc(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="1 <= L <= 4"):
        enc(torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        enc(torch.ones(1, 3))
    with pytest.raises(ValueError, match="at least one real token"):
        enc(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mask must be a bool"):
        enc(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3))


# ---- CLIP ---------------------------------------------------------------------------------------


def toy_clip(device, d=6, embed_dim=5, d_text=7) -> CLIP:
    return CLIP(VectorEncoder(d, 8), VectorEncoder(d, d_text), embed_dim).to(device).double()


def test_clip_shapes_and_unit_embeddings(device):
    model = toy_clip(device)
    x, t = torch.randn(4, 6, device=device, dtype=torch.float64), torch.randn(3, 6, device=device, dtype=torch.float64)
    assert model(x, t).shape == (4, 3)
    torch.testing.assert_close(model.encode_image(x).norm(dim=1), torch.ones(4, device=device, dtype=torch.float64))
    torch.testing.assert_close(model.encode_text(t).norm(dim=1), torch.ones(3, device=device, dtype=torch.float64))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_clip_loss_by_hand(device):
    """Symmetric InfoNCE written with explicit sums over the rows and the columns."""
    model = toy_clip(device)
    x, t = torch.randn(5, 6, device=device, dtype=torch.float64), torch.randn(5, 6, device=device, dtype=torch.float64)
    img = model.image_proj(model.image_encoder(x))
    txt = model.text_proj(model.text_encoder(t))
    img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    s = math.exp(math.log(1 / 0.07)) * img @ txt.T
    rows = sum(-(s[i, i] - torch.logsumexp(s[i], 0)) for i in range(5)) / 5
    cols = sum(-(s[i, i] - torch.logsumexp(s[:, i], 0)) for i in range(5)) / 5
    torch.testing.assert_close(model.loss(x, t), (rows + cols) / 2)
    torch.testing.assert_close(model(x, t), s)


def test_clip_temperature_clamp(device):
    """The stored log is clamped in place at log 100 (as in CLIP / open_clip): the multiplier is 100."""
    model = toy_clip(device)
    x, t = torch.randn(4, 6, device=device, dtype=torch.float64), torch.randn(4, 6, device=device, dtype=torch.float64)
    cos = model.encode_image(x) @ model.encode_text(t).T
    with torch.no_grad():
        model.logit_scale.fill_(10.0)                      # e^10 = 22026 would be the multiplier
    assert model.clamp_logit_scale_() is model
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    torch.testing.assert_close(model(x, t), 100.0 * cos)   # ... clamped at 100
    model.loss(x, t).backward()
    assert model.logit_scale.grad.item() != 0.0           # at the cap the temperature still learns
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0                 # multiplier at least 1


def test_clip_temperature_recovers_from_the_cap(device):
    """A multiplier pushed past the cap comes back when the loss asks for a softer softmax.

    Clamping inside forward would zero the gradient of s above log 100, so s could never decrease;
    clamping the parameter after the step keeps the gradient alive.
    """
    model = toy_clip(device, d_text=8)
    model.text_encoder.lin.load_state_dict({k: -v for k, v in model.image_encoder.lin.state_dict().items()})
    model.text_proj.load_state_dict(model.image_proj.state_dict())   # text = -image: every positive is the worst
    x = torch.randn(8, 6, device=device, dtype=torch.float64)
    opt = torch.optim.SGD([model.logit_scale], lr=1e-3)
    with torch.no_grad():
        model.logit_scale.fill_(6.0)                       # past the cap, e.g. after a large step
    model.clamp_logit_scale_()
    history = []
    for _ in range(5):
        opt.zero_grad()
        model.loss(x, x).backward()
        assert model.logit_scale.grad.item() > 0          # dL/ds = -(S_ii - E_p[S_i.]) > 0: lower s
        opt.step()
        model.clamp_logit_scale_()
        history.append(model.logit_scale.item())
    assert history[0] < math.log(100.0)
    assert all(0 < b < a for a, b in zip(history, history[1:])), history


def test_clip_bad_input():
    with pytest.raises(ValueError, match="out_dim"):
        CLIP(nn.Linear(3, 4), VectorEncoder(3, 4))
    with pytest.raises(ValueError, match="init_temperature"):
        CLIP(VectorEncoder(3, 4), VectorEncoder(3, 4), init_temperature=0.001)
    model = CLIP(VectorEncoder(3, 4), VectorEncoder(3, 4))
    with pytest.raises(ValueError, match="one text per image"):
        model.loss(torch.randn(3, 3), torch.randn(2, 3))


def test_zero_shot_classify(device):
    model = toy_clip(device, d_text=8)
    x, prompts = torch.randn(10, 6, device=device, dtype=torch.float64), torch.randn(4, 6, device=device,
                                                                                     dtype=torch.float64)
    expected = (model.encode_image(x) @ model.encode_text(prompts).T).argmax(1)
    torch.testing.assert_close(zero_shot_classify(model, x, prompts), expected)
    # prompts that ARE the images' texts: each image picks its own (the embeddings coincide)
    model.text_encoder.lin.load_state_dict(model.image_encoder.lin.state_dict())
    model.text_proj.load_state_dict(model.image_proj.state_dict())
    torch.testing.assert_close(zero_shot_classify(model, x, x), torch.arange(10, device=device))
    with pytest.raises(ValueError, match="mmlearn.models.CLIP"):
        zero_shot_classify(nn.Linear(2, 2), x, prompts)


def test_clip_learns(device):
    """A seeded tiny run: 16 'concepts', images and texts are two noisy views of them."""
    torch.manual_seed(0)
    concepts = torch.randn(16, 8)
    model = CLIP(VectorEncoder(8, 16), VectorEncoder(8, 16), 8).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        c = concepts[torch.randperm(16)].to(device)
        loss = model.loss(c + 0.1 * torch.randn_like(c), c @ torch.eye(8, device=device).flip(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1    # log(16) = 2.77 at chance


# ---- captioner ----------------------------------------------------------------------------------


def test_captioner_shapes_causality_and_image_dependence(device):
    model = tiny_captioner(device).double()
    images = torch.rand(2, 3, 8, 8, device=device, dtype=torch.float64)
    ids = torch.tensor([[2, 4, 5, 6, 3], [2, 7, 8, 3, 0]], device=device)
    logits = model(images, ids)
    assert logits.shape == (2, 5, V)
    changed = ids.clone()
    changed[:, 3] = 9
    torch.testing.assert_close(model(images, changed)[:, :3], logits[:, :3])   # the past ignores the future
    assert not torch.allclose(model(images, changed)[:, 3:], logits[:, 3:])
    assert not torch.allclose(model(images.flip(0), ids), logits)               # the words depend on the image


def test_captioner_loss_ignores_padding(device):
    model = tiny_captioner(device).double()
    images = torch.rand(1, 3, 8, 8, device=device, dtype=torch.float64)
    ids = torch.tensor([[2, 4, 5, 3]], device=device)
    padded = torch.tensor([[2, 4, 5, 3, 0, 0]], device=device)
    torch.testing.assert_close(model.loss(images, padded), model.loss(images, ids))
    by_hand = -F.log_softmax(model(images, ids[:, :-1]), -1)[0, torch.arange(3), ids[0, 1:]].mean()
    torch.testing.assert_close(model.loss(images, ids), by_hand)


def test_captioner_attention_maps(device):
    model = tiny_captioner(device)
    maps = model.attention_maps(torch.rand(2, 3, 8, 8, device=device), torch.tensor([[2, 4, 5]] * 2, device=device))
    assert maps.shape == (1, 2, 3, 4)                                  # (depth, B, T, S)
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 2, 3, device=device))


def _sequence_log_probs(model, memory, seqs) -> torch.Tensor:
    """log p(seq | image) of each row of seqs (R, T) = [<bos>, w1, ..., <eos>, <pad>...], by teacher forcing."""
    logp = F.log_softmax(model.decode(memory.expand(len(seqs), -1, -1), seqs[:, :-1]), -1)   # (R, T-1, V)
    tok = logp.gather(-1, seqs[:, 1:, None])[..., 0]                                         # (R, T-1)
    after_eos = (seqs[:, :-1] == 3).cumsum(1) > 0                                            # past the end
    return tok.masked_fill(after_eos, 0.0).sum(1)


def test_beam_one_equals_greedy(device):
    torch.manual_seed(1)
    model = tiny_captioner(device).eval()
    images = torch.rand(6, 3, 8, 8, device=device)
    memory = model.encode(images)
    torch.testing.assert_close(model._beam(memory, 6, 1), model._greedy(memory, 6))
    assert model.generate(images, 6, beam_size=1) == model._strip(model._beam(memory, 6, 1))


def test_beam_search_is_exact_when_the_beam_holds_every_prefix(device):
    """With k >= V^(max_len-1) no prefix is ever pruned: beam search finds the most likely sequence."""
    # V = 5 ids, of which <pad> = 0 and <bos> = 2 are never generated: the words are 1, 3 (<eos>) and 4
    torch.manual_seed(2)
    vocab, max_len = 5, 3
    model = Captioner(vocab, TokenEncoder(), dim=16, depth=1, num_heads=2, max_len=4).to(device).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(8.0)                                   # peaky, so that greedy is not optimal
    seqs = []                                  # every sequence of allowed words (no <pad>, <bos>); it stops at <eos>
    for n in range(1, max_len + 1):
        for words in itertools.product((1, 3, 4), repeat=n):
            if 3 not in words[:-1] and (n == max_len or words[-1] == 3):
                seqs.append([2, *words] + [0] * (max_len - n))
    seqs = torch.tensor(seqs, device=device)                          # (1 + 2 + 12 = 15 sequences, 4)
    for _ in range(2):
        memory = model.encode(torch.rand(1, 3, 8, 8, device=device, dtype=torch.float64))
        best = _sequence_log_probs(model, memory, seqs).max().item()
        raw = model._beam(memory, max_len, vocab ** (max_len - 1))   # (1, <= max_len + 1)
        raw = F.pad(raw, (0, max_len + 1 - raw.shape[1]))
        assert _sequence_log_probs(model, memory, raw).item() == pytest.approx(best, abs=1e-9)


def test_generate_shapes_and_bad_input(device):
    model = tiny_captioner(device)
    with torch.no_grad():
        model.head.bias[[0, 2]] = 100.0                               # it would love to write <pad> and <bos>
    for k in (1, 3):
        out = model.generate(torch.rand(3, 3, 8, 8, device=device), 5, beam_size=k)
        assert len(out) == 3 and all(len(o) <= 5 and not {0, 2, 3} & set(o) for o in out)
    with pytest.raises(ValueError, match="max_len must be"):
        model.generate(torch.rand(1, 3, 8, 8, device=device), 8)
    with pytest.raises(ValueError, match="beam_size must be"):
        model.generate(torch.rand(1, 3, 8, 8, device=device), 3, beam_size=0)
    with pytest.raises(ValueError, match="token sequence"):
        Captioner(V, VectorEncoder(4, 4)).generate(torch.rand(2, 4), 3)


def test_captioner_learns(device):
    """Seeded: the caption names the colour (R, G or B) of a flat image — the loss falls below 0.05."""
    torch.manual_seed(0)
    model = tiny_captioner(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        c = torch.randint(0, 3, (32,), device=device)
        images = F.one_hot(c, 3).float()[:, :, None, None].expand(32, 3, 8, 8)
        ids = torch.stack([torch.full_like(c, 2), 4 + c, torch.full_like(c, 3)], 1)   # <bos> colour <eos>
        loss = model.loss(images, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert model.generate(torch.eye(3, device=device)[:, :, None, None].expand(3, 3, 8, 8), 3) == [[4], [5], [6]]


# ---- gated cross-attention ----------------------------------------------------------------------


def test_gated_cross_attention_starts_as_identity(device):
    layer = GatedCrossAttention(16, 4).to(device).double()
    x = torch.randn(2, 5, 16, device=device, dtype=torch.float64)
    media = torch.randn(2, 7, 16, device=device, dtype=torch.float64)
    assert torch.equal(layer(x, media), x)                      # exactly, not approximately
    # ... and only the gates get a gradient at the first step
    layer(x, media).square().sum().backward()
    assert layer.alpha_attn.grad.abs().item() > 0
    assert layer.attn.in_proj_weight.grad.abs().max().item() == 0.0
    with torch.no_grad():
        layer.alpha_attn.fill_(0.5)
    assert not torch.allclose(layer(x, media), x)
    assert layer.weights is None                                # fast path by default: no weights kept
    with keep_weights(layer):
        layer(x, media)
    assert layer.weights.shape == (2, 5, 7)


# ---- TinyVLM ------------------------------------------------------------------------------------


def tiny_vlm(device) -> TinyVLM:
    return TinyVLM(TokenEncoder(), V, dim=16, depth=1, num_heads=2, max_len=12).to(device)


def test_tiny_vlm_shapes_and_frozen_encoder(device):
    model = tiny_vlm(device)
    images, ids = torch.rand(2, 3, 8, 8, device=device), torch.tensor([[2, 4, 5, 6], [2, 7, 8, 6]], device=device)
    assert model(images, ids).shape == (2, 4, V)
    target = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 1]], dtype=torch.bool, device=device)
    model.train()
    model.loss(images, ids, target).backward()
    assert all(p.grad is None for p in model.vision_encoder.parameters())
    assert model.projector.weight.grad is not None
    assert not model.vision_encoder.training
    # the loss counts the answer only: position 3, predicted from position 2
    by_hand = F.cross_entropy(model(images, ids[:, :-1])[:, 2], ids[:, 3])
    torch.testing.assert_close(model.loss(images, ids, target), by_hand)


def test_tiny_vlm_with_a_connector_module(device):
    """K learned tokens instead of S projected ones: the LM sequence gets K = 2 image tokens."""

    class TwoQueries(nn.Module):
        def __init__(self):
            super().__init__()
            self.queries = nn.Parameter(torch.randn(2, 16))

        def forward(self, feats):                                   # (B, S, 16) -> (B, 2, 16)
            w = (self.queries @ feats.transpose(1, 2)).softmax(-1)  # (B, 2, S)
            return w @ feats

    model = TinyVLM(TokenEncoder(), V, dim=16, depth=1, num_heads=2, max_len=12, connector=TwoQueries()).to(device)
    images = torch.rand(3, 3, 8, 8, device=device)
    assert model.image_tokens(images).shape == (3, 2, 16)
    assert model(images, torch.tensor([[2, 4, 5]] * 3, device=device)).shape == (3, 3, V)
    bad = TinyVLM(TokenEncoder(), V, dim=8, depth=1, num_heads=2, connector=nn.Identity()).to(device)
    with pytest.raises(ValueError, match="connector must return"):
        bad.image_tokens(images)
    with pytest.raises(ValueError, match="must fit max_len"):
        model(images, torch.full((3, 11), 4, device=device))


def test_tiny_vlm_generate(device):
    model = tiny_vlm(device)
    prompts = torch.tensor([[2, 4, 5, 0], [2, 4, 5, 6]], device=device)
    out = model.generate(torch.rand(2, 3, 8, 8, device=device), prompts, max_new_tokens=3)
    assert len(out) == 2 and all(len(o) <= 3 for o in out)
    # a right-padded prompt gives what the unpadded prompt gives
    alone = model.generate(torch.rand(2, 3, 8, 8, device=device)[:1], prompts[:1, :3], max_new_tokens=3)
    assert len(alone[0]) <= 3
    with pytest.raises(ValueError, match="target_mask must be bool"):
        model.loss(torch.rand(1, 3, 8, 8, device=device), prompts[:1], torch.zeros(1, 4, dtype=torch.bool,
                                                                                   device=device))
    with pytest.raises(ValueError, match="one text per image"):
        model(torch.rand(3, 3, 8, 8, device=device), prompts)


# ---- SigLIP -------------------------------------------------------------------------------------

def test_siglip_is_clip_with_a_bias_and_the_sigmoid_loss(device):
    torch.manual_seed(0)
    model = SigLIP(VectorEncoder(6, 8), VectorEncoder(6, 8), 4).double().to(device)
    assert model.logit_scale.item() == pytest.approx(math.log(10.0)) and model.logit_bias.item() == -10.0
    x, t = torch.randn(5, 6, device=device, dtype=torch.float64), torch.randn(5, 6, device=device, dtype=torch.float64)
    img, txt = model.encode_image(x), model.encode_text(t)
    logits = model.logit_scale.exp() * img @ txt.T - 10.0        # e^s = 10 up to the float32 rounding of log 10
    torch.testing.assert_close(model(x, t), logits)
    by_hand = -sum(F.logsigmoid((1.0 if i == j else -1.0) * logits[i, j]) for i in range(5) for j in range(5)) / 5
    torch.testing.assert_close(model.loss(x, t), by_hand)
    model.loss(x, t).backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.item() != 0.0
    assert not hasattr(CLIP(VectorEncoder(3, 4), VectorEncoder(3, 4)), "logit_bias")   # CLIP unchanged
    with pytest.raises(ValueError, match="init_bias must be a finite number"):
        SigLIP(VectorEncoder(3, 4), VectorEncoder(3, 4), init_bias=float("nan"))
    with pytest.raises(ValueError, match="one text per image"):
        model.loss(x, t[:3])


def test_siglip_learns(device):
    torch.manual_seed(0)
    concepts = torch.randn(16, 8)
    model = SigLIP(VectorEncoder(8, 16), VectorEncoder(8, 16), 8).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        c = concepts[torch.randperm(16)].to(device)
        loss = model.loss(c + 0.1 * torch.randn_like(c), c @ torch.eye(8, device=device).flip(0))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale_()
    assert loss.item() < 0.2 * first
    assert (model(c, c @ torch.eye(8, device=device).flip(0)).argmax(1) == torch.arange(16, device=device)).all()


# ---- resamplers ---------------------------------------------------------------------------------

def _torch_mha(ours, dim, heads):
    ref = nn.MultiheadAttention(dim, heads, batch_first=True).double()
    ref.load_state_dict(ours.state_dict())
    return lambda q, kv: ref(q, kv, kv, need_weights=False)[0]


def test_perceiver_resampler_matches_a_torch_reference(device):
    torch.manual_seed(0)
    dim, heads = 8, 2
    model = PerceiverResampler(dim, 3, 2, heads).double().to(device)
    x = torch.randn(4, 7, dim, dtype=torch.float64, device=device)
    lat = model.latents.expand(4, -1, -1)
    for layer in model.layers:                       # Flamingo: keys and values are [image tokens; latents]
        mha = _torch_mha(layer["attn"], dim, heads)
        q = layer["norm_l"](lat)
        lat = lat + mha(q, torch.cat([layer["norm_x"](x), q], dim=1))
        lat = lat + layer["ffn"](layer["norm_ffn"](lat))
    torch.testing.assert_close(model(x), F.layer_norm(lat, (dim,), model.norm.weight, model.norm.bias))


@pytest.mark.parametrize("cls", [PerceiverResampler, QFormer])
def test_resamplers_shapes_and_permutation_invariance(device, cls):
    torch.manual_seed(1)
    model = cls(16, 5, 2, 4).double().to(device)
    for n in (1, 9, 40):                             # always 5 output tokens, whatever the number of inputs
        assert model(torch.randn(3, n, 16, dtype=torch.float64, device=device)).shape == (3, 5, 16)
    x = torch.randn(2, 12, 16, dtype=torch.float64, device=device)
    perm = torch.randperm(12, device=device)
    torch.testing.assert_close(model(x[:, perm]), model(x), rtol=1e-12, atol=1e-12)
    other = x.clone()
    other[:, 0] = torch.randn(16, dtype=torch.float64, device=device)   # ... but it depends on the tokens
    assert not torch.allclose(model(other), model(x))
    model(x).sum().backward()
    assert model.latents.grad.abs().sum() > 0 if cls is PerceiverResampler else model.queries.grad.abs().sum() > 0


def test_qformer_matches_a_torch_reference(device):
    torch.manual_seed(0)
    dim, heads = 8, 2
    model = QFormer(dim, 3, 2, heads, in_dim=5, out_dim=6).double().to(device)
    x = torch.randn(4, 7, 5, dtype=torch.float64, device=device)
    kv, q = model.proj_in(x), model.queries.expand(4, -1, -1)
    for layer in model.layers:                       # self-attention, cross-attention to the image, FFN
        h = layer["norm_self"](q)
        q = q + _torch_mha(layer["self_attn"], dim, heads)(h, h)
        q = q + _torch_mha(layer["cross_attn"], dim, heads)(layer["norm_cross"](q), kv)
        q = q + layer["ffn"](layer["norm_ffn"](q))
    torch.testing.assert_close(model(x), model.proj_out(model.norm(q)))
    assert model(x).shape == (4, 3, 6)


def test_resamplers_in_a_tiny_vlm(device):
    for connector in (PerceiverResampler(16, 3, 1, 2), QFormer(16, 3, 1, 2)):
        model = TinyVLM(TokenEncoder(), V, dim=16, depth=1, num_heads=2, max_len=12, connector=connector).to(device)
        images = torch.rand(2, 3, 8, 8, device=device)
        assert model.image_tokens(images).shape == (2, 3, 16)          # 3 LM tokens instead of the encoder's 4
        assert model(images, torch.tensor([[2, 4, 5]] * 2, device=device)).shape == (2, 3, V)


@pytest.mark.parametrize("call, match", [
    (lambda: PerceiverResampler(8, 2, 1, 2)(torch.randn(2, 5, 6)), r"x must be \(B, N, 8\) with N >= 1"),
    (lambda: PerceiverResampler(8, 2, 1, 2)(torch.randn(5, 8)), r"x must be \(B, N, 8\), got shape \(5, 8\)"),
    (lambda: PerceiverResampler(8, 2, 1, 2)(torch.randn(2, 0, 8)), r"with N >= 1, got shape \(2, 0, 8\)"),
    (lambda: PerceiverResampler(8, 2, 1, 2)(torch.ones(2, 3, 8, dtype=torch.long)), "floating-point dtype"),
    (lambda: PerceiverResampler(8, 0, 1, 2), "num_latents must be an int >= 1"),
    (lambda: PerceiverResampler(8, 2, 1, 3), "dim must be divisible by num_heads"),
    (lambda: QFormer(8, 2, 0, 2), "depth must be an int >= 1"),
    (lambda: QFormer(8, 2, 1, 2, in_dim=5)(torch.randn(2, 3, 8)), r"x must be \(B, N, 5\)"),
])
def test_resampler_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- the attention fast path --------------------------------------------------------------------


def _all_grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _both_paths(model, loss_fn):
    """(loss, gradients) on the fused fast path and inside keep_weights (the book's path)."""
    results = []
    for slow in (False, True):
        model.zero_grad()
        if slow:
            with keep_weights(model):
                loss = loss_fn()
        else:
            loss = loss_fn()
        loss.backward()
        results.append([loss.detach(), *_all_grads(model)])
    return results


def test_models_use_the_fast_path_and_keep_weights_gives_the_same_loss_and_gradients(device):
    torch.manual_seed(0)
    vit = VisionTransformer(8, 4, dim=16, depth=2, num_heads=2, num_classes=3).to(device).double()
    images = torch.rand(4, 3, 8, 8, device=device, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1], device=device)
    fast, slow = _both_paths(vit, lambda: F.cross_entropy(vit(images), labels))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert vit.encoder.blocks[-1].attn_weights.shape == (4, 5, 5)       # kept by the keep_weights forward
    with torch.no_grad():
        vit(images)
    assert all(blk.attn_weights is None for blk in vit.encoder.blocks)   # a plain forward is fast: none kept
    text = TextTransformer(V, dim=16, depth=1, num_heads=2, max_len=6, causal=True, pool="last")
    clip = CLIP(VisionTransformer(8, 4, dim=16, depth=1, num_heads=2), text, embed_dim=8).to(device).double()
    ids = torch.tensor([[4, 5, 6, 0, 0, 0], [7, 8, 0, 0, 0, 0], [4, 9, 10, 11, 5, 0], [6, 0, 0, 0, 0, 0]],
                       device=device)
    fast, slow = _both_paths(clip, lambda: clip.loss(images, ids))      # padding + causal masks
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    cap = tiny_captioner(device).double()
    cap_ids = torch.tensor([[2, 4, 5, 3, 0], [2, 6, 3, 0, 0]], device=device)
    fast, slow = _both_paths(cap, lambda: cap.loss(images[:2], cap_ids))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert not any(blk.need_weights for blk in cap.decoder.blocks)      # attention_maps leaves it fast
    cap.attention_maps(images[:2], cap_ids)
    assert not any(blk.need_weights for blk in cap.decoder.blocks)


# ---- decoding: length-normalised beam search, sampling, KV cache (07_multimodal_transformers_decoding) ----

def _tiny_captioner(device, vocab: int = 6, sharpen: float = 4.0) -> Captioner:
    torch.manual_seed(0)
    model = Captioner(vocab, GridEncoder(3, width=4, image_size=8), dim=16, depth=2, num_heads=2, max_len=8)
    with torch.no_grad():
        model.head.weight.mul_(sharpen)                      # peaky, so that hypotheses really compete
    return model.to(device).eval()


def _caption_log_prob(model, memory, seq):
    ids = torch.tensor([[model.bos_id, *seq]], device=memory.device)
    logp = F.log_softmax(model.decode(memory, ids[:, :-1]), dim=-1)[0]
    return sum(logp[t, w].item() for t, w in enumerate(seq))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_exhaustive_equals_brute_force(device, alpha):
    from mmlearn.models import beam_search, length_penalty
    model, L = _tiny_captioner(device), 3
    images = torch.rand(3, 3, 8, 8, device=device)
    words = [1, 3, 4, 5]                                     # every id but <pad> and <bos>; 3 = <eos>
    with torch.no_grad():
        memory = model.encode(images)
        for i in range(len(images)):
            hyps = [list(s) for n in range(1, L + 1) for s in itertools.product(words, repeat=n)
                    if 3 not in s[:-1] and (n == L or s[-1] == 3)]
            score = {tuple(s): _caption_log_prob(model, memory[i:i + 1], s) for s in hyps}
            best = max(hyps, key=lambda s: score[tuple(s)] / length_penalty(torch.tensor(len(s)), alpha).item())
            got, logp = beam_search(model, images[i:i + 1], L, len(words) ** L, alpha)
            assert got[0] == (best[:-1] if best[-1] == 3 else best)
            assert abs(logp.item() - score[tuple(best)]) < 1e-4


def test_beam_search_alpha_zero_is_generate_and_width_one_is_greedy(device):
    from mmlearn.models import beam_search
    model, images = _tiny_captioner(device), torch.rand(5, 3, 8, 8, device=device)
    for k in (1, 2, 3):
        assert beam_search(model, images, 6, k)[0] == model.generate(images, 6, beam_size=k)
    for alpha in (0.5, 3.0):                                 # one beam: every candidate has the same length
        assert beam_search(model, images, 6, 1, alpha)[0] == model.generate(images, 6)


def test_length_penalty_closed_form():
    from mmlearn.models import length_penalty
    n = torch.randint(1, 50, (7,))
    torch.testing.assert_close(length_penalty(n, 0.7), ((5 + n.float()) / 6) ** 0.7)
    assert torch.equal(length_penalty(n, 0.0), torch.ones(7))


def _reference_nucleus(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens in order of probability until their mass reaches p (a loop, float64)."""
    out = torch.full_like(logits, float("-inf"))
    for r, row in enumerate(logits):
        probs, mass = row.softmax(-1), 0.0
        for i in probs.argsort(descending=True).tolist():
            out[r, i], mass = row[i], mass + probs[i].item()
            if mass >= p:
                break
    return out


def test_top_p_filter_keeps_the_smallest_set_with_mass_p(device):
    from mmlearn.models import top_p_filter
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        B, V = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(2, 40, (1,), generator=gen))
        logits = 3 * torch.randn(B, V, generator=gen, dtype=torch.float64)
        p = float(torch.rand((), generator=gen).clamp_min(1e-3))
        got = top_p_filter(logits.to(device), p).cpu()
        torch.testing.assert_close(got, _reference_nucleus(logits, p))
        kept = got.isfinite()
        mass = logits.softmax(-1).where(kept, torch.zeros(()))
        assert bool((mass.sum(-1) >= p - 1e-12).all())                       # the kept mass reaches p ...
        smallest = mass.masked_fill(~kept, 2.0).amin(-1)                     # ... and not without its least token
        assert bool((mass.sum(-1) - smallest < p).all())
    assert torch.equal(top_p_filter(logits, 1.0).isfinite(), torch.ones_like(logits, dtype=torch.bool))


def test_sampling_temperature_to_zero_is_greedy(device):
    from mmlearn.models import sample_captions
    model, images = _tiny_captioner(device), torch.rand(6, 3, 8, 8, device=device)
    greedy = model.generate(images, 7)
    assert sample_captions(model, images, 7, temperature=0) == greedy
    gen = torch.Generator(device=device).manual_seed(0)
    assert sample_captions(model, images, 7, temperature=1e-4, generator=gen) == greedy
    gen = torch.Generator(device=device).manual_seed(0)
    assert sample_captions(model, images, 7, top_p=1e-6, generator=gen) == greedy      # nucleus of one token


def test_sampling_frequencies_follow_the_model(device):
    from mmlearn.models import sample_captions
    model = _tiny_captioner(device, sharpen=1.0)
    image = torch.rand(1, 3, 8, 8, device=device)
    with torch.no_grad():
        memory = model.encode(image)
        p = model._next_log_probs(memory, torch.tensor([[model.bos_id]], device=device)).softmax(-1)[0].cpu()
    n = 4000
    gen = torch.Generator(device=device).manual_seed(0)
    first = [c[0] if c else model.eos_id for c in sample_captions(model, image.expand(n, -1, -1, -1), 1,
                                                                  generator=gen)]
    freq = torch.bincount(torch.tensor(first), minlength=len(p)).double() / n
    assert bool(((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-9).all())   # within 5 standard errors


def test_cached_decoding_equals_recomputation(device):
    from mmlearn.language_model import KVCache
    from mmlearn.models import cross_attention_cache, decode_cached, generate_cached
    model = _tiny_captioner(device)
    images = torch.rand(4, 3, 8, 8, device=device)
    ids = torch.randint(1, 6, (4, 8), device=device)
    ids[:, 0] = model.bos_id
    with torch.no_grad():
        memory = model.encode(images)
        full = model.decode(memory, ids)
    for split in (1, 3):                                     # one token per step, or a prompt of 3 and then steps
        cache, cross = KVCache(2), cross_attention_cache(model, memory)
        parts = [decode_cached(model, cross, ids[:, :split], cache)]
        parts += [decode_cached(model, cross, ids[:, t:t + 1], cache) for t in range(split, 8)]
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert generate_cached(model, images, 7) == model.generate(images, 7)


@pytest.mark.parametrize("call, match", [
    (lambda d, m, x: d.top_p_filter(torch.randn(2, 5), 0.0), r"p must be a number in \(0"),
    (lambda d, m, x: d.top_p_filter(torch.randn(2, 5), 1.5), r"p must be a number in \(0"),
    (lambda d, m, x: d.top_p_filter(torch.ones(2, 5, dtype=torch.long), 0.5),
     "floating-point dtype"),
    (lambda d, m, x: d.sample_captions(m, x, 5, temperature=-1.0),
     r"temperature must be a number in \[0"),
    (lambda d, m, x: d.sample_captions(m, x, 5, top_p=0), r"top_p must be a number"),
    (lambda d, m, x: d.sample_captions(m, x, 20), r"max_len must be <= 7"),
    (lambda d, m, x: d.beam_search(m, x, 5, 0), "beam_size must be an int >= 1"),
    (lambda d, m, x: d.beam_search(m, x, 5, 2, alpha=-0.5), r"alpha must be"),
    (lambda d, m, x: d.beam_search(m, x, 9, 2), r"max_len must be <= 7"),
    (lambda d, m, x: d.length_penalty(torch.tensor([0, 2]), 1.0), "lengths >= 1"),
    (lambda d, m, x: d.generate_cached(m, x, 8), r"max_len must be <= 7"),
])
def test_decoding_bad_input(call, match):
    import mmlearn.models

    model = _tiny_captioner(torch.device("cpu"))
    with pytest.raises(ValueError, match=match):
        call(mmlearn.models, model, torch.rand(2, 3, 8, 8))


# ---- sincos_positions_2d (07_multimodal_transformers_vit_analysis) --------------------------------

def _sincos_2d_direct(height: int, width: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The formula cell by cell, channel by channel, in float64 (no vectorisation to share a bug with)."""
    out = torch.empty(height * width, dim, dtype=torch.float64)
    for r, c, j in itertools.product(range(height), range(width), range(dim)):
        t, k = (c, j) if j < dim // 2 else (r, j - dim // 2)           # first half: column; second half: row
        omega = base ** (-4 * (k // 2) / dim)
        out[r * width + c, j] = math.sin(t * omega) if k % 2 == 0 else math.cos(t * omega)
    return out


@pytest.mark.parametrize("height, width, dim", [(1, 1, 4), (3, 5, 8), (4, 4, 16), (6, 2, 12), (2, 7, 20)])
def test_sincos_positions_2d_matches_formula(height, width, dim, device):
    from mmlearn.models import sincos_positions_2d

    got = sincos_positions_2d(height, width, dim, device=device, dtype=torch.float64)
    assert got.shape == (height * width, dim) and got.device.type == device.type
    torch.testing.assert_close(got.cpu(), _sincos_2d_direct(height, width, dim), atol=1e-12, rtol=0)


def test_sincos_positions_2d_known_values_and_offsets():
    from mmlearn.models import sincos_positions_2d

    P = sincos_positions_2d(4, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(P[0], torch.tensor([0.0, 1.0] * 4, dtype=torch.float64))   # cell (0, 0)
    # cell (r=1, c=2): column half sin/cos of 2ω_i, row half of 1ω_i, ω = (1, 10000^(-1/2))
    w = (1.0, 10000 ** -0.5)
    want = [math.sin(2 * w[0]), math.cos(2 * w[0]), math.sin(2 * w[1]), math.cos(2 * w[1]),
            math.sin(w[0]), math.cos(w[0]), math.sin(w[1]), math.cos(w[1])]
    torch.testing.assert_close(P[1 * 4 + 2], torch.tensor(want, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    H, W, d = 5, 6, 12
    P = sincos_positions_2d(H, W, d, dtype=torch.float64)
    omega = 10000.0 ** (-4 * torch.arange(d // 4, dtype=torch.float64) / d)
    for _ in range(20):                        # P[n]·P[m] = Σ cos(ω Δc) + Σ cos(ω Δr): only the offset matters
        n, m = torch.randint(0, H * W, (2,), generator=gen).tolist()
        dr, dc = n // W - m // W, n % W - m % W
        torch.testing.assert_close(P[n] @ P[m], torch.cos(omega * dc).sum() + torch.cos(omega * dr).sum())


@pytest.mark.parametrize("args, match", [
    ((0, 4, 8), "height must be an int >= 1, got 0"),
    ((3, 2.0, 8), "width must be an int >= 1, got float"),
    ((3, 4, 6), "dim must be divisible by 4"),
    ((3, 4, 0), "dim must be an int >= 1"),
])
def test_sincos_positions_2d_bad_input(args, match):
    from mmlearn.models import sincos_positions_2d

    with pytest.raises(ValueError, match=match):
        sincos_positions_2d(*args)


# ---- the LLaVA recipe on a frozen language model (07_multimodal_transformers_llava) --------------

def _frozen_vlm(device, freeze_vision=False):
    from mmlearn.language_model import CausalLM, LMConfig
    from mmlearn.models import FrozenLMVLM

    torch.manual_seed(0)
    lm = CausalLM(LMConfig(V, block_size=32, dim=16, depth=2, num_heads=2)).to(device)
    return FrozenLMVLM(GridEncoder(3, width=4, image_size=8), lm, freeze_vision=freeze_vision).to(device), lm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_answer_mask_matches_a_loop(seed):
    from mmlearn.models import answer_mask

    g = torch.Generator().manual_seed(seed)
    B, T = int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 15, (1,), generator=g))
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    prompt = (torch.rand(B, generator=g) * (lengths + 1)).long().clamp(max=lengths)
    want = torch.tensor([[int(p) <= t < int(n) for t in range(T)] for p, n in zip(prompt, lengths)]).view(B, T)
    assert torch.equal(answer_mask(prompt, lengths, T), want)


@pytest.mark.parametrize("args, match", [
    ((torch.tensor([1]), torch.tensor([2, 3]), 4), "must be \\(B,\\)"),
    ((torch.tensor([3]), torch.tensor([2]), 4), "prompt_lengths <= lengths"),
    ((torch.tensor([1]), torch.tensor([5]), 4), "lengths <= T"),
    (([1], torch.tensor([2]), 4), "prompt_lengths"),
])
def test_answer_mask_bad_input(args, match):
    from mmlearn.models import answer_mask

    with pytest.raises(ValueError, match=match):
        answer_mask(*args)


def test_frozen_lm_vlm_equals_the_lm_with_a_projected_prefix(device):
    model, lm = _frozen_vlm(device)
    model.double()
    images = torch.rand(3, 3, 8, 8, device=device, dtype=torch.float64)
    ids = torch.randint(2, V, (3, 6), device=device)
    feats = model.vision_encoder(images)                                          # (3, 1, 16)
    h_v = F.gelu(feats @ model.projector[0].weight.T + model.projector[0].bias) @ model.projector[2].weight.T \
        + model.projector[2].bias
    torch.testing.assert_close(model(images, ids), lm(ids, prefix=h_v)[:, h_v.shape[1]:], rtol=1e-12, atol=1e-12)
    # the masked loss is the mean of -log p over the masked positions (t >= 1)
    mask = torch.zeros(3, 6, dtype=torch.bool, device=device)
    mask[:, 4:] = True
    mask[1, 2] = True
    logp = model(images, ids[:, :-1]).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(model.loss(images, ids, mask), -logp[mask[:, 1:]].mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("freeze_vision", [False, True])
def test_frozen_lm_vlm_trains_only_the_vision_side(device, freeze_vision):
    model, lm = _frozen_vlm(device, freeze_vision)
    model.train()
    assert not lm.training and model.projector.training and model.vision_encoder.training != freeze_vision
    images, ids = torch.rand(2, 3, 8, 8, device=device), torch.randint(2, V, (2, 5), device=device)
    model.loss(images, ids, torch.ones(2, 5, dtype=torch.bool, device=device)).backward()
    assert all(p.grad is None for p in lm.parameters())
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert all((p.grad is None) == freeze_vision for p in model.vision_encoder.parameters())


def test_frozen_lm_vlm_bad_input(device):
    model, _ = _frozen_vlm(device)
    images, ids = torch.rand(2, 3, 8, 8, device=device), torch.randint(2, V, (2, 5), device=device)
    with pytest.raises(ValueError, match="target_mask must be bool"):
        model.loss(images, ids, torch.ones(2, 4, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="target_mask must be bool"):
        model.loss(images, ids, torch.zeros(2, 5, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="idx must hold int64"):
        model(images, ids.float())
