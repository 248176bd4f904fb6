"""Data for the book: ShapesWorld (image + caption + audio + questions), multimodal XOR, real samples.

**ShapesWorld** (chapter 1) is generated on the fly, deterministic given ``seed``, and fast
(vectorised; 10,000 scenes in about a second). A scene holds 1..``max_objects`` shapes on a black
canvas; each shape has a ``shape`` in :data:`SHAPES`, a ``color`` in :data:`COLORS`, a ``size`` in
:data:`SIZES` and a position. Objects never overlap. The same scene comes in three modalities:

* **image** — float32 ``(3, H, W)`` in [0, 1], anti-aliased by signed-distance smoothing:
  a pixel's coverage is ``clamp(1/2 - d, 0, 1)`` where ``d`` is its signed distance (in pixels)
  to the shape's edge, negative inside;
* **caption** — from the grammar ``OBJ (REL OBJ)*`` with ``OBJ = "a" SIZE COLOR SHAPE`` and
  ``REL`` in :data:`RELATIONS`. Objects are mentioned left to right; ``REL`` relates each object to
  the next one: ``"left of"`` when the horizontal gap is at least the vertical one, otherwise
  ``"above"`` / ``"below"`` (image rows grow downwards). Example:
  ``"a large red circle left of a small blue square"``; one object: ``"a small green triangle"``;
* **audio** — float32 ``(T,)`` in [-1, 1] at ``sample_rate`` Hz: object ``k`` (left to right) is a
  tone in time slot ``k`` (:data:`SLOT_SECONDS` long, the tone :data:`TONE_SECONDS` with
  :data:`FADE_SECONDS` raised-cosine fades). Pitch encodes colour (:data:`PITCH_HZ`), waveform
  encodes shape (circle = sine, square = square wave, triangle = triangle wave, both band-limited,
  so nothing aliases), peak amplitude encodes size (:data:`LOUDNESS`); Gaussian noise of standard
  deviation :data:`AUDIO_NOISE` is added everywhere. ``T = max_objects * round(SLOT_SECONDS * sample_rate)``
  (2000 samples for the defaults).

Every scene also has one question/answer pair (a type from :data:`QUESTION_TYPES`, a one-word
answer, always answerable from the image). Splits (:class:`ShapesDataset`): ``train``, ``val`` and
``test`` never contain a colour–shape pair of :data:`HELDOUT_COMBOS` (not in the image, caption,
audio or question); every ``heldout`` scene contains at least one — an honest zero-shot test.

**Multimodal XOR** (:func:`make_xor_modalities`): each modality alone carries no information about
the label; the pair determines it. **Real samples** (:func:`load_photo`, :func:`load_mri`,
:func:`load_eeg`) read the files that ship with matplotlib — nothing is downloaded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmlearn._validate import require_in, require_int
from mmlearn.speech import speak, spoken_captions  # noqa: F401 (spoken ShapesWorld, chapter 9; re-exported)

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
HELDOUT_COMBOS = (("red", "triangle"), ("green", "square"), ("blue", "circle"))  # (colour, shape)
SPLITS = ("train", "val", "test", "heldout")
RELATIONS = ("left of", "above", "below")
QUESTION_TYPES = ("count", "exists", "color_of_shape", "shape_of_color", "size_of_shape",
                  "leftmost_shape", "rightmost_color")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")

RGB = ((0.90, 0.15, 0.15), (0.15, 0.75, 0.20), (0.20, 0.35, 0.95), (0.95, 0.85, 0.10))  # per COLORS
RADIUS = (0.09, 0.15)          # per SIZES: circle radius as a fraction of the image side
SHAPE_SCALE = (1.0, 0.85, 1.3)  # per SHAPES: circle radius, square half-side, triangle circumradius (× RADIUS)
BOUND_SCALE = (1.0, 0.85 * math.sqrt(2), 1.3)  # radius of each shape's bounding circle (× RADIUS)
PITCH_HZ = (261.63, 329.63, 392.00, 523.25)  # per COLORS: C4, E4, G4, C5 (a C-major chord)
LOUDNESS = (0.4, 0.8)           # per SIZES: peak amplitude of the tone
SLOT_SECONDS, TONE_SECONDS, FADE_SECONDS, AUDIO_NOISE = 0.125, 0.1, 0.01, 0.01
MIN_IMAGE_SIZE, MAX_OBJECTS, MIN_SAMPLE_RATE = 16, 4, 2000
GAP_PIXELS = 1.5                # minimum distance between the bounding circles of two objects
EEG_SAMPLE_RATE = 80            # assumed: matplotlib's example plots the 800 samples over 10 s


# ---- validation --------------------------------------------------------------------------------


def _rng(seed: int, split: str | None) -> np.random.Generator:
    """One generator per (seed, split): splits with the same seed hold different scenes."""
    key = [seed] if split is None else [seed, 1 + SPLITS.index(split)]
    return np.random.default_rng(np.random.SeedSequence(key))


# ---- scene layout: attributes, positions -------------------------------------------------------

def _sample_attributes(rng: np.random.Generator, n: int, k: int, split: str | None) -> tuple[np.ndarray, ...]:
    """Number of objects, and per object shape, colour, size (N, K); -1 where absent."""
    n_obj = rng.integers(1, k + 1, size=n)
    present = np.arange(k)[None, :] < n_obj[:, None]                         # (N, K)
    heldout = {(COLORS.index(c), SHAPES.index(s)) for c, s in HELDOUT_COMBOS}
    allowed = [(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES))
               if split == "heldout" or split is None or (c, s) not in heldout]
    combos = np.array(allowed)[rng.integers(0, len(allowed), size=(n, k))]   # (N, K, 2)
    if split == "heldout":  # one object per scene (at a random slot) gets a held-out pair
        slot = (rng.random(n) * n_obj).astype(int)
        held = np.array(sorted(heldout))[rng.integers(0, len(heldout), size=n)]
        combos[np.arange(n), slot] = held
    size = rng.integers(0, len(SIZES), size=(n, k))
    color, shape = combos[..., 0], combos[..., 1]
    return n_obj, *(np.where(present, a, -1) for a in (shape, color, size))


def _place(rng: np.random.Generator, bound: np.ndarray, present: np.ndarray, gap: float,
           tries: int = 200) -> np.ndarray:
    """Centres (N, K, 2) in [0, 1] so that bounding circles stay inside and never touch (rejection)."""
    n, k = bound.shape
    pos = np.full((n, k, 2), np.nan)
    todo = np.arange(n)
    for _ in range(tries):  # restart, scene by scene, the scenes whose objects did not fit
        if todo.size == 0:
            return pos
        pos[todo] = np.nan
        failed = np.zeros(todo.size, dtype=bool)
        for j in range(k):
            need = present[todo, j].copy()
            for _ in range(50):
                idx = np.flatnonzero(need)
                if idx.size == 0:
                    break
                b = bound[todo[idx], j][:, None]                                 # (M, 1)
                cand = b + rng.random((idx.size, 2)) * (1 - 2 * b)              # (M, 2)
                d = np.linalg.norm(pos[todo[idx], :j] - cand[:, None], axis=-1)  # (M, j)
                clear = ~(d < bound[todo[idx], :j] + b + gap)                    # nan (absent) is clear
                ok = clear.all(axis=1)
                pos[todo[idx[ok]], j] = cand[ok]
                need[idx[ok]] = False
            failed |= need
        todo = todo[failed]
    raise ValueError(f"could not place the objects of {todo.size} scenes without overlap; "
                     f"use fewer objects (max_objects <= {MAX_OBJECTS}) or a larger image_size")


def _sort_left_to_right(pos: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reorder the objects of each scene by x (absent objects, x = nan, go last)."""
    order = np.argsort(np.where(np.isnan(pos[..., 0]), np.inf, pos[..., 0]), axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order[..., None] if a.ndim == 3 else order, axis=1)
    return tuple(take(a) for a in (pos, *arrays))


