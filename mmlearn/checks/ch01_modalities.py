"""Checks for the exercises of notebooks/01_modalities.ipynb."""

from __future__ import annotations

import math

import torch

from mmlearn.checks import CheckFailed, expect_number, expect_value_error, fresh_generator, register


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=fresh_generator()))


@register("ex-ch01-bytes", hint="Count the numbers in the image (3 × H × W) and in the audio "
                                "(max_objects × slot length × sample rate), then multiply by the bytes of a float32.")
def _check_bytes(answer) -> None:
    expected = (3 * 64 * 64 + 3 * round(0.125 * 16000)) * 4
    expect_number(answer, expected, what="bytes of one scene (image + audio, float32)", tol=0.5)


@register("ex-ch01-relation", hint="Compare dx = q[0] - p[0] with |dy|; rows grow downwards, so dy > 0 means "
                                   "the right neighbour is lower and the first object is above it.")
def _check_relation(relation) -> None:
    from mmlearn.data import make_shapes, parse_caption

    b = make_shapes(60, max_objects=3, seed=_seed())
    for i, caption in enumerate(b.captions):
        _, relations = parse_caption(caption)
        for j, expected in enumerate(relations):
            p, q = (tuple(b.positions[i, k].tolist()) for k in (j, j + 1))
            got = relation(p, q)
            if got != expected:
                raise CheckFailed(f"p = ({p[0]:.3f}, {p[1]:.3f}), q = ({q[0]:.3f}, {q[1]:.3f}): "
                                  f"expected {expected!r}, got {got!r}")


@register("ex-ch01-pitch", hint="Window the wave, zero-pad with n=16*len(wave) in torch.fft.rfft, and read the "
                                "frequency of the largest magnitude from torch.fft.rfftfreq(n, 1 / sample_rate).")
def _check_pitch(dominant_frequency) -> None:
    gen = fresh_generator()
    for case in range(5):
        sr = int(torch.randint(4000, 16001, (1,), generator=gen))
        n = int(torch.randint(400, 1200, (1,), generator=gen))
        f = float(torch.empty(1).uniform_(max(150, 20 * sr / n), sr / 4, generator=gen))  # >= 20 cycles
        t = torch.arange(n, dtype=torch.float64) / sr
        wave = torch.sin(2 * math.pi * f * t + 1.0) + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)
        got = dominant_frequency(wave.float(), sr)
        expect_number(got, f, what=f"case {case}: a {f:.1f} Hz tone, {n} samples at {sr} Hz", tol=5.0)
    from mmlearn.data import PITCH_HZ, SLOT_SECONDS, make_shapes

    b = make_shapes(5, max_objects=1, seed=_seed())
    slot = round(SLOT_SECONDS * b.sample_rate)
    for i in range(len(b)):
        f = PITCH_HZ[b.labels["color"][i, 0]]
        got = dominant_frequency(b.audio[i, :slot], b.sample_rate)
        expect_number(got, f, what=f"ShapesWorld scene '{b.captions[i]}'", tol=5.0)


@register("ex-ch01-big-endian", hint="View the bytes as pairs (-1, 2) after converting to int64; the first byte of "
                                     "each pair is the high byte.")
def _check_big_endian(decode_uint16_be) -> None:
    gen = fresh_generator()
    for case in range(4):
        n = int(torch.randint(1, 50, (1,), generator=gen))
        values = torch.randint(0, 2**16, (n,), generator=gen)
        raw = torch.stack([values // 256, values % 256], 1).flatten().to(torch.uint8)
        got = decode_uint16_be(raw)
        if not isinstance(got, torch.Tensor) or got.shape != (n,):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"case {case}: {2 * n} bytes should give a tensor of shape ({n},), got {shape}")
        if not torch.equal(got.long(), values):
            k = int((got.long() != values).nonzero()[0])
            raise CheckFailed(f"case {case}: bytes ({raw[2 * k]}, {raw[2 * k + 1]}) should decode to "
                              f"{int(values[k])}, got {int(got[k])}")
    expect_value_error(decode_uint16_be, torch.zeros(3, dtype=torch.uint8), what="3 bytes (an odd number)")


@register("ex-ch01-same-color", hint="Count, for each colour, how many of the nine allowed colour–shape pairs "
                                     "have that colour; the two objects are drawn independently.")
def _check_same_color(answer) -> None:
    expect_number(answer, 21 / 81, what="P(same colour)", tol=2e-3)


@register("ex-ch01-xor-bayes", hint="q = arctan(noise) / π is the probability that noise flips one sign; the "
                                    "prediction is right when no sign or both signs flip.")
def _check_xor_bayes(answer) -> None:
    q = math.atan(1.0) / math.pi
    expect_number(answer, (1 - q) ** 2 + q**2, what="best accuracy at noise = 1", tol=2e-3)
