"""Instruments that measure what a text-to-image generator made, trained on real scenes only.

A generated image is judged by two models that never saw a generated image:

* :class:`SceneJudge` — a CNN that reads a ShapesWorld image back into the caption grammar's
  attributes: the number of objects and, per object slot (left to right), its shape, colour and size,
  and the relation of each object to its right neighbour. :meth:`SceneJudge.recognition` compares
  what it reads with what a caption requested. Its accuracy on fresh *real* scenes,
  ``judge.real_accuracy``, is what a perfect generator (samples distributed like real scenes) would
  score, up to sampling noise: the reference for every rate it reports on generated ones.
* :class:`ClipScorer` — the book's CLIP (chapter 7) trained on real image–caption pairs;
  :func:`clip_score` is CLIPScore (Hessel et al., 2021): ``2.5 · max(cos(E_I(x), E_T(c)), 0)``.

Both train on all 12 colour–shape pairs (``make_shapes(split=None)``), so they can score a caption
whose pair the *generator* never saw (the held-out split of chapter 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmlearn._validate import require_int
from mmlearn.data import COLORS, SHAPES, SIZES, _relation, make_shapes, parse_caption
from mmlearn.device import get_device, seed_everything
from mmlearn.features import CNNEncoder
from mmlearn.models import CLIP, TextTransformer
from mmlearn.preprocess import WordTokenizer, pad_sequences

__all__ = ["label_components", "find_objects", "ObjectClassifier", "SceneJudge", "train_judge",
           "ClipScorer", "train_clip_scorer", "clip_score"]

ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "size": SIZES}
CROP = 16  # pixels: a crop of this side around each object's centroid holds the largest object at 32 px


def _check_images(images: object, image_size: int | None = None) -> torch.Tensor:
    size = images.shape[-1] if image_size is None and isinstance(images, torch.Tensor) else image_size
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3
            and images.shape[-2:] == (size, size)):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (N, 3, {size}, {size}), got {got}")
    return images


def label_components(foreground: torch.Tensor) -> torch.Tensor:
    """Connected components (8-neighbours) of a boolean (N, H, W) mask -> int labels (N, H, W), 0 = background.

    Every foreground pixel starts with its own label; repeated 3×3 max-pooling inside the foreground
    spreads each component's largest label over it (at most H·W rounds; far fewer in practice).
    """
    n, h, w = foreground.shape
    fg = foreground[:, None].float()                                           # (N, 1, H, W)
    labels = torch.arange(1, h * w + 1, dtype=torch.float32, device=fg.device).view(1, 1, h, w) * fg
    while True:
        spread = F.max_pool2d(labels, 3, stride=1, padding=1) * fg
        if torch.equal(spread, labels):
            return labels[:, 0].long()
        labels = spread


def find_objects(images: torch.Tensor, *, threshold: float = 0.3, min_area: float = 8.0
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (centres (M, 2) as (x, y) in [0, 1], component masks (M, S, S)), sorted left to right.

    Foreground = brightest channel > ``threshold``; a component smaller than ``min_area`` pixels
    (noise) is dropped. Centres are brightness-weighted means of pixel centres, in the units of
    ``ShapesBatch.positions``.
    """
    images = _check_images(images)
    s = images.shape[-1]
    bright = images.amax(dim=1)                                                # (N, S, S)
    labels = label_components(bright > threshold)
    grid = (torch.arange(s, dtype=torch.float32, device=images.device) + 0.5) / s
    out = []
    for i in range(len(images)):
        ids = labels[i].unique()
        masks = labels[i][None] == ids[ids > 0][:, None, None]                 # (M, S, S)
        masks = masks[masks.flatten(1).sum(1) >= min_area]
        wgt = masks * bright[i]                                                # (M, S, S)
        total = wgt.flatten(1).sum(1)
        centres = torch.stack([(wgt.sum(1) * grid).sum(1), (wgt.sum(2) * grid).sum(1)], 1) / total[:, None]
        order = centres[:, 0].argsort()
        out.append((centres[order], masks[order]))
    return out


