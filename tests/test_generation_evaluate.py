"""The instruments of chapter 10: connected components, object finding, the judge's bookkeeping, CLIPScore."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch

from mmlearn.data import make_shapes
from mmlearn.generation import ClipScorer, SceneJudge, clip_score, find_objects, label_components
from mmlearn.preprocess import WordTokenizer


def bfs_components(mask: torch.Tensor) -> int:
    """Reference: count 8-connected components of a (H, W) bool mask by breadth-first search."""
    h, w = mask.shape
    seen, count = torch.zeros_like(mask), 0
    for r in range(h):
        for c in range(w):
            if mask[r, c] and not seen[r, c]:
                count, queue = count + 1, deque([(r, c)])
                seen[r, c] = True
                while queue:
                    y, x = queue.popleft()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            v, u = y + dy, x + dx
                            if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                                seen[v, u] = True
                                queue.append((v, u))
    return count


@pytest.mark.parametrize("seed", range(5))
def test_label_components_matches_breadth_first_search(seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(4, 9, 13, generator=g) < 0.45
    labels = label_components(masks)
    for mask, lab in zip(masks, labels):
        assert ((lab > 0) == mask).all()
        assert len(lab[lab > 0].unique()) == bfs_components(mask)
        h, w = mask.shape
        for r, c in mask.nonzero().tolist():          # 8-neighbours inside the mask share a label
            for v in range(max(r - 1, 0), min(r + 2, h)):
                for u in range(max(c - 1, 0), min(c + 2, w)):
                    assert not mask[v, u] or lab[v, u] == lab[r, c]


def test_find_objects_recovers_count_and_centres_of_real_scenes():
    batch = make_shapes(200, max_objects=3, seed=3)
    objects = find_objects(batch.images, min_area=8)
    counts = torch.tensor([len(c) for c, _ in objects])
    assert (counts == batch.labels["n_objects"]).all()
    for (centres, _), pos, n in zip(objects, batch.positions, batch.labels["n_objects"]):
        # within half a pixel of the true centre (the images are 32 px)
        torch.testing.assert_close(centres, pos[: int(n)], atol=0.5 / 32, rtol=0)


def test_recognition_bookkeeping(monkeypatch):
    judge = SceneJudge(32)
    readings = [([("small", "red", "circle")], []),
                ([("large", "blue", "square"), ("small", "red", "circle")], ["above"]),
                ([("large", "blue", "square")], [])]
    monkeypatch.setattr(judge, "read", lambda images: readings)
    captions = ["a small red circle",                                    # all right
                "a large blue square left of a small red triangle",      # relation and one shape wrong
                "a large blue square left of a small red circle"]        # count wrong -> slot 2 missing
    rates = judge.recognition(torch.zeros(3, 3, 32, 32), captions)
    assert rates["count"] == pytest.approx(2 / 3)
    assert rates["shape"] == pytest.approx(3 / 5)       # circle ✓, square ✓, triangle ✗, square ✓, missing ✗
    assert rates["color"] == pytest.approx(4 / 5)
    assert rates["relation"] == pytest.approx(0 / 2)
    assert rates["all"] == pytest.approx(1 / 3)
    monkeypatch.setattr(judge, "read", lambda images: readings[:1])
    assert math.isnan(judge.recognition(torch.zeros(1, 3, 32, 32), captions[:1])["relation"])


def test_clip_score_is_weighted_clamped_cosine():
    batch = make_shapes(6, seed=1)
    scorer = ClipScorer(WordTokenizer().train(batch.captions))
    cos = (scorer.encode_image(batch.images) * scorer.encode_text(batch.captions)).sum(-1)
    torch.testing.assert_close(clip_score(scorer, batch.images, batch.captions), 2.5 * cos.clamp_min(0).detach())
    assert (clip_score(scorer, batch.images, batch.captions, weight=1.0) <= 1 + 1e-6).all()


def test_bad_inputs():
    judge = SceneJudge(32)
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 32, 32\), got \(2, 1, 32, 32\)"):
        judge.read(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="one caption per image"):
        judge.recognition(torch.zeros(2, 3, 32, 32), ["a small red circle"])
    with pytest.raises(ValueError, match="caption must follow"):
        judge.recognition(torch.zeros(1, 3, 32, 32), ["a red thing"])
    with pytest.raises(ValueError, match="image_size"):
        SceneJudge(8)