# ---- image: signed distances, anti-aliased coverage --------------------------------------------

def _sdf(px: torch.Tensor, py: torch.Tensor, shape: int, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, < 0 inside) from pixel offsets (M, S, S) to a shape of scale r (M, 1, 1).

    circle: |p| - r;  square: exact box distance with half-side a;
    triangle (apex up, centred on its centroid): max_i n_i·p - r_in over its three edge normals.
    """
    if shape == 0:
        return torch.hypot(px, py) - r
    if shape == 1:
        qx, qy = px.abs() - r, py.abs() - r
        outside = torch.hypot(qx.clamp(min=0), qy.clamp(min=0))
        return outside + torch.maximum(qx, qy).clamp(max=0)
    up = -py  # image rows grow downwards; the apex points up
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    d = torch.maximum(torch.maximum(-up, c * px + s * up), -c * px + s * up)
    return d - r / 2  # inradius = circumradius / 2


def _rasterize(image_size: int, pos: np.ndarray, shape: np.ndarray, color: np.ndarray,
               size: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    """Images (N, 3, S, S) = Σ_k coverage_k (S, S) × rgb_k (3,): objects never overlap, so no occlusion."""
    (n, k), s = shape.shape, image_size
    cover = torch.zeros(n, k, s, s)                                           # (N, K, S, S)
    centres = torch.arange(s, dtype=torch.float32) + 0.5                      # pixel centres
    scene, slot = np.nonzero(shape >= 0)
    for sh in range(len(SHAPES)):
        sel = shape[scene, slot] == sh
        sc, sl = scene[sel], slot[sel]
        for a in range(0, sc.size, chunk):
            i, j = sc[a:a + chunk], sl[a:a + chunk]
            cx = torch.from_numpy(pos[i, j, 0] * s).float()[:, None, None]   # (M, 1, 1)
            cy = torch.from_numpy(pos[i, j, 1] * s).float()[:, None, None]
            r = torch.tensor(RADIUS, dtype=torch.float32)[size[i, j]] * s * SHAPE_SCALE[sh]
            d = _sdf(centres[None, None, :] - cx, centres[None, :, None] - cy, sh, r[:, None, None])
            cover[torch.from_numpy(i), torch.from_numpy(j)] = (0.5 - d).clamp_(0, 1)  # (M, S, S)
    rgb = torch.tensor(RGB + ((0.0, 0.0, 0.0),))[torch.from_numpy(color)]    # (N, K, 3); -1 -> black
    images = torch.bmm(rgb.transpose(1, 2), cover.flatten(2))                 # (N, 3, S*S)
    return images.view(n, 3, s, s).clamp_(0, 1)


# ---- audio: one tone per object ----------------------------------------------------------------

def tone_templates(sample_rate: int) -> torch.Tensor:
    """Unit-peak tones (len(COLORS), len(SHAPES), L_tone) with fades, band-limited below sample_rate / 2.

    square   = 4/π · Σ_{k odd} sin(2π k f t) / k
    triangle = 8/π² · Σ_{k odd} (-1)^((k-1)/2) sin(2π k f t) / k²     (k f < sample_rate / 2)
    """
    length = round(TONE_SECONDS * sample_rate)
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    fade = min(round(FADE_SECONDS * sample_rate), length // 2)
    env = torch.ones(length, dtype=torch.float64)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * torch.arange(fade, dtype=torch.float64) / fade)
    env[:fade], env[length - fade:] = ramp, ramp.flip(0)
    out = torch.zeros(len(COLORS), len(SHAPES), length, dtype=torch.float64)
    for c, f in enumerate(PITCH_HZ):
        odd = torch.arange(1, int(sample_rate / 2 / f) + 1, 2, dtype=torch.float64)  # odd k, k f < sr/2
        sines = torch.sin(2 * math.pi * odd[:, None] * f * t)                        # (n_k, L)
        out[c, 0] = torch.sin(2 * math.pi * f * t)
        out[c, 1] = 4 / math.pi * (sines / odd[:, None]).sum(0)
        out[c, 2] = 8 / math.pi**2 * (sines * ((-1) ** ((odd - 1) / 2) / odd**2)[:, None]).sum(0)
    out = out / out.abs().amax(-1, keepdim=True)
    return (out * env).float()


def _synthesize(rng: np.random.Generator, shape: np.ndarray, color: np.ndarray, size: np.ndarray,
                sample_rate: int) -> torch.Tensor:
    """Audio (N, T): slot k holds LOUDNESS[size] × tone[color, shape] of object k, plus noise."""
    n, k = shape.shape
    slot = round(SLOT_SECONDS * sample_rate)
    tones = tone_templates(sample_rate)                                       # (4, 3, L_tone)
    present = torch.from_numpy(shape >= 0)
    c, s = torch.from_numpy(color.clip(0)), torch.from_numpy(shape.clip(0))
    amp = torch.tensor(LOUDNESS)[torch.from_numpy(size.clip(0))] * present     # (N, K)
    audio = torch.zeros(n, k, slot)
    audio[..., :tones.shape[-1]] = amp[..., None] * tones[c, s]               # (N, K, L_tone)
    audio = audio.reshape(n, k * slot)                                        # (N, T)
    audio += AUDIO_NOISE * torch.from_numpy(rng.standard_normal((n, k * slot), dtype=np.float32))
    return audio.clamp_(-1, 1)


# ---- text: captions and questions --------------------------------------------------------------

def _phrase(shape: int, color: int, size: int) -> str:
    return f"a {SIZES[size]} {COLORS[color]} {SHAPES[shape]}"


def _relation(p: np.ndarray, q: np.ndarray) -> str:
    """How object at p stands to the object at q, its right neighbour (dx >= 0; y grows downwards)."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    if dx >= abs(dy):
        return "left of"
    return "above" if dy > 0 else "below"


