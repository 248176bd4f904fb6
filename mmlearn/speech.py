"""Real speech, offline: the eSpeak NG synthesiser that the pip wheel ``espeakng-loader`` ships.

eSpeak NG (GPL-3.0) is a formant synthesiser: it turns text into phonemes with its own
dictionaries, then into a waveform. The wheel contains the shared library and its voice data, so
nothing is downloaded and no system package is needed. The book calls the library at run time
through ``ctypes``; it does not copy it.

    wave = speak("a large red circle", voice="en", rate=160, pitch=50)   # (T,) float32 at 16 kHz

The library keeps global state (one voice, one set of parameters), so calls are serialised with a
lock and every call sets all of its parameters: the same arguments give the same waveform.
"""

from __future__ import annotations

import _ctypes
import ctypes
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["CHINESE_HELDOUT_VOICES", "CHINESE_TRAIN_VOICES", "CHINESE_VOICES", "ENGLISH_VOICES", "HELDOUT_VOICES",
           "TRAIN_VOICES", "VARIANTS", "SpokenCaptions", "available_voices", "chinese_caption", "phonemes", "speak",
           "speak_many", "spoken_captions"]

_AUDIO_OUTPUT_SYNCHRONOUS, _CHARS_UTF8, _POS_CHARACTER = 2, 1, 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()
_LIBC = ctypes.CDLL(None)
_chunks: list[torch.Tensor] = []

# Voice variants that ship with the data (espeak-ng-data/voices/!v): a base language plus a variant
# changes formants, pitch and voice quality: different "speakers" for a split by voice. Left out:
# f2, f3, f5 and whisper, whose breath noise makes the same call give different waveforms (measured:
# 2-3 distinct outputs in 3 fresh processes), which would break "same arguments, same waveform".
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f4", "klatt", "klatt2", "croak")
ENGLISH_VOICES = tuple(["en"] + [f"en+{v}" for v in VARIANTS])
# The split by voice: a recogniser is trained on TRAIN_VOICES and tested on voices it never heard.
HELDOUT_VOICES = ("en+m7", "en+f4", "en+klatt2")
TRAIN_VOICES = tuple(v for v in ENGLISH_VOICES if v not in HELDOUT_VOICES)
# The Mandarin voice with the same variants. f2, f3, f5 and whisper are nondeterministic for cmn too
# (measured: the sums of the waveforms differ between fresh processes); the twelve VARIANTS are not.
CHINESE_VOICES = tuple(["cmn"] + [f"cmn+{v}" for v in VARIANTS])
CHINESE_HELDOUT_VOICES = ("cmn+m7", "cmn+f4", "cmn+klatt2")
CHINESE_TRAIN_VOICES = tuple(v for v in CHINESE_VOICES if v not in CHINESE_HELDOUT_VOICES)


def _on_samples(wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.c_void_p) -> int:
    if n > 0:
        _chunks.append(torch.tensor(wav[:n], dtype=torch.int16))
    return 0  # 0 = keep synthesising


_CALLBACK_REF = _CALLBACK(_on_samples)  # kept alive for as long as the library may call it


@lru_cache(maxsize=1)
def _paths() -> tuple[str, Path]:
    try:
        import espeakng_loader
    except ImportError as error:  # pragma: no cover - requirements.txt installs it
        raise ImportError("speech needs the pip package espeakng-loader (pip install -r requirements.txt)") from error
    return espeakng_loader.get_library_path(), Path(espeakng_loader.get_data_path())


@contextmanager
def _fresh_library() -> Iterator[tuple[ctypes.CDLL, int]]:
    """Load libespeak-ng, initialise it, yield (library, native sample rate), then unload it.

    eSpeak NG keeps state between utterances in C static variables (its pitch jitter, for one) and
    draws noise from the C library's ``rand()``, so the same text spoken twice in one process
    differs in the last digits and by a few samples. Unloading the library (dlclose), loading it
    again and reseeding ``rand()`` starts from a clean state: that makes :func:`speak` a function of
    its arguments. It costs about 30 ms per call.
    """
    library_path, data = _paths()
    lib = ctypes.CDLL(library_path)
    _LIBC.srand(1)  # eSpeak's noise sources (breathy voices, frication) draw from the C library's rand()
    try:
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data.parent).encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate})")
        lib.espeak_SetSynthCallback(_CALLBACK_REF)
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        yield lib, rate
    finally:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)


