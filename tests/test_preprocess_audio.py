"""Tests of mmlearn.preprocess.audio: resampling, framing, STFT, mel filterbank, log-mel, MFCC."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmlearn.preprocess import frame, log_mel_spectrogram, mel_filterbank, mfcc, resample, stft
from mmlearn.preprocess.audio import dct_matrix, dft_matrix, hz_to_mel, mel_to_hz, sinc_kernel

F64 = torch.float64


def tone(freq: float, sr: int, seconds: float, device="cpu") -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=F64, device=device) / sr
    return torch.sin(2 * math.pi * freq * t)


# ---- resampling -----------------------------------------------------------------------------------

@pytest.mark.parametrize("orig_sr,new_sr", [(8000, 3000), (8000, 16000), (44100, 8000), (16000, 11025), (8000, 8001)])
def test_resample_equals_exact_sampling_of_a_band_limited_signal(orig_sr, new_sr, device):
    # A sum of tones below both Nyquist frequencies is band-limited: ideal (sinc) interpolation
    # reproduces the continuous signal exactly, so the resampled signal must equal the continuous
    # signal sampled at the new rate (away from the edges, where the signal is cut).
    g = torch.Generator().manual_seed(orig_sr + new_sr)
    nyq = min(orig_sr, new_sr) / 2
    freqs = (torch.rand(4, generator=g, dtype=F64) * 0.7 * nyq).tolist()
    phases = (torch.rand(4, generator=g, dtype=F64) * 2 * math.pi).tolist()
    signal = lambda t: sum(torch.sin(2 * math.pi * f * t + p) for f, p in zip(freqs, phases))
    x = signal(torch.arange(orig_sr // 4, dtype=F64, device=device) / orig_sr)
    y = resample(x, orig_sr, new_sr)
    assert y.shape == (math.ceil(len(x) * new_sr / orig_sr),)
    t_new = torch.arange(len(y), dtype=F64, device=device) / new_sr
    edge = new_sr // 40                                                  # 25 ms at each end
    torch.testing.assert_close(y[edge:-edge], signal(t_new)[edge:-edge], atol=1e-3, rtol=0)


@pytest.mark.parametrize("f_ratio,survives", [(0.5, True), (0.8, True), (1.2, False), (1.7, False)])
def test_resample_keeps_tones_below_new_nyquist_and_removes_tones_above(f_ratio, survives):
    orig_sr, new_sr = 16000, 4000
    x = tone(f_ratio * new_sr / 2, orig_sr, 0.5)
    y = resample(x, orig_sr, new_sr)[200:-200]
    rms = y.pow(2).mean().sqrt().item()
    if survives:
        assert abs(rms - 1 / math.sqrt(2)) < 1e-3
    else:
        assert rms < 1e-2                          # naive x[::4] would alias it to full amplitude
        assert x[::4][200:-200].pow(2).mean().sqrt().item() > 0.6


def test_resample_vectorised_equals_naive_double_sum():
    g = torch.Generator().manual_seed(1)
    for orig_sr, new_sr, width in [(5, 3, 16), (3, 7, 6), (4, 4 + 1, 10)]:
        x = torch.randn(2, 40, generator=g, dtype=F64)
        y = resample(x, orig_sr, new_sr, width=width, rolloff=0.9)
        cutoff = 0.9 * min(orig_sr, new_sr) / 2 / orig_sr
        m = torch.arange(y.shape[-1], dtype=F64)[:, None]
        n = torch.arange(40, dtype=F64)[None, :]
        h = sinc_kernel(m * orig_sr / new_sr - n, cutoff, width)          # (T_out, T): every input sample
        torch.testing.assert_close(y, x @ h.T, atol=1e-12, rtol=0)


def test_resample_identity_and_batch_rows_are_independent():
    x = torch.randn(3, 500, dtype=F64)
    torch.testing.assert_close(resample(x, 8000, 8000), x)
    batch = resample(x, 8000, 6000)
    torch.testing.assert_close(batch[1], resample(x[1], 8000, 6000))


# ---- framing and STFT -----------------------------------------------------------------------------

@given(st.integers(1, 300), st.integers(1, 64), st.integers(1, 40), st.booleans())
def test_frame_equals_unfold(T, frame_length, hop, batched):
    x = torch.randn((3, T) if batched else (T,))
    if frame_length > T:
        with pytest.raises(ValueError, match="frame_length"):
            frame(x, frame_length, hop)
    else:
        assert torch.equal(frame(x, frame_length, hop), x.unfold(-1, frame_length, hop))


@pytest.mark.filterwarnings("ignore:A window was not provided")
@given(st.integers(2, 128), st.integers(1, 64), st.integers(0, 400), st.booleans(), st.booleans(), st.booleans())
def test_stft_equals_torch_stft(n_fft, hop, extra, center, use_window, batched):
    T = (n_fft // 2 + 1 if center else n_fft) + extra
    x = torch.randn((2, T) if batched else (T,), dtype=F64)
    window = torch.hann_window(n_fft, dtype=F64) if use_window else None
    ours = stft(x, n_fft, hop, window=window, center=center)
    ref = torch.stft(x, n_fft, hop, window=window, center=center, pad_mode="reflect", return_complex=True)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


def test_stft_float32_and_defaults_match_torch(device):
    x = torch.randn(2, 4000, device=device)
    window = torch.hann_window(256, device=device)
    ours = stft(x, 256, window=window)                                  # hop defaults to n_fft // 4
    ref = torch.stft(x, 256, window=window, pad_mode="reflect", return_complex=True)
    assert ours.dtype == torch.complex64 and ours.device.type == device.type
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_dft_matrix_is_the_fft():
    x = torch.randn(5, 48, dtype=F64)
    W = dft_matrix(48, onesided=False, dtype=torch.complex128)
    torch.testing.assert_close(x.to(torch.complex128) @ W.T, torch.fft.fft(x), atol=1e-12, rtol=0)
    assert dft_matrix(48).shape == (25, 48)


# ---- mel, log-mel, MFCC ---------------------------------------------------------------------------

def test_mel_scale_formula_and_inverse():
    assert abs(float(hz_to_mel(1000.0)) - 2595 * math.log10(1 + 1000 / 700)) < 1e-9   # ≈ 1000 mel
    f = torch.linspace(0, 20000, 101, dtype=F64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f)), f)


@given(st.integers(4, 40), st.sampled_from([256, 512, 1024]), st.sampled_from([8000, 16000, 22050]),
       st.floats(0.0, 300.0), st.sampled_from([None, "slaney"]))
def test_mel_filterbank_properties(n_mels, n_fft, sr, f_min, norm):
    try:
        fb = mel_filterbank(n_mels, n_fft, sr, f_min=f_min, norm=norm, dtype=F64)
    except ValueError as error:           # allowed only when a filter is too narrow for the FFT bins
        assert "cover no FFT bin" in str(error)
        return
    assert fb.shape == (n_mels, n_fft // 2 + 1)
    assert (fb >= 0).all() and (fb.amax(dim=1) > 0).all()
    peaks = fb.argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all()                              # centres move up in frequency
    freqs = torch.arange(n_fft // 2 + 1, dtype=F64) * sr / n_fft
    assert (fb[:, freqs < f_min] == 0).all()
    if norm is None:
        assert (fb <= 1 + 1e-12).all()
    # each filter is a triangle: rises, then falls (values along a row are unimodal)
    for row in fb:
        nz = row[row > 0]
        top = int(nz.argmax())
        assert (nz[: top + 1].diff() >= 0).all() and (nz[top:].diff() <= 0).all()


def test_mel_filterbank_against_closed_form_triangle():
    # with n_mels = 1, f_min = 0, f_max = sr/2 the single triangle has edges 0, mel⁻¹(mel(sr/2)/2), sr/2
    sr, n_fft = 8000, 64
    fb = mel_filterbank(1, n_fft, sr, dtype=F64)[0]
    centre = float(mel_to_hz(hz_to_mel(sr / 2) / 2))
    f = torch.arange(n_fft // 2 + 1, dtype=F64) * sr / n_fft
    expected = torch.where(f <= centre, f / centre, (sr / 2 - f) / (sr / 2 - centre))
    torch.testing.assert_close(fb, expected)
    slaney = mel_filterbank(1, n_fft, sr, norm="slaney", dtype=F64)[0]
    torch.testing.assert_close(slaney, expected * 2 / (sr / 2))


@pytest.mark.parametrize("n", [1, 2, 13, 40])
def test_dct_matrix_is_orthonormal_and_equals_loop_formula(n):
    D = dct_matrix(n, n, dtype=F64)
    torch.testing.assert_close(D @ D.T, torch.eye(n, dtype=F64))
    torch.testing.assert_close(D.T @ D, torch.eye(n, dtype=F64))
    x = torch.randn(n, dtype=F64)
    loop = []
    for k in range(n):                                                  # naive DCT-II, orthonormal scaling
        s = sum(x[i] * math.cos(math.pi * k * (2 * i + 1) / (2 * n)) for i in range(n))
        loop.append(s * math.sqrt((1 if k == 0 else 2) / n))
    torch.testing.assert_close(D @ x, torch.stack([torch.as_tensor(v, dtype=F64) for v in loop]))
    if n > 2:
        Dk = dct_matrix(n - 2, n, dtype=F64)
        torch.testing.assert_close(Dk @ Dk.T, torch.eye(n - 2, dtype=F64))


def test_log_mel_and_mfcc_shapes_and_values(device):
    sr = 8000
    x = torch.randn(2, sr, dtype=F64, device=device)
    lm = log_mel_spectrogram(x, sr, n_fft=256, hop_length=64, n_mels=32)
    assert lm.shape == (2, 32, 1 + sr // 64) and lm.device.type == device.type
    power = torch.stft(x, 256, 64, window=torch.hann_window(256, dtype=F64, device=device),
                       pad_mode="reflect", return_complex=True).abs() ** 2
    fb = mel_filterbank(32, 256, sr, dtype=F64, device=device)
    torch.testing.assert_close(lm, torch.log(fb @ power + 1e-10))
    c = mfcc(x, sr, n_mfcc=13, n_fft=256, hop_length=64, n_mels=32)
    torch.testing.assert_close(c, dct_matrix(13, 32, dtype=F64, device=device) @ lm)
    torch.testing.assert_close(mfcc(x[0], sr, n_mfcc=13, n_fft=256, hop_length=64, n_mels=32), c[0])


def test_log_mel_peak_sits_at_the_tone():
    sr = 8000
    lm = log_mel_spectrogram(tone(1000.0, sr, 0.5).float(), sr, n_fft=512, n_mels=40)
    centres = mel_to_hz(torch.linspace(0, float(hz_to_mel(sr / 2)), 42)[1:-1])
    assert abs(float(centres[lm.mean(dim=1).argmax()]) - 1000.0) < 80


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_input_raises_value_error():
    x = torch.randn(100)
    with pytest.raises(ValueError, match=r"\(T,\) or \(N, T\)"):
        stft(torch.randn(2, 3, 100), 16, 4)
    with pytest.raises(ValueError, match="floating-point"):
        stft(torch.arange(100), 16, 4)
    with pytest.raises(ValueError, match="n_fft=128 must be <= the signal length"):
        stft(x, 128, 4, center=False)
    with pytest.raises(ValueError, match="reflect-pads"):
        stft(x, 256, 4)
    with pytest.raises(ValueError, match="hop_length must be a positive int"):
        stft(x, 16, 0)
    with pytest.raises(ValueError, match="hop_length must be a positive int"):
        frame(x, 16, -2)
    with pytest.raises(ValueError, match="window must have length n_fft=16"):
        stft(x, 16, 4, window=torch.ones(8))
    with pytest.raises(ValueError, match="orig_sr must be a positive int"):
        resample(x, 0, 8000)
    with pytest.raises(ValueError, match="new_sr must be a positive int"):
        resample(x, 8000, 8000.5)
    with pytest.raises(ValueError, match="rolloff"):
        resample(x, 8000, 4000, rolloff=1.5)
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(40, 256, 8000, f_max=5000)
    with pytest.raises(ValueError, match="cover no FFT bin"):
        mel_filterbank(128, 64, 8000)
    with pytest.raises(ValueError, match="norm"):
        mel_filterbank(10, 256, 8000, norm="area")
    with pytest.raises(ValueError, match="n_out must be <= n_in"):
        dct_matrix(20, 10)
    with pytest.raises(ValueError, match="n_mfcc must be <= n_mels"):
        mfcc(torch.randn(4000), 8000, n_mfcc=50, n_mels=40)


# ---- spectral analysis: windows, overlap-add, inverse STFT, dBFS, CMVN, SpecAugment ---------------

from mmlearn.preprocess.audio import cmvn, dbfs, istft_ola, overlap_add, spec_augment, window_sidelobes  # noqa: E402


@pytest.mark.parametrize("name,width,sidelobe", [("ones", 2, -13.26), ("hann_window", 4, -31.47),
                                                 ("hamming_window", 4, -42.68), ("blackman_window", 6, -58.11)])
def test_window_sidelobes_match_closed_forms(name, width, sidelobe):
    # null-to-null widths 2K bins for a K-term cosine window; side lobes of the large-N limit (Harris 1978)
    n = 512
    w = torch.ones(n, dtype=F64) if name == "ones" else getattr(torch, name)(n, dtype=F64)
    got_width, got_db = window_sidelobes(w)
    assert got_width == width
    assert abs(got_db - sidelobe) < 0.05


def test_overlap_add_is_the_adjoint_of_frame():
    # <frame(x), Y> == <x, overlap_add(Y)> for every x and Y: OLA is frame's transpose
    g = torch.Generator().manual_seed(3)
    for L, hop, n_frames in [(8, 3, 5), (16, 16, 4), (10, 1, 7)]:
        T = L + hop * (n_frames - 1)
        x, Y = torch.randn(T, generator=g, dtype=F64), torch.randn(n_frames, L, generator=g, dtype=F64)
        torch.testing.assert_close((frame(x, L, hop) * Y).sum(), (x * overlap_add(Y, hop)).sum())


@pytest.mark.filterwarnings("ignore:The length of signal is shorter")
@given(st.integers(8, 96), st.integers(1, 4), st.integers(0, 300), st.booleans(), st.booleans(),
       st.sampled_from(["hann", "hamming", "ones"]), st.integers(-20, 20))
def test_istft_ola_equals_torch_istft(n_fft, hop_div, extra, batched, center, kind, length_delta):
    hop = max(1, n_fft // hop_div // 2) if kind == "hann" else max(1, n_fft // hop_div)
    window = {"hann": torch.hann_window, "hamming": torch.hamming_window,
              "ones": lambda n, dtype: torch.ones(n, dtype=dtype)}[kind](n_fft, dtype=F64)
    if kind == "hann" and not center:
        window = torch.hamming_window(n_fft, dtype=F64)     # Hann is 0 at n = 0: NOLA fails at the first sample
    T = n_fft + extra
    x = torch.randn((2, T) if batched else (T,), dtype=F64)
    spec = torch.stft(x, n_fft, hop, window=window, center=center, return_complex=True)
    length = T + length_delta if center and T + length_delta > 0 else None
    ref = torch.istft(spec, n_fft, hop, window=window, center=center, length=length)
    torch.testing.assert_close(istft_ola(spec, n_fft, hop, window=window, center=center, length=length), ref,
                               atol=1e-10, rtol=1e-10)


def test_istft_ola_reconstructs_the_signal(device):
    x = torch.randn(3, 4000, dtype=F64, device=device)
    w = torch.hann_window(400, dtype=F64, device=device)
    spec = stft(x, 400, 100, window=w)
    torch.testing.assert_close(istft_ola(spec, 400, 100, window=w, length=4000), x, atol=1e-12, rtol=0)
    x32 = x.float()
    spec32 = torch.stft(x32, 256, 64, window=torch.hann_window(256, device=device), return_complex=True)
    out = istft_ola(spec32, 256, 64, window=torch.hann_window(256, device=device), length=4000)
    assert out.dtype == torch.float32 and out.device.type == device.type
    torch.testing.assert_close(out, x32, atol=1e-5, rtol=1e-5)


def test_dbfs_of_reference_signals():
    n = torch.arange(16000, dtype=F64)
    sine = torch.sin(2 * math.pi * 1000 * n / 16000)                      # whole periods: exact RMS 1/√2
    assert abs(dbfs(sine).item()) < 1e-9
    assert abs(dbfs(0.5 * sine).item() - 20 * math.log10(0.5)) < 1e-9
    square = torch.sign(torch.sin(2 * math.pi * (n + 0.5) / 16))           # ±1, no zeros
    assert abs(dbfs(square).item() - 10 * math.log10(2)) < 1e-9
    torch.testing.assert_close(dbfs(torch.stack([sine, square])), torch.stack([dbfs(sine), dbfs(square)]))


def test_cmvn_normalises_and_removes_a_constant_offset(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 13, 50, generator=g, dtype=F64) * 3 + 5).to(device)
    y = cmvn(x, eps=0.0)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 13, dtype=F64, device=device), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.std(-1, unbiased=False), torch.ones(2, 13, dtype=F64, device=device))
    ref = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(y, ref)
    offset = torch.randn(13, 1, dtype=F64, device=device)                  # a fixed gain per channel, in log
    torch.testing.assert_close(cmvn(x + offset, variance=False), cmvn(x, variance=False))
    torch.testing.assert_close(cmvn(x + offset), cmvn(x))


def test_spec_augment_masks_contiguous_bands_and_keeps_the_rest():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 40, 120, dtype=F64) + 1.0                           # all values >= 1: masks are the zeros
    y = spec_augment(x, freq_masks=2, freq_width=8, time_masks=3, time_width=12, generator=g)
    assert y.shape == x.shape
    for spec_x, spec_y in zip(x, y):
        masked = spec_y == 0
        rows, cols = masked.all(1), masked.all(0)                          # whole channels / whole frames
        torch.testing.assert_close(spec_y[~masked], spec_x[~masked])
        assert torch.equal(masked, rows[:, None] | cols[None, :])          # every zero lies in a band
        assert rows.sum() <= 2 * 8 and cols.sum() <= 3 * 12
    same = spec_augment(x, freq_masks=2, freq_width=8, time_masks=3, time_width=12,
                        generator=torch.Generator().manual_seed(5))
    assert torch.equal(same, y)                                            # seeded: reproducible
    assert torch.equal(spec_augment(x, freq_masks=0, time_masks=0), x)


def test_spec_augment_mask_widths_are_uniform():
    # one mask of width ~ U{0..F}: the masked fraction has mean (F / 2) / n_mels
    g = torch.Generator().manual_seed(0)
    y = spec_augment(torch.ones(4000, 32, 4, dtype=F64), freq_masks=1, freq_width=10, time_masks=0, generator=g)
    masked_rows = (y[:, :, 0] == 0).sum(1).to(F64)                       # width of each mask
    assert set(masked_rows.long().tolist()) == set(range(11))
    assert abs(masked_rows.mean().item() - 5.0) < 4 * masked_rows.std().item() / math.sqrt(4000)


def test_spectral_bad_input_raises_value_error():
    spec = torch.stft(torch.randn(1000), 64, 16, window=torch.hann_window(64), return_complex=True)
    with pytest.raises(ValueError, match="n_fft//2 \\+ 1 = 65 rows"):
        istft_ola(spec, 128, 16)
    with pytest.raises(ValueError, match="must be complex"):
        istft_ola(spec.abs(), 64, 16)
    with pytest.raises(ValueError, match="window must have length n_fft=64"):
        istft_ola(spec, 64, 16, window=torch.ones(32))
    with pytest.raises(ValueError, match="NOLA"):
        istft_ola(spec, 64, 16, window=torch.hann_window(64), center=False)
    with pytest.raises(ValueError, match="at least 4 samples"):
        window_sidelobes(torch.ones(2))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        window_sidelobes(torch.ones(2, 8))
    with pytest.raises(ValueError, match="at least 2 frames"):
        cmvn(torch.randn(13, 1))
    with pytest.raises(ValueError, match=r"\(\.\.\., C, T\)"):
        cmvn(torch.randn(13))
    with pytest.raises(ValueError, match="floating-point"):
        dbfs(torch.arange(10))
    with pytest.raises(ValueError, match="freq_width <= n_mels=40"):
        spec_augment(torch.randn(40, 100), freq_width=41)
    with pytest.raises(ValueError, match="time_masks must be an int"):
        spec_augment(torch.randn(40, 100), time_masks=-1)
