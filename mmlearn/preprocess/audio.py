"""Audio preprocessing (chapter 2): resampling, framing, STFT, mel filterbank, log-mel, MFCC.

Every function takes a waveform ``(T,)`` or a batch ``(N, T)`` of floating-point samples and
returns tensors on the input's device and dtype (complex for the STFT).

- :func:`resample` — band-limited resampling by a rational factor (windowed-sinc low-pass);
- :func:`frame` — overlapping frames (equals ``x.unfold(-1, frame_length, hop_length)``);
- :func:`stft` — equals ``torch.stft(x, n_fft, hop_length, window=window, center=center,
  pad_mode="reflect", return_complex=True)``, computed with a DFT matrix;
- :func:`mel_filterbank`, :func:`log_mel_spectrogram`, :func:`mfcc` (HTK mel scale, DCT-II);
- spectral analysis (notebook 02_preprocessing_audio_spectral): :func:`window_sidelobes` (main-lobe
  width and highest side lobe of a window), :func:`overlap_add`, :func:`istft_ola` (weighted overlap-add, equals
  ``torch.istft``), :func:`dbfs`, :func:`cmvn` and :func:`spec_augment`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmlearn._validate import require_floating, require_int, require_min_rank, require_rank, require_tensor

_WAVE = "(T,) or (N, T)"


def _waveform(x: object, name: str = "x") -> torch.Tensor:
    x = require_rank(x, name, (1, 2), _WAVE)
    return require_floating(x, name)


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---- resampling ---------------------------------------------------------------------------------

def sinc_kernel(u: torch.Tensor, cutoff: float, width: int) -> torch.Tensor:
    """Hann-windowed ideal low-pass, evaluated at offsets ``u`` (in input samples).

    h(u) = 2 f_c sinc(2 f_c u) · w(u),  w(u) = ½ (1 + cos(π u / W)) for |u| ≤ W, else 0,

    with ``cutoff`` f_c in cycles per input sample (< ½), sinc(z) = sin(πz)/(πz), and
    W = ``width`` / (2 f_c): the window spans ``width`` zero crossings of the sinc on each side.
    """
    half = width / (2 * cutoff)                                    # W, in input samples
    window = torch.where(u.abs() <= half, 0.5 * (1 + torch.cos(math.pi * u / half)), torch.zeros_like(u))
    return 2 * cutoff * torch.sinc(2 * cutoff * u) * window


def resample(x: torch.Tensor, orig_sr: int, new_sr: int, *, width: int = 16, rolloff: float = 0.95) -> torch.Tensor:
    """Band-limited resampling from ``orig_sr`` to ``new_sr`` Hz (any rational factor).

    Output sample m sits at input time t_m = m · orig_sr / new_sr (in input samples); it is

        y[m] = Σ_n x[n] · h(t_m − n),

    with h the windowed-sinc low-pass of :func:`sinc_kernel`, cut off at
    f_c = ``rolloff`` · min(orig_sr, new_sr) / 2 Hz: below the Nyquist frequency of both rates, so a
    tone above the new Nyquist frequency is removed instead of folding back (aliasing).
    Output length: ceil(T · new_sr / orig_sr). Samples outside the signal count as 0.

    Vectorised: h is zero beyond W samples, so y[m] only needs the taps n = ⌊t_m⌋ + k,
    k ∈ [−⌈W⌉, ⌈W⌉]: gather them into a (T_out, taps) matrix and weight each row. The times t_m are
    computed exactly in integers (m · orig_sr // new_sr and the remainder).
    """
    x = _waveform(x)
    orig_sr, new_sr = _positive_int(orig_sr, "orig_sr"), _positive_int(new_sr, "new_sr")
    if not 0 < rolloff <= 1:
        raise ValueError(f"rolloff must be in (0, 1], got {rolloff!r}")
    _positive_int(width, "width")
    if orig_sr == new_sr:
        return x.clone()
    T = x.shape[-1]
    T_out = math.ceil(T * new_sr / orig_sr)
    cutoff = rolloff * min(orig_sr, new_sr) / 2 / orig_sr                       # f_c, cycles per input sample
    reach = math.ceil(width / (2 * cutoff))                                     # ⌈W⌉
    m = torch.arange(T_out)                          # kernel weights in float64 on the CPU, then moved
    n0 = (m * orig_sr) // new_sr                                                # ⌊t_m⌋, (T_out,)
    frac = ((m * orig_sr) % new_sr).to(torch.float64) / new_sr                  # t_m − ⌊t_m⌋
    k = torch.arange(-reach, reach + 2)                                         # (taps,)
    n = n0[:, None] + k[None, :]                                                # (T_out, taps)
    h = sinc_kernel(frac[:, None] - k[None, :].to(torch.float64), cutoff, width)  # h(t_m − n)
    h = torch.where((n >= 0) & (n < T), h, torch.zeros_like(h))                 # zeros outside
    taps = x[..., n.clamp(0, T - 1).to(x.device)]                               # (..., T_out, taps)
    return (taps * h.to(x.device, x.dtype)).sum(-1)                             # (..., T_out)


# ---- framing and the STFT -----------------------------------------------------------------------

def frame(x: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """Overlapping frames: out[..., t, n] = x[..., t · hop_length + n], n < frame_length.

    Shape ``(..., n_frames, frame_length)`` with n_frames = 1 + ⌊(T − frame_length) / hop_length⌋;
    equals ``x.unfold(-1, frame_length, hop_length)``.
    """
    x = _waveform(x)
    frame_length, hop_length = _positive_int(frame_length, "frame_length"), _positive_int(hop_length, "hop_length")
    T = x.shape[-1]
    if frame_length > T:
        raise ValueError(f"frame_length must be <= the signal length T={T}, got {frame_length}")
    n_frames = 1 + (T - frame_length) // hop_length
    starts = torch.arange(n_frames, device=x.device) * hop_length                       # (F,)
    idx = starts[:, None] + torch.arange(frame_length, device=x.device)[None, :]        # (F, L)
    return x[..., idx]                                                                  # (..., F, L)


def dft_matrix(n_fft: int, *, onesided: bool = True, dtype: torch.dtype = torch.complex64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The DFT matrix W[k, n] = exp(−2πi · k · n / n_fft), rows k = 0..n_fft//2 when ``onesided``.

    The phase uses (k · n) mod n_fft, computed in integers, so it stays exact for large n_fft.
    """
    n_fft = _positive_int(n_fft, "n_fft")
    n_rows = n_fft // 2 + 1 if onesided else n_fft
    k = torch.arange(n_rows)[:, None]
    n = torch.arange(n_fft)[None, :]
    phase = (-2 * math.pi / n_fft) * ((k * n) % n_fft).to(torch.float64)               # (K, n_fft)
    return torch.polar(torch.ones_like(phase), phase).to(dtype).to(device)   # float64 on the CPU, then moved


def stft(x: torch.Tensor, n_fft: int, hop_length: int | None = None, window: torch.Tensor | None = None,
         center: bool = True) -> torch.Tensor:
    """Short-time Fourier transform, one-sided: ``(n_fft//2 + 1, n_frames)`` or ``(N, n_fft//2 + 1, n_frames)``.

        X[k, t] = Σ_{n=0}^{n_fft−1} w[n] · x[t · hop + n] · exp(−2πi k n / n_fft)

    ``window`` (length n_fft) defaults to rectangular (all ones) and ``hop_length`` to n_fft // 4,
    as in ``torch.stft``. With ``center`` the signal is first reflect-padded by n_fft // 2 on each
    side, so frame t is centred on sample t · hop. Equals ``torch.stft(x, n_fft, hop_length,
    window=window, center=center, pad_mode="reflect", return_complex=True)``.
    """
    x = _waveform(x)
    n_fft = _positive_int(n_fft, "n_fft")
    hop_length = _positive_int(n_fft // 4 if hop_length is None else hop_length, "hop_length")
    if window is None:
        window = torch.ones(n_fft, dtype=x.dtype, device=x.device)
    window = require_floating(require_rank(window, "window", 1, f"({n_fft},)"), "window")
    if window.shape[0] != n_fft:
        raise ValueError(f"window must have length n_fft={n_fft}, got shape {tuple(window.shape)}")
    T = x.shape[-1]
    if center:
        if n_fft // 2 >= T:
            raise ValueError(f"center=True reflect-pads by n_fft//2={n_fft // 2}, which must be < T={T}")
        x = F.pad(x.reshape(-1, 1, T), (n_fft // 2, n_fft // 2), mode="reflect").reshape(*x.shape[:-1], -1)
    elif n_fft > T:
        raise ValueError(f"n_fft={n_fft} must be <= the signal length T={T} when center=False")
    frames = frame(x, n_fft, hop_length) * window.to(x.device, x.dtype)              # (..., F, n_fft)
    complex_dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    W = dft_matrix(n_fft, dtype=complex_dtype, device=x.device)                    # (K, n_fft)
    spec = frames.to(complex_dtype) @ W.T                                            # (..., F, K)
    return spec.transpose(-1, -2)                                                    # (..., K, F)


# ---- mel scale, filterbank, log-mel, MFCC -------------------------------------------------------

def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: m = 2595 · log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor | float) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`: f = 700 · (10^(m / 2595) − 1)."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                   *, norm: str | None = None, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale: a matrix ``(n_mels, n_fft // 2 + 1)``, rows ≥ 0.

    The n_mels + 2 edge frequencies f_0 < f_1 < ... < f_{M+1} are equally spaced in mel between
    ``f_min`` and ``f_max`` (default sample_rate / 2). Filter m (1-based) is a triangle over the FFT
    bin frequencies f_k = k · sample_rate / n_fft:

        H_m(f) = max(0, min((f − f_{m−1}) / (f_m − f_{m−1}), (f_{m+1} − f) / (f_{m+1} − f_m)))

    Normalisation: ``norm=None`` (default) — each triangle peaks at 1 (HTK, torchaudio's default);
    ``norm="slaney"`` — each triangle is scaled by 2 / (f_{m+1} − f_{m−1}) so it has unit area and
    wide high-frequency filters do not dominate. Raises if a filter covers no FFT bin (too many mels
    for this n_fft): that channel would be zero forever.
    """
    n_mels, n_fft = _positive_int(n_mels, "n_mels"), _positive_int(n_fft, "n_fft")
    sample_rate = _positive_int(sample_rate, "sample_rate")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2 = {sample_rate / 2}, got f_min={f_min}, "
                         f"f_max={f_max}")
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    mels = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)                                                         # (M + 2,)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft  # (K,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]              # (M, 1) each
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)          # (M, K)
    fb = rising.minimum(falling).clamp(min=0.0)                                     # (M, K)
    if norm == "slaney":
        fb = fb * (2.0 / (hi - lo))
    empty = (fb.amax(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mel filters {empty[:5]} cover no FFT bin: n_mels={n_mels} is too many for n_fft={n_fft} "
                         f"(bin spacing {sample_rate / n_fft:.1f} Hz); use fewer mels or a larger n_fft")
    return fb.to(dtype=dtype, device=device)


def log_mel_spectrogram(x: torch.Tensor, sample_rate: int, n_fft: int = 256, hop_length: int | None = None,
                        n_mels: int = 40, *, f_min: float = 0.0, f_max: float | None = None,
                        window: torch.Tensor | None = None, eps: float = 1e-10) -> torch.Tensor:
    """log(mel filterbank @ |STFT|² + eps): ``(n_mels, n_frames)`` or ``(N, n_mels, n_frames)``.

    ``window`` defaults to a periodic Hann window of length n_fft; natural log; ``eps`` keeps
    silent frames finite (log eps ≈ −23).
    """
    x = _waveform(x)
    if window is None:
        window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    power = stft(x, n_fft, hop_length, window=window).abs() ** 2                      # (..., K, F)
    fb = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max, dtype=x.dtype, device=x.device)  # (M, K)
    return torch.log(fb @ power + eps)                                               # (..., M, F)


def dct_matrix(n_out: int, n_in: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Orthonormal DCT-II as a matrix ``(n_out, n_in)``, n_out ≤ n_in:

        D[k, n] = sqrt(2 / N) · c_k · cos(π k (n + ½) / N),  c_0 = 1/√2, c_k = 1 otherwise (N = n_in).

    Its rows are orthonormal: D Dᵀ = I (and Dᵀ D = I when n_out = n_in).
    """
    n_out, n_in = _positive_int(n_out, "n_out"), _positive_int(n_in, "n_in")
    if n_out > n_in:
        raise ValueError(f"n_out must be <= n_in={n_in} (a DCT has at most N coefficients), got {n_out}")
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    n = torch.arange(n_in, dtype=torch.float64)[None, :]
    D = math.sqrt(2.0 / n_in) * torch.cos(math.pi * k * (n + 0.5) / n_in)             # (n_out, n_in)
    D[0] /= math.sqrt(2.0)
    return D.to(dtype=dtype, device=device)


def mfcc(x: torch.Tensor, sample_rate: int, n_mfcc: int = 13, n_fft: int = 256, hop_length: int | None = None,
         n_mels: int = 40, **log_mel_kwargs) -> torch.Tensor:
    """Mel-frequency cepstral coefficients: the orthonormal DCT-II of the log-mel spectrum, per frame.

        c[i, t] = Σ_m D[i, m] · log_mel[m, t],   i < n_mfcc

    Shape ``(n_mfcc, n_frames)`` or ``(N, n_mfcc, n_frames)``.
    """
    logmel = log_mel_spectrogram(x, sample_rate, n_fft, hop_length, n_mels, **log_mel_kwargs)   # (..., M, F)
    if _positive_int(n_mfcc, "n_mfcc") > n_mels:
        raise ValueError(f"n_mfcc must be <= n_mels={n_mels}, got {n_mfcc}")
    D = dct_matrix(n_mfcc, n_mels, dtype=logmel.dtype, device=logmel.device)
    return D @ logmel                                                                            # (..., n_mfcc, F)


# ---- spectral analysis: windows, inverse STFT, levels, normalisation, augmentation ----------------

def window_sidelobes(window: torch.Tensor, oversample: int = 64) -> tuple[float, float]:
    """Main-lobe width (null to null, in DFT bins) and highest side-lobe level (dB) of a window.

    The window's spectrum W(ν) = Σ_n w[n] e^{−2πiνn/N} is sampled every 1/``oversample`` bin by a
    zero-padded FFT. The first null ν₁ is the first local minimum of |W| right of ν = 0; the main
    lobe spans [−ν₁, ν₁] (width 2ν₁) and the highest side lobe is max_{ν > ν₁} 20 log₁₀(|W(ν)| / |W(0)|).
    """
    window = require_floating(require_rank(window, "window", 1, "(N,)"), "window")
    if window.shape[0] < 4:
        raise ValueError(f"window must have at least 4 samples, got shape {tuple(window.shape)}")
    oversample = _positive_int(oversample, "oversample")
    w = window.detach().to("cpu", torch.float64)
    mag = torch.fft.rfft(w, n=oversample * len(w)).abs()                      # |W(ν)|, ν = j / oversample
    rising = (mag[1:-1] < mag[:-2]) & (mag[1:-1] <= mag[2:])                   # local minima
    first_null = int(rising.nonzero()[0]) + 1
    db = 20 * torch.log10(mag / mag[0] + 1e-300)
    return 2 * first_null / oversample, float(db[first_null:].max())


def overlap_add(frames: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Overlap-add: out[..., m] = Σ_t frames[..., t, m − t · hop_length], length L + hop · (T_f − 1).

    ``frames`` is ``(..., T_f, L)``; the adjoint of :func:`frame`.
    """
    frames = require_min_rank(frames, "frames", 2, "(..., n_frames, frame_length)")
    hop = _positive_int(hop_length, "hop_length")
    n_frames, L = frames.shape[-2:]
    dev = frames.device
    idx = (torch.arange(n_frames, device=dev)[:, None] * hop + torch.arange(L, device=dev)).flatten()  # (T_f·L,)
    out = frames.new_zeros(*frames.shape[:-2], L + hop * (n_frames - 1))
    return out.index_add_(-1, idx, frames.flatten(-2))


def istft_ola(spec: torch.Tensor, n_fft: int, hop_length: int | None = None, window: torch.Tensor | None = None,
              center: bool = True, length: int | None = None) -> torch.Tensor:
    """Inverse STFT by weighted overlap-add; equals ``torch.istft`` with the same arguments.

    Each column is inverted, y_t[n] = w[n] · IDFT(X[:, t])[n], and the frames are added at t · hop:

        x̂[m] = Σ_t y_t[m − t·hop] / Σ_t w²[m − t·hop]

    exact wherever the normaliser Σ_t w²[m − t·hop] ≠ 0 (the NOLA condition). ``spec`` is
    ``(n_fft//2 + 1, n_frames)`` or ``(N, n_fft//2 + 1, n_frames)``; ``center`` drops n_fft // 2 samples
    at each end, ``length`` trims or zero-pads the result.
    """
    spec = require_rank(spec, "spec", (2, 3), "(n_fft//2 + 1, n_frames) or (N, n_fft//2 + 1, n_frames)")
    n_fft = _positive_int(n_fft, "n_fft")
    hop = _positive_int(n_fft // 4 if hop_length is None else hop_length, "hop_length")
    if not spec.is_complex() or spec.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"spec must be complex with n_fft//2 + 1 = {n_fft // 2 + 1} rows, got {spec.dtype} "
                         f"shape {tuple(spec.shape)}")
    real = torch.float64 if spec.dtype == torch.complex128 else torch.float32
    w = (torch.ones(n_fft) if window is None else require_tensor(window, "window")).to(spec.device, real)
    if w.shape != (n_fft,):
        raise ValueError(f"window must have length n_fft={n_fft}, got shape {tuple(w.shape)}")
    y = overlap_add(torch.fft.irfft(spec.transpose(-1, -2), n=n_fft) * w, hop)         # Σ_t y_t, (..., L_total)
    env = overlap_add((w**2).expand(spec.shape[-1], n_fft), hop)                       # Σ_t w², (L_total,)
    start = n_fft // 2 if center else 0
    end = len(env) - start if length is None else min(len(env), start + length)
    if env[start:end].abs().min() < 1e-11:
        raise ValueError(f"window and hop_length={hop} violate NOLA: Σ_t w²[m − t·hop] = 0 somewhere in the output")
    out = y[..., start:end] / env[start:end]
    return out if length is None else F.pad(out, (0, length - out.shape[-1]))


def dbfs(x: torch.Tensor) -> torch.Tensor:
    """Level in dB relative to full scale, RMS convention: a sine of peak 1 reads 0 dBFS.

        L = 20 log₁₀( √2 · sqrt(mean_n x[n]²) )        (over the last axis; −inf for silence)

    Samples are assumed in [−1, 1] (full scale = 1). A full-scale square wave reads +3.01 dBFS.
    """
    x = require_floating(require_tensor(x, "x"), "x")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have at least one sample on its last axis, got shape {tuple(x.shape)}")
    return 20 * torch.log10(math.sqrt(2) * x.pow(2).mean(-1).sqrt())


def cmvn(features: torch.Tensor, *, variance: bool = True, eps: float = 1e-10) -> torch.Tensor:
    """Per-utterance cepstral mean (and variance) normalisation over time, for ``(..., C, T)`` features.

        μ_c = (1/T) Σ_t x[c, t],   σ_c² = (1/T) Σ_t (x[c, t] − μ_c)²,   y[c, t] = (x[c, t] − μ_c) / sqrt(σ_c² + eps)

    With ``variance=False`` only the mean is removed (CMN). A fixed gain or channel adds a constant
    per coefficient to log-mel features (and to MFCCs), so CMN removes it exactly.
    """
    x = require_floating(require_min_rank(features, "features", 2, "(..., C, T)"), "features")
    if x.shape[-1] < 2:
        raise ValueError(f"features need at least 2 frames on the last axis (T), got shape {tuple(x.shape)}")
    centred = x - x.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt() if variance else centred


def _mask(n: int, count: int, max_width: int, size: int, gen: torch.Generator | None, device) -> torch.Tensor:
    """(n, size) boolean: ``count`` bands per row, widths uniform in [0, max_width], starts uniform."""
    width = (torch.rand(n, count, generator=gen, dtype=torch.float64) * (max_width + 1)).floor()
    start = (torch.rand(n, count, generator=gen, dtype=torch.float64) * (size - width + 1)).floor()
    pos = torch.arange(size, dtype=torch.float64)
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])         # (n, count, size)
    return inside.any(1).to(device)


def spec_augment(spec: torch.Tensor, *, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2,
                 time_width: int = 10, mask_value: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment's frequency and time masking (Park et al., 2019) on ``(..., n_mels, T)``.

    For each spectrogram, ``freq_masks`` times: draw f ~ U{0..F}, f₀ ~ U{0..n_mels − f}, set channels
    [f₀, f₀ + f) to ``mask_value``; likewise ``time_masks`` bands of width t ~ U{0..T_w} in time.
    Time warping is left out. Use ``mask_value`` 0 on mean-normalised features (then 0 is the mean).
    """
    x = require_floating(require_min_rank(spec, "spec", 2, "(..., n_mels, T)"), "spec")
    counts = [require_int(v, k, low=0) for k, v in (("freq_masks", freq_masks), ("freq_width", freq_width),
                                                     ("time_masks", time_masks), ("time_width", time_width))]
    n_mels, T = x.shape[-2:]
    if (counts[0] and freq_width > n_mels) or (counts[2] and time_width > T):
        raise ValueError(f"freq_width <= n_mels={n_mels} and time_width <= T={T} required (for masks drawn), got "
                         f"{freq_width} and {time_width}")
    flat = x.reshape(-1, n_mels, T)                                                  # (B, M, T)
    f_mask = _mask(len(flat), counts[0], counts[1], n_mels, generator, x.device)    # (B, M)
    t_mask = _mask(len(flat), counts[2], counts[3], T, generator, x.device)         # (B, T)
    masked = f_mask[:, :, None] | t_mask[:, None, :]
    return flat.masked_fill(masked, mask_value).reshape(x.shape)
