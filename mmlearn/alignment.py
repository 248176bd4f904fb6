"""Alignment (chapter 9): which frames go with which symbols.

Two answers to one question. **Dynamic time warping** aligns two sequences given a cost for every
pair of frames: the cheapest monotone path through the cost matrix. **Connectionist temporal
classification** (CTC; Graves et al. 2006) never picks one alignment: it sums the probability of
every frame-level labelling that collapses to the target, with a blank symbol for "no new label
here", by a forward recursion in log space.

    total, path = dtw(cost)                                        # cost (T1, T2)
    loss = ctc_loss(log_probs, targets, input_lengths, target_lengths)   # = F.ctc_loss
    greedy_decode(log_probs) / prefix_beam_search(log_probs[:, 0], beam_size=8)
"""

from __future__ import annotations

import math

import torch

from mmlearn._validate import require_floating, require_in, require_int, require_rank

__all__ = ["SpeechEncoder", "SpeechRecognizer", "collapse", "ctc_loss", "dtw", "greedy_decode", "masked_mean",
           "prefix_beam_search", "speech_features"]

NEG_INF = -math.inf


# ---- dynamic time warping ---------------------------------------------------------------------

def dtw(cost: torch.Tensor) -> tuple[float, list[tuple[int, int]]]:
    """Cheapest monotone alignment of two sequences, given ``cost`` (T1, T2) of matching frame i with j.

    D[i, j] = cost[i, j] + min(D[i-1, j], D[i, j-1], D[i-1, j-1]),  D[0, 0] = cost[0, 0];
    the path starts at (0, 0), ends at (T1-1, T2-1) and each step advances i, j or both.
    Returns (D[T1-1, T2-1], path); costs may be inf (a forbidden cell), and when no finite path exists
    the result is (inf, []). The anti-diagonals of D depend only on the previous two, so each
    is computed as one vector operation (T1 + T2 - 1 steps instead of T1 · T2).
    """
    cost = require_floating(require_rank(cost, "cost", 2, "(T1, T2)"), "cost").detach().to("cpu", torch.float64)
    T1, T2 = cost.shape
    if T1 == 0 or T2 == 0:
        raise ValueError(f"cost must be non-empty, got shape {tuple(cost.shape)}")
    D = torch.full((T1 + 1, T2 + 1), math.inf, dtype=torch.float64)                # D[i+1, j+1]: padded
    D[0, 0] = 0.0
    for d in range(T1 + T2 - 1):                                                    # anti-diagonal i + j = d
        i = torch.arange(max(0, d - T2 + 1), min(T1, d + 1))
        j = d - i
        best = torch.minimum(torch.minimum(D[i, j + 1], D[i + 1, j]), D[i, j])      # up, left, diagonal
        D[i + 1, j + 1] = cost[i, j] + best
    total = float(D[T1, T2])
    return total, (_backtrack(D) if math.isfinite(total) else [])


def _backtrack(D: torch.Tensor) -> list[tuple[int, int]]:
    i, j = D.shape[0] - 1, D.shape[1] - 1
    path = [(i - 1, j - 1)]
    while (i, j) != (1, 1):
        steps = [(a, b) for a, b in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if a >= 1 and b >= 1]
        i, j = min(steps, key=lambda s: float(D[s]))                                 # ties: the diagonal
        path.append((i - 1, j - 1))
    return path[::-1]


# ---- CTC loss -----------------------------------------------------------------------------------

def _extended_targets(targets: torch.Tensor, target_lengths: torch.Tensor | None, blank: int) -> torch.Tensor:
    """l' = (blank, l_1, blank, l_2, ..., l_S, blank) per sample, padded with blanks: (N, 2 S_max + 1).

    Padding beyond a sample's length is harmless: the loss reads α only up to index 2 S_n.
    """
    N, S = targets.shape
    ext = torch.full((N, 2 * S + 1), blank, dtype=torch.long, device=targets.device)
    ext[:, 1::2] = targets
    return ext