def _captions(pos: np.ndarray, shape: np.ndarray, color: np.ndarray, size: np.ndarray) -> list[str]:
    out = []
    for i in range(shape.shape[0]):
        m = int((shape[i] >= 0).sum())
        words = [_phrase(shape[i, 0], color[i, 0], size[i, 0])]
        for j in range(1, m):
            words += [_relation(pos[i, j - 1], pos[i, j]), _phrase(shape[i, j], color[i, j], size[i, j])]
        out.append(" ".join(words))
    return out


_PHRASE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})")


def parse_caption(caption: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Invert the caption grammar: ``([(size, color, shape), ...] left to right, [relation, ...])``."""
    parts = re.split(rf" ({'|'.join(RELATIONS)}) ", caption)
    objects, relations = [], parts[1::2]
    for p in parts[0::2]:
        m = _PHRASE.fullmatch(p)
        if m is None:
            grammar = "'a SIZE COLOR SHAPE (RELATION a SIZE COLOR SHAPE)*'"
            raise ValueError(f"caption must follow {grammar}, got {caption!r}")
        objects.append(m.groups())
    return objects, relations


def _valid_types(shape: np.ndarray, color: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, len(QUESTION_TYPES)) bool: a question about 'the circle' needs exactly one circle."""
    n = shape.shape[0]
    shape_once = np.stack([(shape == s).sum(1) == 1 for s in range(len(SHAPES))], 1)  # (N, 3)
    color_once = np.stack([(color == c).sum(1) == 1 for c in range(len(COLORS))], 1)  # (N, 4)
    always = np.ones(n, dtype=bool)
    return np.stack([always, always, shape_once.any(1), color_once.any(1), shape_once.any(1),
                     always, always], 1), shape_once, color_once


def _pick(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """One random True column per row of a (N, C) mask (every row has one)."""
    return np.argmax(np.where(mask, rng.random(mask.shape), -1.0), axis=1)


def _questions(rng: np.random.Generator, shape: np.ndarray, color: np.ndarray, size: np.ndarray,
               split: str | None) -> tuple[list[str], list[str], np.ndarray]:
    """One question/answer pair per scene; the type is uniform over those valid for the scene."""
    valid, shape_once, color_once = _valid_types(shape, color)
    qtype, qs, qc = _pick(rng, valid), _pick(rng, shape_once | ~shape_once.any(1, keepdims=True)), \
        _pick(rng, color_once | ~color_once.any(1, keepdims=True))
    heldout = {(COLORS.index(c), SHAPES.index(s)) for c, s in HELDOUT_COMBOS}
    combos = [(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES))
              if split in (None, "heldout") or (c, s) not in heldout]
    ask_present, any_combo = rng.random(len(shape)) < 0.5, rng.integers(0, len(combos), len(shape))
    qu, an = [], []
    for i in range(len(shape)):
        m, t = int((shape[i] >= 0).sum()), QUESTION_TYPES[qtype[i]]
        here = {(int(color[i, j]), int(shape[i, j])) for j in range(m)}
        s, c = int(qs[i]), int(qc[i])
        j_s = int(np.flatnonzero(shape[i] == s)[0]) if t in ("color_of_shape", "size_of_shape") else 0
        if t == "count":
            q, a = "how many objects are there?", NUMBER_WORDS[m]
        elif t == "exists":
            cc, ss = sorted(here)[int(any_combo[i]) % len(here)] if ask_present[i] else combos[any_combo[i]]
            q, a = f"is there a {COLORS[cc]} {SHAPES[ss]}?", "yes" if (cc, ss) in here else "no"
        elif t == "color_of_shape":
            q, a = f"what color is the {SHAPES[s]}?", COLORS[color[i, j_s]]
        elif t == "shape_of_color":
            j = int(np.flatnonzero(color[i] == c)[0])
            q, a = f"what shape is the {COLORS[c]} object?", SHAPES[shape[i, j]]
        elif t == "size_of_shape":
            q, a = f"what size is the {SHAPES[s]}?", SIZES[size[i, j_s]]
        elif t == "leftmost_shape":
            q, a = "what shape is the leftmost object?", SHAPES[shape[i, 0]]
        else:
            q, a = "what color is the rightmost object?", COLORS[color[i, m - 1]]
        qu.append(q)
        an.append(a)
    return qu, an, qtype


# ---- the batch ---------------------------------------------------------------------------------

@dataclass
class ShapesBatch:
    """N ShapesWorld scenes in three modalities, with labels and one question/answer pair each.

    images (N, 3, H, W) float32 in [0, 1]; audio (N, T) float32 in [-1, 1]; captions, questions,
    answers: list[str] of length N; positions (N, K, 2) float32 (x, y) centres in [0, 1], y down,
    nan where absent; labels: "n_objects" (N,), "shape"/"color"/"size" (N, K) indices (-1 = absent,
    objects ordered left to right), "question_type" (N,) index into QUESTION_TYPES.
    """

    images: torch.Tensor
    captions: list[str]
    audio: torch.Tensor
    labels: dict[str, torch.Tensor]
    positions: torch.Tensor
    questions: list[str]
    answers: list[str]
    sample_rate: int = 8000

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int | slice | torch.Tensor | np.ndarray | list[int]) -> ShapesBatch:
        if isinstance(idx, (int, np.integer)):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"index {idx} out of range for a ShapesBatch of {len(self)} scenes")
            idx = [int(idx) % len(self)]
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            t = torch.as_tensor(idx)
            rows = (t.nonzero().flatten() if t.dtype == torch.bool else t.flatten() % len(self)).tolist()
        index = torch.tensor(rows, dtype=torch.long)
        pick = lambda xs: [xs[r] for r in rows]
        return ShapesBatch(self.images[index], pick(self.captions), self.audio[index],
                           {k: v[index] for k, v in self.labels.items()}, self.positions[index],
                           pick(self.questions), pick(self.answers), self.sample_rate)

    def to(self, device: torch.device | str) -> ShapesBatch:
        """A copy whose tensors live on ``device``."""
        return ShapesBatch(self.images.to(device), self.captions, self.audio.to(device),
                           {k: v.to(device) for k, v in self.labels.items()}, self.positions.to(device),
                           self.questions, self.answers, self.sample_rate)


