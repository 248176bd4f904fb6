"""Chapter 9: DTW against brute force, CTC against F.ctc_loss, decoders against exhaustive search."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from mmlearn.alignment import collapse, ctc_loss, dtw, greedy_decode, prefix_beam_search


def _brute_dtw(cost: torch.Tensor) -> float:
    """Minimum over every monotone path from (0, 0) to (T1-1, T2-1), by plain recursion."""
    T1, T2 = cost.shape
    memo: dict[tuple[int, int], float] = {}

    def best(i: int, j: int) -> float:
        if (i, j) == (0, 0):
            return float(cost[0, 0])
        if (i, j) not in memo:
            options = [best(a, b) for a, b in ((i - 1, j), (i, j - 1), (i - 1, j - 1)) if a >= 0 and b >= 0]
            memo[i, j] = float(cost[i, j]) + min(options)
        return memo[i, j]

    return best(T1 - 1, T2 - 1)


@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 10_000))
def test_dtw_equals_brute_force_and_its_path_is_valid(T1, T2, seed):
    cost = torch.rand(T1, T2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    total, path = dtw(cost)
    assert total == pytest.approx(_brute_dtw(cost), rel=1e-12)
    assert path[0] == (0, 0) and path[-1] == (T1 - 1, T2 - 1)
    steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(path, path[1:])}
    assert steps <= {(0, 1), (1, 0), (1, 1)}
    assert sum(float(cost[i, j]) for i, j in path) == pytest.approx(total, rel=1e-12)


def test_dtw_aligns_a_stretched_copy_at_zero_cost():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    y = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 3.0])
    total, path = dtw((x[:, None] - y[None, :]).abs())
    assert total == 0.0 and [i for i, _ in path] == [0, 0, 1, 2, 2, 2, 3]


def _case(T, N, C, S, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, N, C, generator=g, dtype=dtype).to(device)
    target_lengths = torch.randint(0, S + 1, (N,), generator=g)
    targets = torch.randint(1, C, (N, S), generator=g)
    input_lengths = torch.randint(1, T + 1, (N,), generator=g).clamp(min=2 * S + 1)
    return logits, targets, input_lengths.clamp(max=T), target_lengths


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@given(T=st.integers(1, 14), N=st.integers(1, 4), C=st.integers(2, 6), S=st.integers(0, 5), seed=st.integers(0, 999))
def test_ctc_loss_equals_torch_values_and_gradients(reduction, T, N, C, S, seed):
    logits, targets, input_lengths, target_lengths = _case(T, N, C, S, seed)
    logits.requires_grad_(True)
    ours = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths, reduction=reduction)
    ref = F.ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    if torch.isfinite(ref).all():
        g_ours, = torch.autograd.grad(ours.sum(), logits)
        g_ref, = torch.autograd.grad(ref.sum(), logits)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-10)


def test_ctc_loss_float32_on_every_device_and_concatenated_targets(device):
    logits, targets, input_lengths, target_lengths = _case(30, 5, 8, 6, seed=1, dtype=torch.float32, device=device)
    log_probs = logits.log_softmax(-1)
    flat = torch.cat([targets[n, :int(target_lengths[n])] for n in range(5)]).to(device)
    ref = F.ctc_loss(log_probs, targets.to(device), input_lengths, target_lengths)
    torch.testing.assert_close(ctc_loss(log_probs, flat, input_lengths, target_lengths), ref, rtol=1e-5, atol=1e-5)


def test_torch_ctc_gradient_wrt_log_probs_assumes_a_log_softmax():
    """F.ctc_loss's gradient w.r.t. log_probs is −posterior + exp(log_probs): the softmax Jacobian is folded in.

    Autograd of our recursion gives the true partial derivative, −posterior; the two differ by
    exp(log_probs) on every frame t < T_n, so they agree once composed with log_softmax (test above).
    """
    logits, targets, input_lengths, target_lengths = _case(12, 3, 5, 3, seed=2)
    log_probs = logits.log_softmax(-1).requires_grad_(True)
    args = (targets, input_lengths, target_lengths)
    g_ours, = torch.autograd.grad(ctc_loss(log_probs, *args, reduction="sum"), log_probs)
    g_ref, = torch.autograd.grad(F.ctc_loss(log_probs, *args, reduction="sum"), log_probs)
    frames = torch.arange(12)[:, None, None] < input_lengths[None, :, None]
    torch.testing.assert_close(g_ref - g_ours, log_probs.detach().exp() * frames, rtol=1e-8, atol=1e-10)


def test_ctc_loss_is_inf_when_the_target_cannot_fit():
    log_probs = torch.randn(3, 1, 4, dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[1, 1, 1]])  # needs 5 frames: 1 - 1 - 1
    assert ctc_loss(log_probs, targets, [3], [3]).item() == math.inf


@pytest.mark.parametrize("bad, match", [
    (dict(log_probs=torch.zeros(4, 2)), r"log_probs must be \(T, N, C\)"),
    (dict(input_lengths=torch.tensor([5, 9])), r"input_lengths must be in 1\.\.T = 6"),
    (dict(target_lengths=torch.tensor([1])), r"N = 2 entries"),
    (dict(targets=torch.tensor([[1, 7], [1, 2]])), r"labels must be in 0\.\.C-1 = 3"),
    (dict(reduction="avg"), r"reduction"),
])
def test_ctc_loss_bad_input(bad, match):
    args = dict(log_probs=torch.randn(6, 2, 4).log_softmax(-1), targets=torch.tensor([[1, 2], [3, 1]]),
                input_lengths=torch.tensor([6, 5]), target_lengths=torch.tensor([2, 1]), reduction="mean")
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ctc_loss(**args)


def test_collapse_merges_repeats_then_drops_blanks():
    assert collapse([1, 1, 0, 1, 2, 2, 0, 0]) == [1, 1, 2]
    assert collapse([0, 0]) == [] and collapse([3, 0, 3]) == [3, 3] and collapse([3, 3]) == [3]


def _labelling_probabilities(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """p(ℓ) for every labelling, by enumerating all C^T frame paths."""
    T, C = log_probs.shape
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(C), repeat=T):
        p = math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
        key = tuple(collapse(list(path)))
        probs[key] = probs.get(key, 0.0) + p
    return probs


@given(st.integers(1, 5), st.integers(2, 4), st.integers(0, 999))
def test_prefix_beam_search_with_a_wide_beam_finds_the_most_probable_labelling(T, C, seed):
    g = torch.Generator().manual_seed(seed)
    log_probs = (3 * torch.randn(T, C, generator=g, dtype=torch.float64)).log_softmax(-1)
    probs = _labelling_probabilities(log_probs)
    best = max(probs.values())
    found = tuple(prefix_beam_search(log_probs, beam_size=10_000))
    assert probs[found] == pytest.approx(best, rel=1e-9)


def test_greedy_decode_is_the_collapsed_argmax_path_and_respects_lengths():
    log_probs = torch.full((5, 2, 3), -10.0)
    for t, (a, b) in enumerate([(1, 2), (1, 2), (0, 0), (1, 2), (2, 1)]):
        log_probs[t, 0, a] = log_probs[t, 1, b] = 0.0
    assert greedy_decode(log_probs) == [[1, 1, 2], [2, 2, 1]]
    assert greedy_decode(log_probs, torch.tensor([2, 4])) == [[1], [2, 2]]


def test_ctc_loss_ignores_padding_and_supports_another_blank():
    logits, targets, input_lengths, target_lengths = _case(10, 3, 5, 3, seed=3)
    log_probs = logits.log_softmax(-1)
    padded = targets.clone()
    for n in range(3):
        padded[n, int(target_lengths[n]):] = 99  # F.ctc_loss ignores whatever lies beyond a target's length
    torch.testing.assert_close(ctc_loss(log_probs, padded, input_lengths, target_lengths),
                               F.ctc_loss(log_probs, targets, input_lengths, target_lengths), rtol=1e-10, atol=1e-10)
    shifted = targets - 1  # labels 0..3, blank = 4
    torch.testing.assert_close(ctc_loss(log_probs.roll(-1, dims=2), shifted, input_lengths, target_lengths, blank=4),
                               F.ctc_loss(log_probs.roll(-1, dims=2), shifted, input_lengths, target_lengths, blank=4),
                               rtol=1e-10, atol=1e-10)


def test_speech_features_match_log_mel_and_ignore_padding():
    from mmlearn.alignment import speech_features
    from mmlearn.preprocess import log_mel_spectrogram

    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(4000, generator=g, dtype=torch.float64), torch.randn(2500, generator=g, dtype=torch.float64)]
    feats, lengths = speech_features(waves, 8000, n_fft=256, hop_length=128, n_mels=20)
    assert feats.shape == (2, 4000 // 128 + 1, 20) and lengths.tolist() == [32, 20]
    alone = log_mel_spectrogram(waves[1], 8000, n_fft=256, hop_length=128, n_mels=20)       # (20, T)
    cmvn = ((alone - alone.mean(1, keepdim=True)) / (alone.std(1, unbiased=False, keepdim=True) + 1e-5)).T
    torch.testing.assert_close(feats[1, :20], cmvn, rtol=1e-6, atol=1e-6)
    assert feats[1, 20:].abs().max() == 0
    with pytest.raises(ValueError, match="non-empty"):
        speech_features([torch.zeros(0)], 8000)


def test_speech_recognizer_shapes_and_bad_input():
    from mmlearn.alignment import SpeechRecognizer

    model = SpeechRecognizer(num_classes=10, n_mels=16, hidden=8)
    out = model(torch.randn(3, 21, 16))
    assert out.shape == (3, 11, 10) and model.output_lengths(torch.tensor([21, 20])).tolist() == [11, 10]
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, 11))
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        model(torch.randn(3, 21, 40))


def test_dtw_with_forbidden_cells_and_no_path():
    cost = torch.ones(4, 3, dtype=torch.float64)
    cost[1:3, :] = math.inf  # rows 1 and 2 forbidden: no monotone path can cross them
    assert dtw(cost) == (math.inf, [])
    cost = torch.ones(3, 3, dtype=torch.float64)
    cost[0, 1] = cost[1, 0] = math.inf
    total, path = dtw(cost)
    assert total == 3.0 and path == [(0, 0), (1, 1), (2, 2)]


def test_masked_mean_equals_loop_on_random_shapes(device):
    from mmlearn.alignment import masked_mean

    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        B, T, d = (int(v) for v in torch.randint(1, 9, (3,), generator=g))
        h = torch.randn(B, T, d, generator=g, dtype=torch.float64).to(device)
        lengths = torch.randint(1, T + 1, (B,), generator=g).to(device)
        expected = torch.stack([h[b, :int(lengths[b])].mean(0) for b in range(B)])
        torch.testing.assert_close(masked_mean(h, lengths), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([0, 3]), "lengths must be"),
    (torch.tensor([5, 3]), "lengths must be"),
    (torch.tensor([2]), "lengths must be"),
    (torch.tensor([2.0, 3.0]), "lengths must be"),
])
def test_masked_mean_bad_input(lengths, match):
    from mmlearn.alignment import masked_mean

    with pytest.raises(ValueError, match=match):
        masked_mean(torch.randn(2, 4, 3), lengths)
    with pytest.raises(ValueError, match=r"\(B, T, d\)"):
        masked_mean(torch.randn(4, 3), torch.tensor([1, 2, 3, 4]))


def test_speech_encoder_vector_does_not_depend_on_its_batch():
    from mmlearn.alignment import SpeechEncoder

    model = SpeechEncoder(n_mels=12, hidden=8, dim=5).double()
    model.norm.running_mean.normal_()                   # non-trivial statistics, then eval mode
    model.norm.running_var.uniform_(0.5, 2.0)
    model.eval()
    lengths = torch.tensor([37, 9, 1, 20])
    x = torch.randn(4, 37, 12, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        x[b, n:] = 0.0                                   # padding as speech_features writes it
    batch = model(x, lengths)
    assert batch.shape == (4, 5)
    alone = torch.cat([model(x[b:b + 1, :n], lengths[b:b + 1]) for b, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(batch, alone, rtol=1e-10, atol=1e-10)
    garbage = x.clone()
    garbage[1, 9:] = 1e3                                 # whatever is in the padding, it is never read
    torch.testing.assert_close(model(garbage, lengths), batch, rtol=1e-10, atol=1e-10)
    assert SpeechEncoder.output_lengths(torch.tensor([37, 9, 1, 4, 5])).tolist() == [10, 3, 1, 1, 2]


def test_speech_encoder_works_as_clip_text_side_and_bad_input():
    from mmlearn.alignment import SpeechEncoder
    from mmlearn.features import CNNEncoder
    from mmlearn.models import CLIP

    model = CLIP(CNNEncoder(dim=8, width=4), SpeechEncoder(n_mels=10, hidden=6, dim=7), embed_dim=4)
    loss = model.loss(torch.rand(3, 3, 32, 32), torch.randn(3, 15, 10), torch.tensor([15, 4, 8]))
    loss.backward()
    assert math.isfinite(loss.item()) and model.text_encoder.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(B, T, 10\)"):
        model.text_encoder(torch.randn(2, 15, 40), torch.tensor([15, 4]))
    with pytest.raises(ValueError, match="hidden"):
        SpeechEncoder(hidden=0)


def test_ctc_loss_is_reexported_from_losses():
    import mmlearn.alignment
    import mmlearn.losses

    assert mmlearn.losses.ctc_loss is mmlearn.alignment.ctc_loss
