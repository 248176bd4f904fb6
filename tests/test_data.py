"""ShapesWorld, multimodal XOR and the real samples (mmlearn.data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmlearn import data as mdata
from mmlearn.data import (
    BOUND_SCALE,
    COLORS,
    HELDOUT_COMBOS,
    LOUDNESS,
    NUMBER_WORDS,
    PITCH_HZ,
    QUESTION_TYPES,
    RADIUS,
    RGB,
    SHAPE_SCALE,
    SHAPES,
    SIZES,
    SLOT_SECONDS,
    ShapesBatch,
    ShapesDataset,
    hflip,
    load_eeg,
    load_mri,
    load_photo,
    make_shapes,
    make_xor_modalities,
    parse_caption,
)


@pytest.fixture(scope="module")
def batch() -> ShapesBatch:
    return make_shapes(200, image_size=32, max_objects=3, seed=7)


def _objects(b: ShapesBatch, i: int) -> list[tuple[str, str, str]]:
    m = int(b.labels["n_objects"][i])
    return [(SIZES[b.labels["size"][i, j]], COLORS[b.labels["color"][i, j]], SHAPES[b.labels["shape"][i, j]])
            for j in range(m)]


# ---- determinism, shapes, dtypes, ranges ------------------------------------------------------

def test_same_seed_same_scenes_other_seed_other_scenes() -> None:
    a, b, c = make_shapes(20, seed=3), make_shapes(20, seed=3), make_shapes(20, seed=4)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    torch.testing.assert_close(a.audio, b.audio, rtol=0, atol=0)
    assert (a.captions, a.questions, a.answers) == (b.captions, b.questions, b.answers)
    for k in a.labels:
        assert torch.equal(a.labels[k], b.labels[k])
    assert a.captions != c.captions and not torch.equal(a.images, c.images)


@pytest.mark.parametrize(("size", "k", "sr"), [(16, 1, 2000), (32, 2, 8000), (48, 4, 16000)])
def test_shapes_dtypes_ranges(size: int, k: int, sr: int) -> None:
    n = 25
    b = make_shapes(n, image_size=size, max_objects=k, sample_rate=sr, seed=1)
    t = k * round(SLOT_SECONDS * sr)
    assert len(b) == n and b.sample_rate == sr
    assert b.images.shape == (n, 3, size, size) and b.images.dtype == torch.float32
    assert b.audio.shape == (n, t) and b.audio.dtype == torch.float32
    assert 0 <= b.images.min() and b.images.max() <= 1 and b.audio.abs().max() <= 1
    assert b.positions.shape == (n, k, 2) and b.positions.dtype == torch.float32
    assert len(b.captions) == len(b.questions) == len(b.answers) == n
    assert b.labels["n_objects"].shape == b.labels["question_type"].shape == (n,)
    for key in ("shape", "color", "size"):
        assert b.labels[key].shape == (n, k) and b.labels[key].dtype == torch.long
    n_obj = b.labels["n_objects"]
    assert n_obj.min() >= 1 and n_obj.max() <= k
    present = torch.arange(k)[None] < n_obj[:, None]
    for key, names in (("shape", SHAPES), ("color", COLORS), ("size", SIZES)):
        lab = b.labels[key]
        assert torch.equal(lab < 0, ~present) and lab.max() < len(names)
    assert torch.equal(b.positions[..., 0].isnan(), ~present)
    assert (b.positions[present] >= 0).all() and (b.positions[present] <= 1).all()
    assert all(len(a.split()) == 1 for a in b.answers)


# ---- the caption grammar and the labels agree -------------------------------------------------

def test_captions_parse_to_the_labels_and_relations_match_positions(batch: ShapesBatch) -> None:
    for i, caption in enumerate(batch.captions):
        objects, relations = parse_caption(caption)
        assert objects == _objects(batch, i)
        pos = batch.positions[i]
        for j, rel in enumerate(relations):
            dx, dy = (pos[j + 1] - pos[j]).tolist()
            assert dx >= 0  # objects are ordered left to right
            expected = "left of" if dx >= abs(dy) else ("above" if dy > 0 else "below")
            assert rel == expected, (caption, dx, dy)


def test_single_object_caption() -> None:
    b = make_shapes(60, max_objects=1, seed=2)
    assert all(len(c.split()) == 4 and c.startswith("a ") for c in b.captions)
    assert parse_caption("a small green triangle") == ([("small", "green", "triangle")], [])


def test_answers_follow_from_the_labels(batch: ShapesBatch) -> None:
    seen = set()
    for i, (q, a) in enumerate(zip(batch.questions, batch.answers)):
        objs = _objects(batch, i)
        qt = QUESTION_TYPES[batch.labels["question_type"][i]]
        seen.add(qt)
        words = q.rstrip("?").split()
        if qt == "count":
            expected = NUMBER_WORDS[len(objs)]
        elif qt == "exists":
            expected = "yes" if any((c, s) == (words[3], words[4]) for _, c, s in objs) else "no"
        elif qt in ("color_of_shape", "size_of_shape"):
            match = [o for o in objs if o[2] == words[-1]]
            assert len(match) == 1, "the question must name a shape that occurs once"
            expected = match[0][1] if qt == "color_of_shape" else match[0][0]
        elif qt == "shape_of_color":
            match = [o for o in objs if o[1] == words[4]]
            assert len(match) == 1, "the question must name a colour that occurs once"
            expected = match[0][2]
        elif qt == "leftmost_shape":
            expected = objs[0][2]
        else:
            expected = objs[-1][1]
        assert a == expected, (q, a, objs)
    assert seen == set(QUESTION_TYPES)


# ---- the image: colours, areas (anti-aliasing), no overlap ------------------------------------

def test_object_centre_pixels_have_the_object_colour(batch: ShapesBatch) -> None:
    s = batch.images.shape[-1]
    for i in range(len(batch)):
        for j in range(int(batch.labels["n_objects"][i])):
            x, y = (batch.positions[i, j] * s).long().tolist()
            rgb = torch.tensor(RGB[batch.labels["color"][i, j]])
            torch.testing.assert_close(batch.images[i, :, y, x], rgb)


@pytest.mark.parametrize("shape", range(3))
def test_coverage_sums_to_the_shape_area(shape: int) -> None:
    """Signed-distance smoothing is area-preserving to first order: Σ coverage ≈ exact area."""
    b = make_shapes(200, image_size=64, max_objects=1, seed=5)
    keep = b.labels["shape"][:, 0] == shape
    r = torch.tensor(RADIUS)[b.labels["size"][keep, 0]] * 64 * SHAPE_SCALE[shape]
    area = {0: math.pi * r**2, 1: 4 * r**2, 2: 3 * math.sqrt(3) / 4 * r**2}[shape]
    rgb = torch.tensor(RGB)[b.labels["color"][keep, 0]]                          # (M, 3)
    cover = b.images[keep].sum((2, 3))                                           # (M, 3)
    measured = (cover * rgb).sum(1) / (rgb * rgb).sum(1)
    torch.testing.assert_close(measured, area, rtol=0.03, atol=0.0)
    assert ((b.images[keep] > 0) & (b.images[keep] < rgb.max(1).values[:, None, None, None] - 1e-3)).any()


def test_objects_do_not_overlap(batch: ShapesBatch) -> None:
    bound = torch.tensor(RADIUS)[batch.labels["size"].clamp(min=0)] * \
        torch.tensor(BOUND_SCALE)[batch.labels["shape"].clamp(min=0)]
    for i in range(len(batch)):
        m = int(batch.labels["n_objects"][i])
        for j in range(m):
            for k in range(j + 1, m):
                d = (batch.positions[i, j] - batch.positions[i, k]).norm()
                assert d > bound[i, j] + bound[i, k]
    # and the bounding circles lie inside the canvas
    present = batch.labels["shape"] >= 0
    lo = batch.positions.nan_to_num(0.5) - bound[..., None]
    hi = batch.positions.nan_to_num(0.5) + bound[..., None]
    assert (lo[present] >= 0).all() and (hi[present] <= 1).all()


# ---- the audio: slot, pitch, waveform, loudness -----------------------------------------------

def test_audio_encodes_colour_shape_size_left_to_right() -> None:
    sr = 8000
    b = make_shapes(80, max_objects=2, sample_rate=sr, seed=11)
    slot = round(SLOT_SECONDS * sr)
    segments = b.audio.view(len(b), 2, slot).double()                         # (N, K, slot)
    present = b.labels["shape"] >= 0
    assert segments[~present].abs().max() < 0.1                             # empty slots: only noise
    seg = segments[present]                                                   # (M, slot)
    c, s, z = (b.labels[k][present] for k in ("color", "shape", "size"))
    torch.testing.assert_close(seg.abs().amax(1), torch.tensor(LOUDNESS, dtype=torch.float64)[z], atol=0.06, rtol=0)
    spec = torch.fft.rfft(seg * torch.hann_window(slot, dtype=torch.float64), n=16 * slot).abs()
    freqs = torch.fft.rfftfreq(16 * slot, 1 / sr, dtype=torch.float64)
    f0 = torch.tensor(PITCH_HZ, dtype=torch.float64)[c]
    assert ((freqs[spec.argmax(1)] - f0).abs() < 8).all()                    # pitch = colour
    third = spec.gather(1, (freqs[None] - 3 * f0[:, None]).abs().argmin(1, keepdim=True))[:, 0] / spec.amax(1)
    expected = torch.tensor([0.0, 1 / 3, 1 / 9], dtype=torch.float64)[s]     # 3rd harmonic: sine, square, triangle
    torch.testing.assert_close(third, expected, atol=0.05, rtol=0)


# ---- a consistent horizontal flip ------------------------------------------------------------

def test_hflip_is_consistent_across_modalities_and_an_involution(batch: ShapesBatch) -> None:
    f = hflip(batch)
    torch.testing.assert_close(f.images, batch.images.flip(-1), rtol=0, atol=0)
    # rendering the mirrored scene from its labels gives the mirrored image (all shapes are symmetric)
    attrs = (f.labels[k].numpy() for k in ("shape", "color", "size"))
    redraw = mdata._rasterize(32, f.positions.double().numpy(), *attrs)
    torch.testing.assert_close(redraw, f.images, atol=1e-5, rtol=0)
    for i, caption in enumerate(f.captions):
        objects, _ = parse_caption(caption)
        assert objects == _objects(f, i)
        x = f.positions[i, :len(objects), 0]
        assert (x[1:] >= x[:-1]).all()  # still ordered left to right
    assert sum(c != d for c, d in zip(f.captions, batch.captions)) > len(batch) // 3
    ff = hflip(f)
    assert ff.captions == batch.captions and ff.answers == batch.answers
    torch.testing.assert_close(ff.audio, batch.audio, rtol=0, atol=0)
    torch.testing.assert_close(ff.positions, batch.positions, equal_nan=True)
    # the flipped audio still encodes the objects left to right
    slot = round(SLOT_SECONDS * f.sample_rate)
    i = int((f.labels["n_objects"] == 2).nonzero()[0])
    assert torch.equal(f.audio[i, :slot], batch.audio[i, slot:2 * slot])


# ---- splits: held-out colour–shape pairs ------------------------------------------------------

def _combos(b: ShapesBatch, i: int) -> set[tuple[str, str]]:
    return {(c, s) for _, c, s in _objects(b, i)}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_regular_splits_never_show_a_heldout_pair(split: str) -> None:
    ds = ShapesDataset(split, n=300, seed=0, max_objects=3)
    b = ds.batch
    for i in range(len(b)):
        assert not _combos(b, i) & set(HELDOUT_COMBOS)
        for c, s in HELDOUT_COMBOS:
            assert f"{c} {s}" not in b.captions[i] and f"{c} {s}" not in b.questions[i]


def test_heldout_split_always_shows_a_heldout_pair() -> None:
    b = ShapesDataset("heldout", n=300, seed=0, max_objects=3).batch
    assert all(_combos(b, i) & set(HELDOUT_COMBOS) for i in range(len(b)))
    seen = set().union(*(_combos(b, i) for i in range(len(b))))
    assert set(HELDOUT_COMBOS) <= seen and len(seen) == len(COLORS) * len(SHAPES)


def test_splits_with_one_seed_hold_different_scenes() -> None:
    caps = {s: ShapesDataset(s, n=50, seed=0).batch.captions for s in ("train", "val", "test")}
    assert caps["train"] != caps["val"] != caps["test"] != caps["train"]


def test_dataset_items_and_collate() -> None:
    ds = ShapesDataset("val", n=10, seed=1, image_size=24, max_objects=2)
    item = ds[3]
    assert item["image"].shape == (3, 24, 24) and item["audio"].shape == (2000,)
    assert item["caption"] == ds.batch.captions[3] and item["answer"] == ds.batch.answers[3]
    assert item["labels"]["shape"].shape == (2,) and item["labels"]["n_objects"].dtype == torch.long
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 24, 24) and len(batch["caption"]) == 4
    assert batch["labels"]["color"].shape == (4, 2)
    with pytest.raises(IndexError):
        ds[10]


def test_batch_indexing(batch: ShapesBatch) -> None:
    sub = batch[torch.tensor([5, 2])]
    assert len(sub) == 2 and sub.captions == [batch.captions[5], batch.captions[2]]
    assert torch.equal(sub.images[1], batch.images[2]) and torch.equal(sub.labels["shape"][0], batch.labels["shape"][5])
    assert batch[3].captions == [batch.captions[3]] and len(batch[3]) == 1
    assert batch[-1].questions == [batch.questions[-1]]
    assert batch[10:20:5].answers == batch.answers[10:20:5]
    mask = torch.zeros(len(batch), dtype=torch.bool)
    mask[[1, 4]] = True
    assert batch[mask].captions == [batch.captions[1], batch.captions[4]]
    assert batch.to("cpu").images.device.type == "cpu"


# ---- multimodal XOR ---------------------------------------------------------------------------

def _logreg_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    model = torch.nn.Linear(x_train.shape[1], 1).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x_train).squeeze(1), y_train.double()) + 1e-4 * model.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((model(x_test).squeeze(1) > 0).long() == y_test).double().mean().item()


def test_xor_each_modality_alone_is_at_chance_the_product_is_not() -> None:
    x_a, x_b, y = (t.double() if t.is_floating_point() else t for t in make_xor_modalities(6000, seed=0))
    tr, te = slice(0, 4000), slice(4000, None)
    outer = (x_a[:, :, None] * x_b[:, None, :]).flatten(1)                  # (n, dim²)
    acc = {name: _logreg_accuracy(x[tr], y[tr], x[te], y[te])
           for name, x in {"a": x_a, "b": x_b, "concat": torch.cat([x_a, x_b], 1), "outer": outer}.items()}
    for name in ("a", "b", "concat"):
        assert abs(acc[name] - 0.5) < 0.05, acc
    q = math.atan(0.5) / math.pi                                             # P(noise flips a sign)
    assert acc["outer"] > (1 - q) ** 2 + q**2 - 0.04, acc                   # Bayes accuracy 0.748
    assert abs(y.double().mean() - 0.5) < 0.03


def test_xor_shapes_determinism_and_noise() -> None:
    x_a, x_b, y = make_xor_modalities(100, dim=5, seed=3)
    assert x_a.shape == x_b.shape == (100, 5) and x_a.dtype == torch.float32 and y.dtype == torch.long
    assert set(y.unique().tolist()) <= {0, 1}
    again = make_xor_modalities(100, dim=5, seed=3)
    assert all(torch.equal(p, q) for p, q in zip((x_a, x_b, y), again))
    assert not torch.equal(x_a, make_xor_modalities(100, dim=5, seed=4)[0])
    # noise = 0: y = 1[uᵀ (x_a x_bᵀ) v > 0] is a linear threshold of the outer product: separable
    x_a, x_b, y = (t.double() if t.is_floating_point() else t for t in make_xor_modalities(3000, noise=0.0, seed=1))
    outer = (x_a[:, :, None] * x_b[:, None, :]).flatten(1)
    assert _logreg_accuracy(outer[:2000], y[:2000], outer[2000:], y[2000:]) > 0.95


# ---- the real samples -------------------------------------------------------------------------

def test_real_samples() -> None:
    photo, mri, eeg = load_photo(), load_mri(), load_eeg()
    assert photo.shape == (3, 600, 512) and photo.dtype == torch.float32
    assert 0 <= photo.min() and photo.max() <= 1 and photo.std() > 0.1
    assert mri.shape == (1, 256, 256) and mri.dtype == torch.float32
    assert mri.min() == 0 and mri.max() == 215 and torch.equal(mri, mri.round())
    assert eeg.shape == (4, 800) and eeg.dtype == torch.float32
    torch.testing.assert_close(eeg.std(1), torch.ones(4), atol=0.01, rtol=0)
    # the MRI is smooth in big-endian order (neighbouring pixels are close)
    assert (mri[0, :, 1:] - mri[0, :, :-1]).abs().mean() < 10


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n": 0}, "n must be"), ({"n": -3}, "n must be"), ({"n": 2.5}, "n must be an int"),
    ({"n": 4, "image_size": 8}, "image_size must be"), ({"n": 4, "max_objects": 0}, "max_objects must be"),
    ({"n": 4, "max_objects": 9}, "max_objects must be"), ({"n": 4, "sample_rate": 500}, "sample_rate must be"),
    ({"n": 4, "seed": -1}, "seed must be"), ({"n": 4, "split": "training"}, "split must be one of"),
])
def test_make_shapes_bad_input(kwargs: dict, match: str) -> None:
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=match):
        make_shapes(n, **kwargs)


def test_other_bad_input() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        ShapesDataset("bogus", n=4)
    with pytest.raises(ValueError, match="n must be"):
        make_xor_modalities(0)
    with pytest.raises(ValueError, match="dim must be"):
        make_xor_modalities(10, dim=0)
    with pytest.raises(ValueError, match="noise must be"):
        make_xor_modalities(10, noise=-1.0)
    with pytest.raises(ValueError, match="caption must follow"):
        parse_caption("a huge purple circle")
    assert np.isfinite(make_shapes(1).audio.numpy()).all()