def make_shapes(n: int, *, image_size: int = 32, max_objects: int = 2, sample_rate: int = 8000,
                seed: int = 0, split: str | None = None) -> ShapesBatch:
    """Generate ``n`` ShapesWorld scenes (see the module docstring for the three modalities).

    ``split=None`` draws colour–shape pairs from all 12 combinations; ``"train"``/``"val"``/``"test"``
    exclude :data:`HELDOUT_COMBOS`; ``"heldout"`` puts at least one of them in every scene. Each
    (seed, split) gives its own, reproducible stream of scenes.
    """
    n = require_int(n, "n", 1)
    image_size = require_int(image_size, "image_size", MIN_IMAGE_SIZE)
    max_objects = require_int(max_objects, "max_objects", 1, MAX_OBJECTS)
    sample_rate = require_int(sample_rate, "sample_rate", MIN_SAMPLE_RATE)
    seed = require_int(seed, "seed", 0)
    if split is not None:
        require_in(split, "split", SPLITS)
    rng = _rng(seed, split)
    n_obj, shape, color, size = _sample_attributes(rng, n, max_objects, split)
    bound = np.array(RADIUS)[size.clip(0)] * np.array(BOUND_SCALE)[shape.clip(0)]       # (N, K)
    pos = _place(rng, bound, shape >= 0, GAP_PIXELS / image_size)
    pos, shape, color, size = _sort_left_to_right(pos, shape, color, size)
    questions, answers, qtype = _questions(rng, shape, color, size, split)
    labels = {"n_objects": torch.from_numpy(n_obj).long(), "shape": torch.from_numpy(shape).long(),
              "color": torch.from_numpy(color).long(), "size": torch.from_numpy(size).long(),
              "question_type": torch.from_numpy(qtype).long()}
    return ShapesBatch(images=_rasterize(image_size, pos, shape, color, size),
                       captions=_captions(pos, shape, color, size),
                       audio=_synthesize(rng, shape, color, size, sample_rate), labels=labels,
                       positions=torch.from_numpy(pos).float(), questions=questions, answers=answers,
                       sample_rate=sample_rate)