def _crops(images: torch.Tensor, objects: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """(M, 3, CROP, CROP): each object alone (its component mask applied), centred on its centroid."""
    s, half = images.shape[-1], CROP // 2
    crops = []
    for image, (centres, masks) in zip(images, objects):
        padded = F.pad(image * masks[:, None], (half, half, half, half))      # (M, 3, S + CROP, S + CROP)
        for m, (x, y) in enumerate((centres * s).round().long().tolist()):
            crops.append(padded[m, :, y:y + CROP, x:x + CROP])
    return torch.stack(crops) if crops else images.new_zeros(0, 3, CROP, CROP)


class ObjectClassifier(nn.Module):
    """A small CNN on one object's crop (3, 16, 16) -> logits for shape (3), colour (4) and size (2)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers, c = [], 3
        for c_out, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            layers += [nn.Conv2d(c, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c = c_out
        self.body = nn.Sequential(*layers, nn.Flatten())                      # (M, 4w · 4 · 4)
        self.heads = nn.ModuleDict({k: nn.Linear(c * (CROP // 4) ** 2, len(v)) for k, v in ATTRIBUTES.items()})

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(crops)
        return {k: head(h) for k, head in self.heads.items()}


class SceneJudge(nn.Module):
    """Reads a ShapesWorld image back into the caption grammar, object by object.

    1. ``find_objects``: connected components of the bright pixels -> the count and each object's
       centre (left to right); 2. each object's crop -> :class:`ObjectClassifier` -> shape, colour,
       size; 3. the relation of each object to its right neighbour by the grammar's own rule
       (``mmlearn.data._relation`` on the centres). Only step 2 is learned.
    """

    def __init__(self, image_size: int = 32) -> None:
        super().__init__()
        self.image_size = require_int(image_size, "image_size", 16)
        self.classifier = ObjectClassifier()
        self.min_area = 0.3 * math.pi * (0.09 * image_size) ** 2               # 30 % of the smallest circle
        self.real_accuracy: dict[str, float] = {}

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[list[tuple[str, str, str]] | list[str]]:
        """Per image: ``(objects [(size, colour, shape), ...] left to right, relations [...])``."""
        images = _check_images(images, self.image_size).to(next(self.parameters()).device)
        objects = find_objects(images, min_area=self.min_area)
        was = self.training
        self.eval()
        logits = self.classifier(_crops(images, objects)) if sum(len(c) for c, _ in objects) else None
        self.train(was)
        out, m = [], 0
        for centres, _ in objects:
            k = len(centres)
            words = [tuple(ATTRIBUTES[a][int(logits[a][m + j].argmax())] for a in ("size", "color", "shape"))
                     for j in range(k)]
            pts = centres.cpu().numpy()
            out.append((words, [_relation(pts[j], pts[j + 1]) for j in range(k - 1)]))
            m += k
        return out

    def recognition(self, images: torch.Tensor, captions: list[str]) -> dict[str, float]:
        """Fraction of the attributes each caption requests that the judge reads in its image.

        count: over images; size, color, shape: over requested objects (slot by slot, left to right);
        relation: over requested relations (nan when no caption has one); all: over images, the
        count and every requested attribute and relation right.
        """
        if len(captions) != len(images):
            raise ValueError(f"need one caption per image, got {len(images)} images and {len(captions)} captions")
        hits = {h: [] for h in ("count", "size", "color", "shape", "relation", "all")}
        for (seen, seen_rel), caption in zip(self.read(images), captions):
            want, want_rel = parse_caption(caption)
            ok = [len(seen) == len(want)]
            hits["count"].append(ok[0])
            for j, obj in enumerate(want):
                for a, word in zip(("size", "color", "shape"), obj):
                    ok.append(j < len(seen) and seen[j][("size", "color", "shape").index(a)] == word)
                    hits[a].append(ok[-1])
            for j, rel in enumerate(want_rel):
                ok.append(j < len(seen_rel) and seen_rel[j] == rel)
                hits["relation"].append(ok[-1])
            hits["all"].append(all(ok))
        return {h: (sum(v) / len(v) if v else math.nan) for h, v in hits.items()}


def _object_targets(batch, objects: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, dict]:
    """Real scenes whose components match their objects one to one: (keep mask, labels per object)."""
    keep = torch.tensor([len(c) == int(n) for (c, _), n in zip(objects, batch.labels["n_objects"])])
    labels = {}
    for a in ATTRIBUTES:
        per_scene = [batch.labels[a][i, : int(batch.labels["n_objects"][i])] for i in keep.nonzero().flatten()]
        labels[a] = torch.cat(per_scene)
    return keep, labels


def train_judge(*, image_size: int = 32, max_objects: int = 2, n: int = 3000, steps: int = 300,
                batch_size: int = 128, lr: float = 3e-3, seed: int = 0, device: torch.device | None = None,
                progress: bool = True) -> SceneJudge:
    """Train a :class:`SceneJudge`'s object classifier on the objects of ``n`` real scenes of all 12 pairs.

    Sets ``judge.real_accuracy``: :meth:`SceneJudge.recognition` on 1000 fresh real scenes (the reference level).
    """
    device = device or get_device()
    seed_everything(seed)
    data = make_shapes(n, image_size=image_size, max_objects=max_objects, seed=seed)
    judge = SceneJudge(image_size).to(device)
    images = data.images.to(device)
    objects = find_objects(images, min_area=judge.min_area)
    keep, labels = _object_targets(data, objects)
    crops = _crops(images[keep.to(device)], [o for o, k in zip(objects, keep) if k])
    labels = {a: v.to(device) for a, v in labels.items()}
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in tqdm(range(steps), desc="judge (objects of real scenes)", disable=not progress):
        idx = torch.randint(0, len(crops), (batch_size,), device=device)
        logits = judge.classifier(crops[idx])
        loss = sum(F.cross_entropy(logits[a], labels[a][idx]) for a in ATTRIBUTES)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    fresh = make_shapes(1000, image_size=image_size, max_objects=max_objects, seed=seed + 10_000)
    judge.real_accuracy = judge.recognition(fresh.images, fresh.captions)
    return judge.eval()


class ClipScorer(nn.Module):
    """The book's CLIP with its word tokenizer: ``encode_image(images)``, ``encode_text(captions)`` (unit rows)."""

    def __init__(self, tokenizer: WordTokenizer, image_size: int = 32, max_objects: int = 2, dim: int = 64) -> None:
        super().__init__()
        self.tokenizer, self.image_size, self.max_len = tokenizer, image_size, 6 * max_objects
        text = TextTransformer(len(tokenizer), dim, depth=1, num_heads=4, max_len=self.max_len)
        self.clip = CLIP(CNNEncoder(3, dim, width=16, grid=4), text, embed_dim=dim)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.clip.logit_scale.device
        return pad_sequences([self.tokenizer.encode(c) for c in captions], self.tokenizer.pad_id, device=device)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        images = _check_images(images, self.image_size).to(self.clip.logit_scale.device)
        return self.clip.encode_image(images)                                   # (N, E)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return self.clip.encode_text(*self.tokenize(captions))                  # (N, E)


def train_clip_scorer(*, image_size: int = 32, max_objects: int = 2, n: int = 4000, steps: int = 150,
                      batch_size: int = 128, lr: float = 2e-3, seed: int = 0, device: torch.device | None = None,
                      progress: bool = True) -> ClipScorer:
    """Train a :class:`ClipScorer` with CLIP's symmetric InfoNCE on ``n`` real scenes of all 12 pairs."""
    device = device or get_device()
    seed_everything(seed)
    data = make_shapes(n, image_size=image_size, max_objects=max_objects, seed=seed + 1)
    scorer = ClipScorer(WordTokenizer().train(data.captions), image_size, max_objects).to(device)
    ids, mask = scorer.tokenize(data.captions)
    images = data.images.to(device)
    opt = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in tqdm(range(steps), desc="CLIP scorer (real scenes)", disable=not progress):
        idx = torch.randint(0, n, (batch_size,), device=device)
        loss = scorer.clip.loss(images[idx], ids[idx], mask[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        scorer.clip.clamp_logit_scale_()
        sched.step()
    return scorer.eval()


@torch.no_grad()
def clip_score(scorer: ClipScorer, images: torch.Tensor, captions: list[str], weight: float = 2.5) -> torch.Tensor:
    """CLIPScore (Hessel et al., 2021):  CLIP-S(x, c) = w · max(cos(E_I(x), E_T(c)), 0),  w = 2.5.  -> (N,)"""
    if len(captions) != len(images):
        raise ValueError(f"need one caption per image, got {len(images)} images and {len(captions)} captions")
    cos = (scorer.encode_image(images) * scorer.encode_text(captions)).sum(-1)    # unit rows: cosine
    return weight * cos.clamp_min(0).cpu()