def available_voices() -> tuple[str, ...]:
    """Languages (``en``, ``cmn``, ...) that have a dictionary in the shipped data; add ``+variant``."""
    data = _paths()[1]
    return tuple(sorted(p.name.removesuffix("_dict") for p in data.glob("*_dict")))


def _check(text: str, voice: str, rate: int, pitch: int, sample_rate: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    language, _, variant = voice.partition("+")
    if language not in available_voices() or (variant and variant not in VARIANTS):
        raise ValueError(f"unknown voice {voice!r}: expected LANGUAGE or LANGUAGE+VARIANT with LANGUAGE in "
                         f"available_voices() (e.g. 'en', 'cmn') and VARIANT one of {', '.join(VARIANTS)}")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80..450 words per minute, got {rate!r}")
    if not 0 <= pitch <= 99:
        raise ValueError(f"pitch must be 0..99, got {pitch!r}")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")


def speak(text: str, *, voice: str = "en", rate: int = 160, pitch: int = 50, sample_rate: int = 16000) -> torch.Tensor:
    """Synthesise ``text`` and return a float32 waveform in [-1, 1] at ``sample_rate`` Hz, shape (T,).

    ``voice`` is a language with a dictionary in the shipped data (``en``, ``cmn``, ...), optionally
    with a variant (``en+f2``); ``rate`` is in words per minute, ``pitch`` 0..99 (eSpeak's scale,
    50 = the voice's default). The native output (22 050 Hz, int16) is scaled by 1/32768 and
    band-limited-resampled with :func:`mmlearn.preprocess.resample`. Same arguments, same waveform.
    """
    return speak_many([text], voice=voice, rate=rate, pitch=pitch, sample_rate=sample_rate)[0]


def speak_many(texts: list[str], *, voice: str = "en", rate: int = 160, pitch: int = 50,
               sample_rate: int = 16000) -> list[torch.Tensor]:
    """:func:`speak` for a list of texts in one voice, loading the synthesiser once (faster).

    The result is a function of the whole argument list (the synthesiser starts clean for each call).
    """
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
    for text in texts:
        _check(text, voice, rate, pitch, sample_rate)
    with _LOCK, _fresh_library() as (lib, native_rate):
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG could not load voice {voice!r}")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_VOLUME, 100), (_RANGE, 50)):
            lib.espeak_SetParameter(parameter, int(value), 0)
        raw = [_synthesise(lib, text) for text in texts]
    waves = [r.to(torch.float32) / 32768.0 for r in raw]
    return waves if sample_rate == native_rate else _resample_all(waves, native_rate, sample_rate)


def _resample_all(waves: list[torch.Tensor], orig_sr: int, new_sr: int, group: int = 32) -> list[torch.Tensor]:
    """Resample waveforms of different lengths, ``group`` at a time as one zero-padded (N, T) batch.

    :func:`~mmlearn.preprocess.resample` treats samples beyond the end as zeros, so padding with
    zeros and cutting each output to ceil(T_i · new_sr / orig_sr) gives exactly the one-by-one
    result, while the kernel weights are computed once per group.
    """
    from mmlearn.preprocess import resample

    out = []
    for start in range(0, len(waves), group):
        chunk = waves[start:start + group]
        batch = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)          # (N, T_max)
        resampled = resample(batch, orig_sr, new_sr)                              # (N, T_out_max)
        out += [resampled[i, :math.ceil(len(w) * new_sr / orig_sr)].contiguous() for i, w in enumerate(chunk)]
    return out


def _synthesise(lib: ctypes.CDLL, text: str) -> torch.Tensor:
    _chunks.clear()
    encoded = text.encode("utf-8")
    lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    samples = torch.cat(_chunks) if _chunks else torch.zeros(0, dtype=torch.int16)
    _chunks.clear()
    return samples


