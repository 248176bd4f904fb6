"""Checks for the exercises of notebooks/02_preprocessing_audio.ipynb and 02_preprocessing_audio_spectral.ipynb."""

from __future__ import annotations

import math
import operator

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
from mmlearn.preprocess.audio import hz_to_mel, mel_to_hz


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=gen, dtype=torch.float64))


@register("ex-ch02-audio-alias",
          hint="Sampling cannot tell f from f + k·sr or from −f: reduce f modulo sr, then fold into [0, sr/2].")
def _check_alias(alias_frequency) -> None:
    gen = fresh_generator()
    cases = [(440.0, 8000.0), (5000.0, 8000.0), (8000.0, 8000.0), (12100.0, 8000.0), (3000.0, 2000.0)]
    cases += [(_uniform(gen, 0, 50_000), _uniform(gen, 1000, 20_000)) for _ in range(20)]
    for case, (f, sr) in enumerate(cases):
        r = f % sr
        expected = min(r, sr - r)
        expect_number(alias_frequency(f, sr), expected, what=f"case {case}: alias_frequency({f:.1f}, {sr:.1f})",
                      tol=1e-6 * max(1.0, sr))


@register("ex-ch02-audio-n-frames",
          hint="With center=True the signal grows by 2·(n_fft // 2) samples before framing; "
               "then count the hops that fit.")
def _check_n_frames(n_frames) -> None:
    gen = fresh_generator()
    for case in range(30):
        n_fft = int(torch.randint(2, 300, (1,), generator=gen))
        hop = int(torch.randint(1, 100, (1,), generator=gen))
        center = bool(torch.randint(0, 2, (1,), generator=gen))
        T = n_fft + int(torch.randint(0, 2000, (1,), generator=gen))
        padded = T + 2 * (n_fft // 2) if center else T
        expected = 1 + (padded - n_fft) // hop
        expect_equal(n_frames(T, n_fft, hop, center), expected,
                     what=f"case {case}: n_frames(T={T}, n_fft={n_fft}, hop={hop}, center={center})")


@register("ex-ch02-audio-peak-bin",
          hint="Bin k holds frequency k · sample_rate / n_fft; the tone lands in the nearest bin.")
def _check_peak_bin(answer) -> None:
    expect_number(answer, round(392.0 * 256 / 8000), what="bin of the 392 Hz fundamental (sr 8000, n_fft 256)",
                  tol=0)


@register("ex-ch02-audio-mel-centres",
          hint="n_mels filters need n_mels + 2 edges, equally spaced in mel; the centres are edges 1 .. n_mels.")
def _check_mel_centres(mel_centres) -> None:
    gen = fresh_generator()
    for case in range(10):
        n_mels = int(torch.randint(1, 60, (1,), generator=gen))
        f_min = _uniform(gen, 0, 500)
        f_max = _uniform(gen, f_min + 500, 11_025)
        expected = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                            dtype=torch.float64)[1:-1])
        got = mel_centres(n_mels, f_min, f_max)
        expect_close(torch.as_tensor(got, dtype=torch.float64), expected, atol=1e-3, rtol=1e-6,
                     what=f"case {case}: mel_centres({n_mels}, {f_min:.1f}, {f_max:.1f}) in Hz")


@register("ex-ch02-audio-color",
          hint="Take the first slot, find the strongest frequency of its spectrum, pick the nearest PITCH_HZ.")
def _check_color(predict_color) -> None:
    from mmlearn.data import make_shapes

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=fresh_generator()))
    batch = make_shapes(60, max_objects=2, seed=seed)
    truth = batch.labels["color"][:, 0]
    pred = []
    for i in range(len(batch)):
        g = predict_color(batch.audio[i], batch.sample_rate)
        try:
            pred.append(operator.index(g.item() if isinstance(g, torch.Tensor) and g.numel() == 1 else g))
        except TypeError:
            raise CheckFailed(f"predict_color must return an int colour index (0..3), got {g!r}") from None
    pred = torch.tensor(pred)
    acc = (pred == truth).float().mean().item()
    if acc < 0.95:
        wrong = int((pred != truth).nonzero()[0])
        raise CheckFailed(f"accuracy {acc:.0%} on 60 fresh scenes (need ≥ 95%); e.g. scene {wrong} "
                          f"({batch.captions[wrong]!r}): predicted {int(pred[wrong])}, expected {int(truth[wrong])}")


