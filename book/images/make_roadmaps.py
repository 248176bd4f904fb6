"""Draw the roadmap figure of each chapter page (book/images/roadmap_chNN.png).

    python book/images/make_roadmaps.py

Each roadmap shows where the chapter starts (what it needs from earlier chapters, grey), its notebooks
(blue, in reading order) and what later chapters take from it (green). The figures are static
diagrams of the book's structure: they contain no measured numbers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
STYLE = {
    "in": dict(fc="#eeeeee", ec="#888888"),
    "nb": dict(fc="#dbe9f6", ec="#2b6cb0"),
    "out": dict(fc="#e3f4e1", ec="#2f855a"),
}
W, H = 2.6, 1.25  # box size in data units


def box(ax, x, y, title, lines, kind):
    ax.add_patch(FancyBboxPatch((x - W / 2, y - H / 2), W, H, boxstyle="round,pad=0.04,rounding_size=0.12",
                                lw=1.3, **STYLE[kind]))
    ax.text(x, y + H / 2 - 0.2, title, ha="center", va="center", fontsize=10, weight="bold")
    ax.text(x, y - 0.12, "\n".join(lines), ha="center", va="center", fontsize=8.5, linespacing=1.25)


def arrow(ax, a, b):
    (x0, y0), (x1, y1) = a, b
    dx = W / 2 + 0.05
    if x1 > x0:  # rightwards
        start, end = (x0 + dx, y0), (x1 - dx, y1)
    elif x1 < x0:  # leftwards (second row of a snake)
        start, end = (x0 - dx, y0), (x1 + dx, y1)
    else:  # downwards
        start, end = (x0, y0 - H / 2 - 0.03), (x1, y1 + H / 2 + 0.03)
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1.2, color="#444444",
                                 connectionstyle="arc3,rad=0"))


def snake(items, cols=3):
    """Positions for boxes read as a snake: ``cols`` per row, left to right, down, right to left, down, …"""
    out = {}
    for i, (key, rest) in enumerate(items.items()):
        row, col = divmod(i, cols)
        col = col if row % 2 == 0 else cols - 1 - col
        out[key] = (3.2 * col, -1.75 * row, *rest)
    return out


def chain(keys):
    """Arrows between consecutive boxes."""
    return list(zip(keys, keys[1:]))


def roadmap(name, title, nodes, edges, width=9.5, height=4.0):
    fig, ax = plt.subplots(figsize=(width, height))
    xs = [n[0] for n in nodes.values()]
    ys = [n[1] for n in nodes.values()]
    ax.set_xlim(min(xs) - W / 2 - 0.2, max(xs) + W / 2 + 0.2)
    ax.set_ylim(min(ys) - H / 2 - 0.2, max(ys) + H / 2 + 0.45)
    ax.set_aspect("equal")
    ax.axis("off")
    for (x, y, kind, head, lines) in nodes.values():
        box(ax, x, y, head, lines, kind)
    for a, b in edges:
        arrow(ax, nodes[a][:2], nodes[b][:2])
    ax.set_title(title, fontsize=11, loc="left")
    fig.tight_layout()
    fig.savefig(HERE / f"roadmap_{name}.png", dpi=130, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)


def main():
    roadmap("ch02", "Chapter 2 — from raw signals to tensors a model can read", {
        "in": (0, 0, "in", "Chapter 1", ["modalities as tensors", "ShapesWorld"]),
        "img": (3.2, 1.6, "nb", "Images", ["normalise, standardise", "grey, Otsu, resize", "augmentation"]),
        "light": (6.4, 1.6, "nb", "Light and sampling", ["sRGB vs linear light", "kernels, aliasing", "invariance measured"]),
        "txt": (3.2, 0, "nb", "Text", ["UTF-8, tokenisers", "byte-level BPE", "padding + mask"]),
        "sub": (6.4, 0, "nb", "Subwords", ["Unicode forms, Zipf", "BPE, WordPiece, Unigram", "Chinese segmentation"]),
        "aud": (3.2, -1.6, "nb", "Audio", ["sampling, resampling", "STFT, mel, MFCC"]),
        "spec": (6.4, -1.6, "nb", "Spectral analysis", ["DFT, leakage, windows", "inverse STFT", "CMVN, SpecAugment"]),
        "lib": (9.6, 0, "out", "mmlearn.preprocess", ["one tested function", "per step"]),
        "out": (12.8, 0, "out", "Chapter 3", ["encoders read these", "tensors"]),
    }, [("in", "img"), ("in", "txt"), ("in", "aud"), ("img", "light"), ("txt", "sub"), ("aud", "spec"),
        ("light", "lib"), ("sub", "lib"), ("spec", "lib"), ("lib", "out")], width=12.5, height=4.6)
    roadmap("ch03", "Chapter 3 — one encoder per modality, and what each knows alone", {
        "in": (0, 0, "in", "Chapter 2", ["image, token and", "spectrogram tensors"]),
        "cnn": (3.2, 1.6, "nb", "CNNs", ["conv2d: loops, im2col", "pooling, receptive field", "CNNEncoder"]),
        "cnnb": (6.4, 1.6, "nb", "CNNs, deeper", ["the backward pass", "equivariance measured", "norms, residuals"]),
        "rnn": (3.2, -1.6, "nb", "RNN, LSTM, GRU", ["cells vs nn.LSTM", "BPTT, vanishing gradient", "Text/AudioEncoder"]),
        "rnnl": (6.4, -1.6, "nb", "Long range", ["bidirectional, stacked", "truncated BPTT", "the adding problem"]),
        "pb": (9.6, 0, "nb", "Patches + baselines", ["patch embedding = conv", "unimodal accuracy", "per task"]),
        "out": (12.8, 0, "out", "Chapters 4, 6, 7", ["encoders to fuse", "baselines to beat"]),
    }, [("in", "cnn"), ("cnn", "cnnb"), ("in", "rnn"), ("rnn", "rnnl"), ("cnnb", "pb"), ("rnnl", "pb"),
        ("pb", "out")], width=12.5, height=4.6)
    roadmap("ch04", "Chapter 4 — where and how modalities meet", snake({
        "in": ("in", "Chapter 3", ["encoders and", "unimodal baselines"]),
        "op": ("nb", "Fusion operators", ["additive vs", "multiplicative", "parameter counts"]),
        "xor": ("nb", "Multimodal XOR", ["additive fusion", "is at chance", "(two proofs)"]),
        "sw": ("nb", "ShapesWorld", ["redundant, complementary,", "synergistic; EMAP;", "missing modalities"]),
        "comp": ("nb", "Competition", ["end to end vs frozen,", "OGM-GE; MCB, MLB,", "MUTAN; PID"]),
        "src": ("nb", "Source models", ["articles 000, 001, 004", "rebuilt, run, trained"]),
        "out": ("out", "Chapters 5–8", ["fusion model to optimise;", "cross-attention next"]),
    }, cols=4), chain(["in", "op", "xor", "sw", "comp", "src", "out"]), width=12.5, height=4.4)
    roadmap("ch05", "Chapter 5 — how every model in the book learns", snake({
        "in": ("in", "Chapters 3–4", ["models with", "parameters w"]),
        "gd": ("nb", "Gradient descent", ["descent lemma", "step size < 2/L", "conditioning"]),
        "opt": ("nb", "Optimisers", ["minibatches, momentum", "Adam, AdamW", "warm-up + cosine"]),
        "pre": ("nb", "Preconditioning", ["Newton, Jacobi", "Adam as a diagonal", "preconditioner; warm-up"]),
        "loss": ("nb", "Losses", ["cross-entropy, LSE", "KL, InfoNCE bound", "the CLIP loss"]),
        "bp": ("nb", "Backpropagation", ["scalar autograd, matrix", "backward, checkpointing", "forward vs reverse"]),
        "out": ("out", "Chapters 6–8", ["hand-derived backward", "CLIP training"]),
    }, cols=4), chain(["in", "gd", "opt", "pre", "loss", "bp", "out"]), width=12.5, height=4.4)
    roadmap("ch06", "Chapter 6 — attention, from a lookup to the Transformer", snake({
        "in": ("in", "Chapters 2, 5", ["tokens, masks;", "softmax, backprop"]),
        "der": ("nb", "Attention derived", ["soft lookup", "softmax, the square root", "of the key width"]),
        "tr": ("nb", "Transformer block", ["masks, multi-head", "positions, FFN", "LayerNorm, residuals"]),
        "lm": ("nb", "A language model", ["trained on pydoc text", "KV cache, sampling", "Pre-LN vs Post-LN"]),
        "bf": ("nb", "Backward + tiling", ["gradient by hand", "online softmax", "FlashAttention fwd + bwd"]),
        "cr": ("nb", "Cross-attention", ["text queries,", "image keys/values", "heads vs their average"]),
        "out": ("out", "Chapter 7", ["ViT, CLIP, captioner,", "VLM connectors"]),
    }, cols=4), chain(["in", "der", "tr", "lm", "bf", "cr", "out"]), width=12.5, height=4.4)
    roadmap("ch07", "Chapter 7 — multimodal models built from Transformers", snake({
        "in": ("in", "Chapters 3–6", ["encoders, losses,", "Transformer blocks"]),
        "vit": ("nb", "ViT", ["patches as tokens", "vs the CNN on", "small data"]),
        "vita": ("nb", "ViT analysis", ["2-D positions", "patch size:", "cost vs accuracy"]),
        "clip": ("nb", "CLIP", ["contrastive loss", "zero-shot, retrieval", "unseen combinations"]),
        "sig": ("nb", "SigLIP", ["pairwise sigmoid loss", "false negatives", "batch size"]),
        "cap": ("nb", "Captioning", ["decoder that", "reads the image", "beam search, BLEU"]),
        "dec": ("nb", "Decoding", ["length penalty, top-p", "exposure bias", "KV cache, CLIPScore"]),
        "vlm": ("nb", "Vision–language", ["Flamingo, Q-Former,", "LLaVA connectors", "a tiny LLaVA"]),
        "llava": ("nb", "LLaVA, two stages", ["frozen text-trained LM", "alignment, then", "instruction tuning"]),
        "res": ("nb", "Resamplers", ["Perceiver, Q-Former", "token count", "hallucination (POPE)"]),
        "out": ("out", "Chapter 8", ["applications", "measured"]),
    }, cols=4), chain(["in", "vit", "vita", "clip", "sig", "cap", "dec", "vlm", "llava", "res", "out"]),
        width=12.5, height=6.2)
    roadmap("ch08", "Chapter 8 — practice: every claim with its number", snake({
        "in": ("in", "Chapters 1–7", ["data, encoders, fusion,", "training, models"]),
        "proj": ("nb", "A complete project", ["splits, sanity checks", "checkpoints, early stop", "errors, ablation"]),
        "dia": ("nb", "Diagnosis", ["prompt vs fusion", "Bayes ceiling", "sensitivity, specificity"]),
        "app": ("nb", "Applications", ["retrieval, captions,", "VQA, audio–visual;", "each with a baseline"]),
        "ch": ("nb", "Challenges", ["data, compute, shift", "the FAQ answered", "with evidence"]),
        "trust": ("nb", "Privacy, attribution", ["membership inference", "modality ablation", "integrated gradients"]),
        "out": ("out", "Chapter 9, your project", ["the same four steps", "and the same checks"]),
    }, cols=4), chain(["in", "proj", "dia", "app", "ch", "trust", "out"]), width=12.5, height=4.4)
    roadmap("ch09", "Chapter 9 — alignment: speech to text, speech to images", {
        "in": (0, 0, "in", "Chapters 2, 3, 5, 7", ["log-mel spectrograms,", "GRU, log-sum-exp,", "CLIP's loss"]),
        "ctc": (3.2, 0, "nb", "DTW and CTC", ["cheapest path vs", "sum over alignments", "greedy, prefix beam"]),
        "asr": (6.4, 0, "nb", "A speech recogniser", ["spoken ShapesWorld,", "split by voice;", "WER and CER"]),
        "ret": (9.6, 0, "nb", "Speech ↔ image", ["no transcript:", "contrastive pairs,", "recall@k"]),
        "out": (12.8, 0, "out", "Chapter 10", ["from one modality", "to another"]),
    }, [("in", "ctc"), ("ctc", "asr"), ("asr", "ret"), ("ret", "out")], width=12.5, height=2.2)
    roadmap("ch10", "Chapter 10 — generation: from a caption to an image, and back", snake({
        "in": ("in", "Chapters 6, 7", ["Transformers,", "CLIP, captioning"]),
        "vq": ("nb", "Image tokens", ["VQ-VAE, codebook,", "straight-through,", "dead codes"]),
        "tok": ("nb", "One Transformer", ["[text; image tokens]", "both directions,", "sampling"]),
        "flow": ("nb", "Flow matching", ["noise → image,", "classifier-free", "guidance"]),
        "judge": ("nb", "Measured", ["a judge trained on", "real scenes; CLIPScore;", "held-out pairs"]),
        "out": ("out", "Beyond this book", ["DALL·E, Chameleon,", "Stable Diffusion"]),
    }), [("in", "vq"), ("vq", "tok"), ("tok", "flow"), ("flow", "judge"), ("judge", "out")])


if __name__ == "__main__":
    main()
