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


# ---- Chinese captions and the Mandarin voice ------------------------------------------------------

ZH = {"small": "小", "large": "大", "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
      "circle": "圆形", "square": "正方形", "triangle": "三角形"}
ZH_REL = {"left of": "左边", "above": "上面", "below": "下面"}


def test_chinese_caption_for_every_attribute_combination():
    import itertools

    from mmlearn.data import COLORS, RELATIONS, SHAPES, SIZES
    from mmlearn.speech import chinese_caption

    objects = list(itertools.product(SIZES, COLORS, SHAPES))
    phrase = {o: f"{ZH[o[0]]}的{ZH[o[1]]}{ZH[o[2]]}" for o in objects}
    seen = set()
    for o in objects:
        english = f"a {o[0]} {o[1]} {o[2]}"
        assert chinese_caption(english) == "一个" + phrase[o]
        seen.add(chinese_caption(english))
    for a, b, rel in itertools.product(objects, objects, RELATIONS):
        english = f"a {' '.join(a)} {rel} a {' '.join(b)}"
        zh = chinese_caption(english)
        assert zh == f"一个{phrase[a]}在一个{phrase[b]}{ZH_REL[rel]}"
        seen.add(zh)
    assert len(seen) == len(objects) + len(objects) ** 2 * len(RELATIONS)      # no two captions collide
    english = "a large red circle left of a small blue square"
    assert chinese_caption(english) == "一个大的红色圆形在一个小的蓝色正方形左边"
    chain = chinese_caption("a large yellow square above a small red circle left of a small blue triangle")
    assert chain == "一个大的黄色正方形在一个小的红色圆形上面，这个小的红色圆形在一个小的蓝色三角形左边"


@pytest.mark.parametrize("caption", ["", "a big red circle", "a large red circle near a small blue square", 3])
def test_chinese_caption_bad_input(caption):
    from mmlearn.speech import chinese_caption

    with pytest.raises(ValueError, match="caption must"):
        chinese_caption(caption)


def test_mandarin_synthesis_is_deterministic_across_processes():
    import subprocess
    import sys

    from mmlearn.speech import CHINESE_VOICES

    text = "一个小的绿色三角形在一个大的黄色圆形上面"
    code = ("import sys; from mmlearn.speech import speak; "
            f"w = speak({text!r}, voice='cmn+m3', rate=170, pitch=40, sample_rate=22050); "
            "print(len(w), repr(float(w.double().sum())), repr(float(w.double().abs().sum())))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    here = speak(text, voice="cmn+m3", rate=170, pitch=40, sample_rate=22050)
    assert torch.equal(here, speak(text, voice="cmn+m3", rate=170, pitch=40, sample_rate=22050))
    assert runs == {f"{len(here)} {float(here.double().sum())!r} {float(here.double().abs().sum())!r}\n"}
    waves = speak_many([text], voice="cmn") + [speak(text, voice=v) for v in CHINESE_VOICES[1:4]]
    assert len({(len(w), round(w.abs().sum().item(), 3)) for w in waves}) == 4, "two Mandarin voices coincide"
    for noisy in ("cmn+f2", "cmn+whisper"):   # nondeterministic variants are not offered
        with pytest.raises(ValueError, match="unknown voice"):
            speak(text, voice=noisy)


def test_phonemes_give_the_standard_mandarin_tones():
    import re

    from mmlearn.speech import phonemes

    tones = re.findall(r"\d+", phonemes("红色三角形在左边", voice="cmn"))
    # hóng sè sān jiǎo xíng zài zuǒ bian: tones 2 4 1 3 2 4 3 neutral, as pitch contours
    assert tones == ["35", "51", "55", "214", "35", "51", "214", "11"]
    assert "r'Ed" in phonemes("a red circle", voice="en")
    with pytest.raises(ValueError, match="non-empty"):
        phonemes(" ", voice="cmn")


def test_spoken_captions_in_chinese():
    from mmlearn.speech import CHINESE_HELDOUT_VOICES, CHINESE_TRAIN_VOICES, CHINESE_VOICES, spoken_captions

    assert not set(CHINESE_HELDOUT_VOICES) & set(CHINESE_TRAIN_VOICES)
    assert set(CHINESE_HELDOUT_VOICES) | set(CHINESE_TRAIN_VOICES) == set(CHINESE_VOICES)
    captions = ["a small green triangle", "a large red circle left of a small blue square"]
    zh = spoken_captions(captions, ("cmn", "cmn+m1"), seed=0, group=1, sample_rate=8000, language="zh")
    assert zh.captions == ["一个小的绿色三角形", "一个大的红色圆形在一个小的蓝色正方形左边"]
    assert zh.voices == ["cmn", "cmn+m1"] and all(len(w) > 4000 for w in zh.waves)
    assert torch.equal(zh.waves[0], speak("一个小的绿色三角形", voice="cmn", rate=zh.rates[0], pitch=zh.pitches[0],
                                          sample_rate=8000))
    with pytest.raises(ValueError, match="Mandarin voices"):
        spoken_captions(captions, ("en",), language="zh")
    with pytest.raises(ValueError, match="language must be"):
        spoken_captions(captions, ("en",), language="fr")