# ---- notebooks/02_preprocessing_audio_spectral.ipynb -----------------------------------------------

@register("ex-ch02-spec-fft-convolve",
          hint="Zero-pad both signals to len(x) + len(h) - 1 before the FFT, so that no index wraps round.")
def _check_fft_convolve(fft_convolve) -> None:
    gen = fresh_generator()
    for case in range(8):
        nx, nh = (int(v) for v in torch.randint(1, 70, (2,), generator=gen))
        x = torch.randn(nx, generator=gen, dtype=torch.float64)
        h = torch.randn(nh, generator=gen, dtype=torch.float64)
        expected = torch.nn.functional.conv1d(x[None, None], h.flip(0)[None, None], padding=nh - 1)[0, 0]
        got = call_student(fft_convolve, x, h, what=f"case {case}: fft_convolve(x of length {nx}, h of length {nh})")
        expect_close(got, expected, atol=1e-9, rtol=1e-9,
                     what=f"case {case}: fft_convolve(x of length {nx}, h of length {nh}) (length {nx + nh - 1})")


@register("ex-ch02-spec-hann-dtft",
          hint="Write the cosine as two complex exponentials; each gives a Dirichlet kernel shifted by one bin.")
def _check_hann_dtft(hann_dtft) -> None:
    gen = fresh_generator()
    for case in range(6):
        N = int(torch.randint(8, 300, (1,), generator=gen))
        nu = torch.rand(12, generator=gen, dtype=torch.float64) * N / 2
        nu = torch.where((nu - nu.round()).abs() < 1e-3, nu + 0.25, nu)            # non-integer frequencies
        n = torch.arange(N, dtype=torch.float64)
        w = torch.hann_window(N, dtype=torch.float64)
        expected = (w * torch.exp(-2j * math.pi * nu[:, None] * n / N)).sum(1)
        got = call_student(hann_dtft, N, nu.clone(), what=f"case {case}: hann_dtft({N}, nu)")
        if isinstance(got, torch.Tensor) and not got.is_complex():
            raise CheckFailed(f"case {case}: hann_dtft must return a complex tensor (magnitude and phase), "
                              f"got dtype {got.dtype}")
        expect_close(got, expected, atol=1e-8 * N, rtol=1e-8, what=f"case {case}: hann_dtft({N}, nu) (complex)")


@register("ex-ch02-spec-ola-normaliser",
          hint="Expand the squared Hann window into cosines; shifted by N/R, the cosine terms cancel for R ≥ 3.")
def _check_hann_ola_normaliser(hann_ola_normaliser) -> None:
    gen = fresh_generator()
    for case in range(8):
        R = int(torch.randint(3, 9, (1,), generator=gen))
        hop = int(torch.randint(4, 65, (1,), generator=gen))
        n_fft = R * hop
        w2 = torch.hann_window(n_fft, dtype=torch.float64) ** 2
        m = torch.arange(n_fft)
        expected = sum(w2[(m - t * hop) % n_fft] for t in range(R))            # every m is covered by R frames
        assert float(expected.max() - expected.min()) < 1e-9
        got = call_student(hann_ola_normaliser, n_fft, hop, what=f"case {case}: hann_ola_normaliser({n_fft}, {hop})")
        expect_number(got, float(expected.mean()), what=f"case {case}: hann_ola_normaliser({n_fft}, {hop})",
                      tol=1e-9 * n_fft)


@register("ex-ch02-spec-resolution",
          hint="Scan the separation upwards in steps of 0.01 bin; count local maxima of a zero-padded spectrum.")
def _check_resolution(answer) -> None:
    expect_number(answer, 1.89, what="smallest separation (bins) at which two in-phase tones show two peaks "
                                     "(Hann window)", tol=0.12)