def _padded_targets(targets: torch.Tensor, target_lengths: torch.Tensor, N: int, blank: int) -> torch.Tensor:
    """Accept F.ctc_loss's two layouts: (N, S_max) padded, or 1-D concatenated (sum of lengths,)."""
    if targets.dim() == 2:
        if targets.shape[0] != N or targets.shape[1] < int(target_lengths.max()):
            raise ValueError(f"targets must be (N, S_max) with N = {N} and S_max >= max(target_lengths), "
                             f"got {tuple(targets.shape)}")
        valid = torch.arange(targets.shape[1], device=targets.device)[None, :] < target_lengths[:, None]
        return torch.where(valid, targets.long(), blank)                             # padding is ignored
    if targets.numel() != int(target_lengths.sum()):
        raise ValueError(f"1-D targets must hold sum(target_lengths) = {int(target_lengths.sum())} labels, "
                         f"got {targets.numel()}")
    S = int(target_lengths.max()) if N else 0
    out = torch.full((N, S), blank, dtype=torch.long, device=targets.device)
    for n, piece in enumerate(torch.split(targets.long(), target_lengths.tolist())):
        out[n, :len(piece)] = piece
    return out


def ctc_log_alpha(log_probs: torch.Tensor, ext: torch.Tensor, blank: int) -> torch.Tensor:
    """Forward variables log α_t(s) for every t: (T, N, 2S+1).

    α_0(0) = y_blank(0), α_0(1) = y_{l'_1}(0), other α_0(s) = 0, and for t ≥ 1
    α_t(s) = (α_{t-1}(s) + α_{t-1}(s-1) + [l'_s ≠ blank ∧ l'_s ≠ l'_{s-2}] α_{t-1}(s-2)) · y_{l'_s}(t),
    computed with logsumexp; y_{l'_s}(t) = exp(log_probs[t, n, l'_s]). "Probability 0" is the
    finite log value ``_LOG_ZERO`` rather than -inf, so that gradients never meet inf - inf.
    """
    T, N, _ = log_probs.shape
    L = ext.shape[1]
    emit = log_probs.gather(2, ext.unsqueeze(0).expand(T, N, L))                     # (T, N, L) log y
    skip_ok = torch.zeros(N, L, dtype=torch.bool, device=ext.device)
    skip_ok[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    zero = emit.new_full((N, 1), _LOG_ZERO)
    alpha = torch.cat([emit[0, :, :2], emit.new_full((N, L - 2), _LOG_ZERO)], dim=1) if L > 1 else emit[0]
    alphas = [alpha]
    for t in range(1, T):
        step = torch.cat([zero, alpha[:, :-1]], dim=1)                              # from s - 1
        skip = torch.cat([zero, zero, alpha[:, :-2]], dim=1)[:, :L].masked_fill(~skip_ok, _LOG_ZERO)
        alpha = torch.logsumexp(torch.stack([alpha, step, skip]), dim=0) + emit[t]
        alphas.append(alpha)
    return torch.stack(alphas)                                                       # (T, N, L)


_LOG_ZERO = -1e30


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
             target_lengths: torch.Tensor, blank: int = 0, reduction: str = "mean") -> torch.Tensor:
    """CTC loss −log p(l | x) = −log(α_{T-1}(2S) + α_{T-1}(2S−1)), with ``F.ctc_loss``'s conventions.

    ``log_probs`` (T, N, C) log-softmax outputs; ``targets`` (N, S_max) padded or 1-D concatenated;
    ``input_lengths`` and ``target_lengths`` (N,). ``reduction``: ``"none"`` (N,), ``"sum"``, or
    ``"mean"`` (each loss divided by its target length, then the batch mean). A target that cannot
    fit in its input (it needs S plus one frame per repeated pair) has probability 0: loss ``inf``.
    """
    log_probs = require_floating(require_rank(log_probs, "log_probs", 3, "(T, N, C)"), "log_probs")
    require_in(reduction, "reduction", ("none", "sum", "mean"))
    T, N, C = log_probs.shape
    blank = require_int(blank, "blank", 0, C - 1)
    input_lengths, target_lengths = (torch.as_tensor(v, device=log_probs.device).long().reshape(-1)
                                     for v in (input_lengths, target_lengths))
    if input_lengths.numel() != N or target_lengths.numel() != N:
        raise ValueError(f"input_lengths and target_lengths must have N = {N} entries, "
                         f"got {input_lengths.numel()} and {target_lengths.numel()}")
    if int(input_lengths.max()) > T or int(input_lengths.min()) < 1:
        raise ValueError(f"input_lengths must be in 1..T = {T}, got {input_lengths.tolist()}")
    padded = _padded_targets(torch.as_tensor(targets, device=log_probs.device), target_lengths, N, blank)
    if padded.numel() and (int(padded.min()) < 0 or int(padded.max()) >= C):
        raise ValueError(f"target labels must be in 0..C-1 = {C - 1}, "
                         f"got range {int(padded.min())}..{int(padded.max())}")
    alpha = ctc_log_alpha(log_probs, _extended_targets(padded, target_lengths, blank), blank)
    last = alpha[input_lengths - 1, torch.arange(N, device=alpha.device)]             # (N, L) at t = T_n - 1
    end = 2 * target_lengths                                                          # index of the final blank
    final = torch.stack([last.gather(1, end[:, None]), last.gather(1, (end - 1).clamp(min=0)[:, None])], dim=1)
    final[:, 1] = torch.where(target_lengths[:, None] > 0, final[:, 1], torch.full_like(final[:, 1], _LOG_ZERO))
    loss = -torch.logsumexp(final.squeeze(2), dim=1)                                  # (N,)
    loss = torch.where(loss > -_LOG_ZERO / 2, torch.full_like(loss, math.inf), loss)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return (loss / target_lengths.clamp(min=1).to(loss.dtype)).mean()