def hflip(batch: ShapesBatch) -> ShapesBatch:
    """Mirror every scene left–right *in every modality*, so that the scenes stay consistent.

    image: flipped along W; positions: x -> 1 - x; objects re-ordered left to right (labels too);
    caption: regenerated by the grammar (object order reverses, "above" <-> "below"); audio: the
    slots of the objects play in the new left-to-right order; answers to "leftmost" / "rightmost"
    questions are recomputed (the other question types do not depend on left and right).
    """
    pos = batch.positions.numpy().astype(np.float64).copy()
    pos[..., 0] = 1 - pos[..., 0]
    lab = {k: batch.labels[k].numpy() for k in ("shape", "color", "size")}
    pos, shape, color, size = _sort_left_to_right(pos, lab["shape"], lab["color"], lab["size"])
    n, k = shape.shape
    m = batch.labels["n_objects"][:, None]                                      # (N, 1)
    j = torch.arange(k)[None]                                                   # (1, K)
    src = torch.where(j < m, m - 1 - j, j)                                      # new slot j <- old slot src
    slots = batch.audio.view(n, k, -1)
    audio = slots.gather(1, src[..., None].expand_as(slots)).reshape(n, -1)
    answers = list(batch.answers)
    for i, t in enumerate(batch.labels["question_type"].tolist()):
        if QUESTION_TYPES[t] == "leftmost_shape":
            answers[i] = SHAPES[shape[i, 0]]
        elif QUESTION_TYPES[t] == "rightmost_color":
            answers[i] = COLORS[color[i, int(m[i]) - 1]]
    labels = dict(batch.labels, shape=torch.from_numpy(shape).long(), color=torch.from_numpy(color).long(),
                  size=torch.from_numpy(size).long())
    return ShapesBatch(batch.images.flip(-1), _captions(pos, shape, color, size), audio, labels,
                       torch.from_numpy(pos).float(), list(batch.questions), answers, batch.sample_rate)


