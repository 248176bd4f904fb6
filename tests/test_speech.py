"""Spoken captions with eSpeak NG: deterministic, the right shape and rate, clear errors."""

from __future__ import annotations

import pytest
import torch

from mmlearn.preprocess import resample
from mmlearn.speech import ENGLISH_VOICES, available_voices, speak, speak_many


def test_speak_is_a_function_of_its_arguments():
    first = speak("a large red circle", voice="en+m3", rate=180, pitch=40)
    speak("a small blue square", voice="en+f4")  # another call in between must not change the next one
    again = speak("a large red circle", voice="en+m3", rate=180, pitch=40)
    assert first.dtype == torch.float32 and first.dim() == 1
    assert torch.equal(first, again)
    assert 0.05 < first.abs().max() <= 1.0


def test_every_listed_english_voice_is_deterministic_and_distinct():
    waves = {v: speak("a green triangle", voice=v) for v in ENGLISH_VOICES}
    assert all(torch.equal(waves[v], speak("a green triangle", voice=v)) for v in ENGLISH_VOICES[:4])
    signatures = {(len(w), round(w.abs().sum().item(), 3)) for w in waves.values()}
    assert len(signatures) == len(ENGLISH_VOICES), "two voices produced the same waveform"


def test_rate_and_sample_rate_change_duration_as_expected():
    slow = speak("a large yellow square", rate=120, sample_rate=16000)
    fast = speak("a large yellow square", rate=300, sample_rate=16000)
    assert len(fast) < 0.7 * len(slow)
    native = speak("a large yellow square", rate=120, sample_rate=22050)
    torch.testing.assert_close(resample(native, 22050, 16000), slow, rtol=0, atol=1e-6)


def test_speak_many_equals_one_by_one_resampling():
    texts = ["a red circle", "a large blue square left of a small green triangle"]
    batch = speak_many(texts, voice="en+m1", sample_rate=16000)
    native = speak_many(texts, voice="en+m1", sample_rate=22050)
    for b, n in zip(batch, native):
        torch.testing.assert_close(b, resample(n, 22050, 16000), rtol=0, atol=1e-6)


def test_mandarin_voice_speaks_chinese():
    assert "cmn" in available_voices()
    wave = speak("一个大的红色圆形", voice="cmn")
    assert len(wave) > 8000 and wave.abs().max() > 0.05


@pytest.mark.parametrize("kwargs, match", [
    (dict(text=""), "non-empty"),
    (dict(text="hi", voice="klingon"), "unknown voice"),
    (dict(text="hi", voice="en+whisper"), "unknown voice"),
    (dict(text="hi", rate=20), "rate must be"),
    (dict(text="hi", pitch=120), "pitch must be"),
    (dict(text="hi", sample_rate=0), "sample_rate"),
])
def test_speak_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        speak(**kwargs)


def test_spoken_captions_cycle_voices_and_are_seeded():
    from mmlearn.speech import HELDOUT_VOICES, TRAIN_VOICES, spoken_captions

    assert not set(HELDOUT_VOICES) & set(TRAIN_VOICES)
    assert set(HELDOUT_VOICES) | set(TRAIN_VOICES) == set(ENGLISH_VOICES)
    captions = ["a red circle", "a blue square", "a small green triangle", "a yellow circle", "a large red square"]
    first = spoken_captions(captions, ("en+m1", "en+f1"), seed=3, group=2, sample_rate=8000)
    again = spoken_captions(captions, ("en+m1", "en+f1"), seed=3, group=2, sample_rate=8000)
    assert len(first) == 5 and first.voices == ["en+m1", "en+m1", "en+f1", "en+f1", "en+m1"]
    assert first.rates[0] == first.rates[1] and all(140 <= r <= 220 for r in first.rates)
    assert all(torch.equal(a, b) for a, b in zip(first.waves, again.waves))
    with pytest.raises(ValueError, match="at least one"):
        spoken_captions([], ("en",))