# ---- decoding -----------------------------------------------------------------------------------

def collapse(path: list[int], blank: int = 0) -> list[int]:
    """The CTC collapse B: merge repeated labels, then drop blanks (B(a a - a b b) = a a b)."""
    out, previous = [], None
    for label in path:
        if label != previous and label != blank:
            out.append(label)
        previous = label
    return out


def greedy_decode(log_probs: torch.Tensor, input_lengths: torch.Tensor | None = None,
                  blank: int = 0) -> list[list[int]]:
    """Best path decoding: B(argmax_c y_c(t) for each t), per sample. ``log_probs`` (T, N, C)."""
    log_probs = require_rank(log_probs, "log_probs", 3, "(T, N, C)")
    T, N, _ = log_probs.shape
    lengths = [T] * N if input_lengths is None else [int(v) for v in input_lengths]
    best = log_probs.argmax(-1).T.tolist()                                            # (N, T)
    return [collapse(best[n][:lengths[n]], blank) for n in range(N)]


def prefix_beam_search(log_probs: torch.Tensor, beam_size: int = 8, blank: int = 0) -> list[int]:
    """CTC prefix beam search for one utterance, ``log_probs`` (T, C): (an approximation to) the most probable *text*.

    Keeps, for each candidate prefix ℓ, two log probabilities: p_b(ℓ) (paths ending in a blank) and
    p_nb(ℓ) (ending in ℓ's last label). At each frame, a prefix is extended by c ≠ blank: from both
    if c differs from ℓ's last label, only from p_b if it repeats it (a repeat without a blank in
    between collapses); staying adds the blank or the repeated last label. The ``beam_size`` best
    prefixes by p_b + p_nb survive (Hannun et al. 2014).
    """
    log_probs = require_rank(log_probs, "log_probs", 2, "(T, C)").detach().to("cpu", torch.float64)
    beam_size = require_int(beam_size, "beam_size", 1)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}          # prefix -> (p_b, p_nb)
    for y in log_probs.tolist():
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (p_b, p_nb) in beams.items():
            total = _logaddexp(p_b, p_nb)
            _accumulate(nxt, prefix, 0, total + y[blank])                             # a blank: same prefix
            if prefix:
                _accumulate(nxt, prefix, 1, p_nb + y[prefix[-1]])                     # repeat collapses
            for c, y_c in enumerate(y):
                if c == blank:
                    continue
                from_ = p_b if prefix and c == prefix[-1] else total
                _accumulate(nxt, prefix + (c,), 1, from_ + y_c)
        ranked = sorted(nxt.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)
        beams = {prefix: (p[0], p[1]) for prefix, p in ranked[:beam_size]}
    return list(max(beams.items(), key=lambda kv: _logaddexp(*kv[1]))[0])