class ShapesDataset(Dataset):
    """A ShapesWorld split as a ``torch.utils.data.Dataset`` (generated once, held in memory).

    ``split`` in ("train", "val", "test", "heldout"); ``make_shapes_kwargs`` are passed on
    (``image_size``, ``max_objects``, ``sample_rate``). Item ``i`` is a dict with ``image`` (3, H, W),
    ``audio`` (T,), ``caption``, ``question``, ``answer`` (str) and ``labels`` (dict of LongTensors);
    ``DataLoader``'s default collate stacks tensors and turns strings into lists.
    """

    def __init__(self, split: str = "train", n: int = 2000, seed: int = 0, **make_shapes_kwargs: Any) -> None:
        require_in(split, "split", SPLITS)
        self.split = split
        self.batch = make_shapes(n, seed=seed, split=split, **make_shapes_kwargs)

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        b = self.batch
        if not -len(b) <= i < len(b):
            raise IndexError(f"index {i} out of range for a ShapesDataset of {len(b)} scenes")
        return {"image": b.images[i], "audio": b.audio[i], "caption": b.captions[i],
                "question": b.questions[i], "answer": b.answers[i],
                "labels": {k: v[i] for k, v in b.labels.items()}}


# ---- multimodal XOR ----------------------------------------------------------------------------

