"""Preprocessing of images, text and audio (chapter 2).

The functions live in three modules — :mod:`mmlearn.preprocess.image`, :mod:`.text`,
:mod:`.audio` — and are re-exported here, so ``mmlearn.preprocess.stft`` works. The re-export is
lazy: each name is imported from its module the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it (each chapter-2 module adds its public names to its own tuple)
_IMAGE = ("normalize", "standardize", "channel_stats", "to_grayscale", "otsu_threshold", "binarize",
          "resize_bilinear", "gaussian_kernel", "gaussian_blur", "srgb_to_linear", "linear_to_srgb", "luminance",
          "interpolation_kernel", "resample_matrix", "resize_antialias", "IMAGENET_MEAN", "IMAGENET_STD")
_TEXT = ("WordTokenizer", "CharTokenizer", "BPETokenizer", "Vocab", "remove_stopwords", "pad_sequences",
         "ENGLISH_STOPWORDS", "CHINESE_STOPWORDS", "WordPieceTokenizer", "max_match")
_AUDIO = ("resample", "frame", "stft", "mel_filterbank", "log_mel_spectrogram", "mfcc", "dft_matrix", "dct_matrix",
          "hz_to_mel", "mel_to_hz", "window_sidelobes", "overlap_add", "istft_ola", "dbfs", "cmvn", "spec_augment")

_WHERE = {**{n: "image" for n in _IMAGE}, **{n: "text" for n in _TEXT}, **{n: "audio" for n in _AUDIO}}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    if name in ("image", "text", "audio"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