def phonemes(text: str, *, voice: str = "en") -> str:
    """The phonemes eSpeak NG will speak for ``text`` (its own notation, one word per ``_``-separated
    group; for ``cmn`` each syllable carries its tone as pitch digits, e.g. 红 → ``X'ong35``, tone 2).

    This is the synthesiser's reading of the text, before any sound is made: the way to check that a
    Chinese character was read as the intended syllable and tone.
    """
    _check(text, voice, 160, 50, 16000)
    with _LOCK, _fresh_library() as (lib, _):
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG could not load voice {voice!r}")
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer, parts = ctypes.c_void_p(ctypes.addressof(buffer)), []
        while pointer.value:                                   # one call per clause; NULL at the end
            parts.append(lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, 0).decode())
    return " ".join(p.strip() for p in parts if p.strip())


# ---- Chinese captions -------------------------------------------------------------------------------

ZH_SIZES = {"small": "小", "large": "大"}
ZH_COLORS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
ZH_RELATIONS = {"left of": "左边", "above": "上面", "below": "下面"}   # A 在 B 左边 = A is left of B


def chinese_caption(caption: str) -> str:
    """Render a ShapesWorld caption in Mandarin, from the same grammar (no translation model).

    OBJ = "a SIZE COLOR SHAPE"  →  一个 + SIZE的 + COLOR + SHAPE   ("a large red circle" → 一个大的红色圆形);
    "A REL B"                  →  A 在 B + 方位词                 (left of → 左边, above → 上面, below → 下面):
    "a large red circle left of a small blue square" → 一个大的红色圆形在一个小的蓝色正方形左边.
    A chain "A REL1 B REL2 C" becomes two clauses joined by "，", the second about 这个 (this) B:
    A在B左边，这个…B在C上面. The parts come from :func:`mmlearn.data.parse_caption`.
    """
    from mmlearn.data import parse_caption

    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}")
    objects, relations = parse_caption(caption)                 # [(size, colour, shape), ...], [rel, ...]
    phrases = [f"{ZH_SIZES[a]}的{ZH_COLORS[c]}{ZH_SHAPES[s]}" for a, c, s in objects]
    if not relations:
        return "一个" + phrases[0]
    clauses = [("一个" if k == 0 else "这个") + phrases[k] + "在一个" + phrases[k + 1] + ZH_RELATIONS[rel]
               for k, rel in enumerate(relations)]
    return "，".join(clauses)


# ---- spoken ShapesWorld -------------------------------------------------------------------------

@dataclass
class SpokenCaptions:
    """Captions and their spoken versions: ``waves[i]`` (T_i,) float32 says ``captions[i]``."""

    waves: list[torch.Tensor]
    captions: list[str]
    voices: list[str]
    rates: list[int]
    pitches: list[int]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.captions)


def spoken_captions(captions: list[str], voices: tuple[str, ...], *, seed: int = 0, group: int = 12,
                    rate_range: tuple[int, int] = (140, 220), pitch_range: tuple[int, int] = (30, 70),
                    sample_rate: int = 16000, language: str = "en") -> SpokenCaptions:
    """Speak every caption: each run of ``group`` captions gets the next voice (cycling through
    ``voices``) and a speaking rate and pitch drawn uniformly from the ranges (seeded: same
    arguments, same waveforms). Use disjoint voice lists for training and test sets.

    ``language="zh"`` speaks :func:`chinese_caption` of each (English) caption with Mandarin voices
    (``cmn``, ``cmn+m1``, ...); ``captions`` of the result then holds the Chinese texts, in order."""
    if not voices or not captions:
        raise ValueError(f"need at least one caption and one voice, got {len(captions)} and {len(voices)}")
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    if language == "zh":
        if any(v.partition("+")[0] != "cmn" for v in voices):
            raise ValueError(f"language='zh' needs Mandarin voices ('cmn', 'cmn+VARIANT'), got {tuple(voices)}")
        captions = [chinese_caption(c) for c in captions]
    rng = torch.Generator().manual_seed(seed)
    out = SpokenCaptions([], [], [], [], [], sample_rate)
    for k, start in enumerate(range(0, len(captions), group)):
        chunk = list(captions[start:start + group])
        voice = voices[k % len(voices)]
        rate, pitch = (int(torch.randint(lo, hi + 1, (1,), generator=rng)) for lo, hi in (rate_range, pitch_range))
        out.waves += speak_many(chunk, voice=voice, rate=rate, pitch=pitch, sample_rate=sample_rate)
        out.captions += chunk
        out.voices += [voice] * len(chunk)
        out.rates += [rate] * len(chunk)
        out.pitches += [pitch] * len(chunk)
    return out