def _accumulate(table: dict, prefix: tuple[int, ...], which: int, value: float) -> None:
    """table[prefix][which] ⊕= value in log space (which: 0 = ends in blank, 1 = ends in a label)."""
    entry = table.setdefault(prefix, [NEG_INF, NEG_INF])
    entry[which] = _logaddexp(entry[which], value)


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


# ---- a speech recogniser ------------------------------------------------------------------------

def speech_features(waves: list[torch.Tensor], sample_rate: int, *, n_fft: int = 512, hop_length: int = 384,
                    n_mels: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel frames of a batch of waveforms, standardised per utterance and band (CMVN).

    Returns (features (N, T_max, n_mels), lengths (N,)); frames beyond an utterance's length are 0.
    log(mel · |STFT|² + 1e-10) with a periodic Hann window, as chapter 2's ``log_mel_spectrogram``
    (which it equals), using ``torch.stft`` (an FFT) for speed.
    """
    from mmlearn.preprocess import mel_filterbank

    if not waves or any(require_rank(w, "wave", 1, "(T,)").numel() == 0 for w in waves):
        raise ValueError("waves must be a non-empty list of non-empty (T,) waveforms")
    window = torch.hann_window(n_fft, device=waves[0].device, dtype=waves[0].dtype)
    mel = mel_filterbank(n_mels, n_fft, sample_rate, dtype=waves[0].dtype, device=waves[0].device)
    frames = []
    for w in waves:                         # one STFT per utterance: padding never leaks into a frame
        power = torch.stft(w, n_fft, hop_length, window=window, center=True, pad_mode="reflect",
                           return_complex=True).abs() ** 2                          # (F, T_i)
        logmel = (mel @ power + 1e-10).log()                                         # (n_mels, T_i)
        mean, std = logmel.mean(1, keepdim=True), logmel.std(1, unbiased=False, keepdim=True)
        frames.append(((logmel - mean) / (std + 1e-5)).T)                            # (T_i, n_mels)
    lengths = torch.tensor([len(f) for f in frames], device=waves[0].device)
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), lengths


class SpeechRecognizer(torch.nn.Module):
    """Log-mel frames → characters, for CTC: a strided convolution, a bidirectional GRU, a linear layer.

    The convolution (kernel 5, stride 2) halves the frame rate; the GRU reads the whole utterance in
    both directions; the linear layer gives log-probabilities over ``num_classes`` symbols (blank = 0).
    forward(x (B, T, n_mels)) -> log_probs (B, ⌈T/2⌉, num_classes); ``output_lengths(T)`` = ⌈T/2⌉.
    """

    def __init__(self, num_classes: int, n_mels: int = 40, hidden: int = 96) -> None:
        super().__init__()
        self.n_mels = require_int(n_mels, "n_mels", 1)
        self.conv = torch.nn.Conv1d(n_mels, hidden, kernel_size=5, stride=2, padding=2)
        self.rnn = torch.nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(2 * hidden, require_int(num_classes, "num_classes", 2))

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return (lengths + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = require_rank(x, "x", 3, "(B, T, n_mels)")
        if x.shape[-1] != self.n_mels:
            raise ValueError(f"x must be (B, T, {self.n_mels}), got {tuple(x.shape)}")
        h = torch.nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)   # (B, T/2, hidden)
        h, _ = self.rnn(h)                                                            # (B, T/2, 2 hidden)
        return self.out(h).log_softmax(-1)                                            # (B, T/2, C)


# ---- one vector per utterance, for retrieval -----------------------------------------------------

def masked_mean(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first ``lengths[b]`` frames of each sequence: m_b = (1/L_b) Σ_{t < L_b} h[b, t].

    h (B, T, d), lengths (B,) integers in [1, T]; returns (B, d). Padding frames never enter the mean.
    """
    h = require_floating(require_rank(h, "h", 3, "(B, T, d)"), "h")
    lengths = require_rank(lengths, "lengths", 1, "(B,)")
    bad = len(lengths) != len(h) or lengths.is_floating_point()
    if bad or int(lengths.min()) < 1 or int(lengths.max()) > h.shape[1]:
        raise ValueError(f"lengths must be ({len(h)},) integers in [1, {h.shape[1]}], "
                         f"got {tuple(lengths.shape)} {lengths.tolist()[:8]}")
    keep = torch.arange(h.shape[1], device=h.device)[None, :] < lengths.to(h.device)[:, None]   # (B, T)
    return (h * keep[..., None]).sum(1) / lengths.to(h.device, h.dtype)[:, None]            # (B, d)


class SpeechEncoder(torch.nn.Module):
    """Log-mel frames → one vector per utterance, for contrastive retrieval (chapter 7's recipe).

    Two strided convolutions (kernel 5, stride 2 each: a quarter of the frame rate), a bidirectional
    GRU (packed, so that it never reads padding), the mean over the real output frames
    (:func:`masked_mean`), batch normalisation and a linear layer:

    e = W · BN(mean_t GRU(conv(x))_t).

    In eval mode an utterance's vector does not depend on its batch. The batch normalisation spreads
    the pooled vectors, which a mean over frames makes nearly alike at initialisation; without it,
    contrastive training sits on a plateau at log(batch size) for many more steps (measured).
    forward(x (B, T, n_mels), lengths (B,)) -> (B, dim);
    ``output_lengths(T)`` = ⌈⌈T/2⌉/2⌉. The call signature matches :class:`mmlearn.models.CLIP`'s
    text side (``text_encoder(ids, mask)``), so the spoken caption can take the place of the text.
    """

    def __init__(self, n_mels: int = 40, hidden: int = 64, dim: int = 64) -> None:
        super().__init__()
        self.n_mels, self.out_dim = require_int(n_mels, "n_mels", 1), require_int(dim, "dim", 1)
        hidden = require_int(hidden, "hidden", 1)
        self.conv1 = torch.nn.Conv1d(n_mels, hidden, kernel_size=5, stride=2, padding=2)
        self.conv2 = torch.nn.Conv1d(hidden, hidden, kernel_size=5, stride=2, padding=2)
        self.rnn = torch.nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.norm = torch.nn.BatchNorm1d(2 * hidden)
        self.out = torch.nn.Linear(2 * hidden, dim)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths + 1) // 2 + 1) // 2

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = require_rank(x, "x", 3, "(B, T, n_mels)")
        if x.shape[-1] != self.n_mels:
            raise ValueError(f"x must be (B, T, {self.n_mels}), got {tuple(x.shape)}")
        lengths = lengths.to(x.device)
        half, quarter = (lengths + 1) // 2, self.output_lengths(lengths)
        x = x * (torch.arange(x.shape[1], device=x.device) < lengths[:, None])[..., None]  # padding := 0
        h = torch.nn.functional.gelu(self.conv1(x.transpose(1, 2)))                  # (B, hidden, T/2)
        h = h * (torch.arange(h.shape[-1], device=x.device) < half[:, None])[:, None]  # padding stays 0
        h = torch.nn.functional.gelu(self.conv2(h)).transpose(1, 2)                  # (B, T/4, hidden)
        packed = torch.nn.utils.rnn.pack_padded_sequence(h, quarter.cpu(), batch_first=True, enforce_sorted=False)
        h = torch.nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True,
                                                   total_length=h.shape[1])[0]       # (B, T/4, 2 hidden)
        return self.out(self.norm(masked_mean(h, quarter)))                           # (B, dim)