def make_xor_modalities(n: int, *, dim: int = 8, noise: float = 0.5,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two modalities whose label is the XOR of one hidden bit in each.

    x_a, x_b ~ N(0, I_dim) independent; z_a = u·x_a + noise·ε_a, z_b = v·x_b + noise·ε_b with fixed
    random unit vectors u, v; y = 1[z_a z_b > 0]. Since sign(z_b) is a fair coin independent of x_a,
    P(y = 1 | x_a) = 1/2 exactly: each modality alone is at chance (any classifier), and so is any
    *sum* of per-modality scores; the product (u·x_a)(v·x_b) = uᵀ(x_a x_bᵀ)v decides y. The noise
    flips each sign with probability q = arctan(noise)/π, so the best possible accuracy is
    (1 - q)² + q² (0.748 for noise = 0.5; 1 for noise = 0).
    Returns x_a, x_b float32 (n, dim) and y int64 (n,) in {0, 1}.
    """
    n, dim = require_int(n, "n", 1), require_int(dim, "dim", 1)
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(require_int(seed, "seed", 0))
    u, v = torch.randn(2, dim, generator=g, dtype=torch.float64)
    u, v = u / u.norm(), v / v.norm()
    x_a, x_b = torch.randn(2, n, dim, generator=g, dtype=torch.float64)
    eps = torch.randn(2, n, generator=g, dtype=torch.float64)
    z_a, z_b = x_a @ u + noise * eps[0], x_b @ v + noise * eps[1]
    return x_a.float(), x_b.float(), (z_a * z_b > 0).long()


# ---- a real English corpus shipped with Python ---------------------------------------------------

def load_pydoc_corpus(val_every: int = 10, min_dedup: int = 60) -> tuple[str, str]:
    """Python's own documentation prose (``pydoc_data.topics.topics``: 79 topics of the language reference,
    about 465,000 characters of English), split **by topic** into ``(train_text, val_text)``.

    Topics are sorted by name; every ``val_every``-th one (index % val_every == val_every // 2) goes to
    validation. The topics overlap (``naming`` repeats most of ``execmodel``), so the text is cut into
    paragraphs (at blank lines; blank paragraphs dropped) and every paragraph of at least ``min_dedup``
    characters is kept **once**: in validation if a validation topic contains it, otherwise at its first
    occurrence in training.
    Without this, three quarters of the validation text would also be training text. Paragraphs are
    joined with a blank line; the result is the same on every machine.
    """
    from pydoc_data.topics import topics

    val_every, min_dedup = require_int(val_every, "val_every", 2), require_int(min_dedup, "min_dedup", 1)
    names = sorted(topics)
    is_val = {n: i % val_every == val_every // 2 for i, n in enumerate(names)}
    seen: set[str] = set()
    parts: dict[bool, list[str]] = {True: [], False: []}
    for val in (True, False):                                  # validation first: it keeps shared paragraphs
        for n in (m for m in names if is_val[m] == val):
            for para in re.split(r"\n(?:[ \t]*\n)+", topics[n].strip("\n")):
                if not para.strip() or len(para) >= min_dedup and para in seen:
                    continue
                seen.add(para)
                parts[val].append(para)
    return "\n\n".join(parts[False]), "\n\n".join(parts[True])


# ---- real samples shipped with matplotlib ------------------------------------------------------

def load_photo() -> torch.Tensor:
    """Grace Hopper's portrait (matplotlib's ``grace_hopper.jpg``): float32 (3, 600, 512) in [0, 1]."""
    from matplotlib import cbook
    from matplotlib import image as mpimg

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        pixels = mpimg.imread(f, format="jpg")                                # (600, 512, 3) uint8
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255.0


def load_mri() -> torch.Tensor:
    """An MRI slice (matplotlib's ``s1045.ima.gz``): float32 (1, 256, 256), raw intensities 0..215.

    The file holds 256×256 uint16 values and no header, so its byte order is an inference: the first
    byte of every pair is 0, and we read it big-endian (values 0..215, 8-bit data in the low byte).
    Reading it with the machine's (little-endian) byte order — as matplotlib's own example does —
    multiplies every value by 256; min-max normalisation gives the same tensor either way.
    """
    from matplotlib import cbook

    with cbook.get_sample_data("s1045.ima.gz") as f:                          # decompressed on read
        raw = np.frombuffer(f.read(), dtype=">u2").reshape(256, 256)
    return torch.from_numpy(raw.astype(np.float32))[None]


def load_eeg() -> torch.Tensor:
    """Four EEG channels (matplotlib's ``eeg.dat``): float32 (4, 800), channels × time.

    The file holds 800×4 float64 values (time × channel), each channel already standardised
    (mean ≈ 0, std ≈ 1). The file stores no sample rate: :data:`EEG_SAMPLE_RATE` Hz is inferred from
    matplotlib's example, which plots the 800 samples over 10 s.
    """
    from matplotlib import cbook

    with cbook.get_sample_data("eeg.dat") as f:
        raw = np.frombuffer(f.read(), dtype="<f8").reshape(800, 4)
    return torch.from_numpy(raw.T.astype(np.float32).copy())
