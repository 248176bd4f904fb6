"""Data-parallel training of the chapter-7 CLIP model with torch.distributed (appendix "scaling out").

Three runs with the same global batch of B image–caption pairs and the same data order:

* ``single`` — one process, batch B: the reference curve;
* ``gather`` — W processes (DDP), B/W pairs each; every process all-gathers the embeddings of all
  processes *with gradient* and computes the CLIP loss over the whole global batch: the same loss,
  the same gradient, the same curve as ``single`` (up to floating-point rounding);
* ``local``  — W processes (DDP), each computing the CLIP loss over its own B/W pairs only. Each image
  is then contrasted with B/W − 1 negatives instead of B − 1: a different loss, a different curve.

Run everything (writes ``benchmarks/results/ddp_clip.json`` and ``ddp_clip.png``)::

    python benchmarks/ddp_clip.py

or one distributed run by hand (gloo on CPUs; nccl is used when every process has its own GPU)::

    torchrun --nproc_per_node 2 benchmarks/ddp_clip.py --mode gather --out /tmp/gather.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import mmlearn
from mmlearn.data import make_shapes
from mmlearn.losses import clip_loss
from mmlearn.models import CLIP, TextTransformer, VisionTransformer
from mmlearn.preprocess import WordTokenizer, pad_sequences

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = dict(n_train=1024, n_val=256, global_batch=64, epochs=4, lr=2e-3, image_size=32, dim=32, seed=0)


# ---- the gradient-carrying all-gather -------------------------------------------------------------

class AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every process's ``(b, d)`` tensor into ``(W·b, d)`` (rank order).

    Backward: each process's loss depends on *every* process's embeddings, so the gradient of the sum
    of all processes' losses with respect to my slice is the SUM over processes of their gradients
    with respect to that slice: all-reduce the incoming gradient, then keep my slice. With DDP's
    gradient averaging (÷W) and W identical global losses, the parameters get exactly ∂L_global/∂θ.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.b = dist.get_rank(), len(x)
        return torch.cat(parts)                                              # (W·b, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)                                                # Σ over processes
        return grad[ctx.rank * ctx.b:(ctx.rank + 1) * ctx.b]                 # (b, d): my slice


# ---- data and model -------------------------------------------------------------------------------

def make_data(cfg: dict) -> tuple[TensorDataset, TensorDataset, int]:
    """ShapesWorld image–caption pairs; captions as padded word ids. Same on every process (same seed)."""
    train = make_shapes(cfg["n_train"], image_size=cfg["image_size"], seed=cfg["seed"], split="train")
    val = make_shapes(cfg["n_val"], image_size=cfg["image_size"], seed=cfg["seed"], split="val")
    tok = WordTokenizer().train(train.captions)
    ids = lambda caps: pad_sequences([tok.encode(c) for c in caps], max_len=16)[0]
    return TensorDataset(train.images, ids(train.captions)), TensorDataset(val.images, ids(val.captions)), len(tok)


def make_model(cfg: dict, vocab_size: int) -> CLIP:
    torch.manual_seed(cfg["seed"])                                           # identical initial weights
    d = cfg["dim"]
    image = VisionTransformer(cfg["image_size"], patch_size=8, dim=d, depth=1, num_heads=2)
    text = TextTransformer(vocab_size, d, depth=1, num_heads=2, max_len=16)
    return CLIP(image, text, embed_dim=d)


# ---- one run --------------------------------------------------------------------------------------

def step_loss(clip: CLIP, model: torch.nn.Module, images: torch.Tensor, ids: torch.Tensor, mode: str):
    """The loss to differentiate, and the global-batch loss to log (identical for single/gather)."""
    img, txt = model(images, ids)                                            # (b, E) each, via DDP's forward
    scale = clip.logit_scale                                                 # clamped in place after each step
    if mode == "single":
        loss = clip_loss(img, txt, scale)
        return loss, loss.item()
    if mode == "gather":
        loss = clip_loss(AllGatherWithGrad.apply(img), AllGatherWithGrad.apply(txt), scale)
        return loss, loss.item()
    with torch.no_grad():                                                    # local: log the global loss too
        gathered = [AllGatherWithGrad.apply(t.detach()) for t in (img, txt)]
        global_loss = clip_loss(*gathered, scale).item()
    return clip_loss(img, txt, scale), global_loss


class Embed(torch.nn.Module):
    """Wrap CLIP so that DDP's forward returns both embeddings (DDP hooks need a forward call)."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clip.encode_image(images), self.clip.encode_text(ids)


def run(mode: str, cfg: dict) -> dict:
    world, rank = (dist.get_world_size(), dist.get_rank()) if mode != "single" else (1, 0)
    train, val, vocab = make_data(cfg)
    clip = make_model(cfg, vocab)
    model = DDP(Embed(clip)) if mode != "single" else Embed(clip)             # DDP: broadcast, then all-reduce grads
    opt = torch.optim.Adam(clip.parameters(), lr=cfg["lr"])
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"], drop_last=True)
    loader = DataLoader(train, batch_size=cfg["global_batch"] // world, sampler=sampler, drop_last=True)
    losses, start = [], time.perf_counter()
    for epoch in range(cfg["epochs"]):
        sampler.set_epoch(epoch)                                             # same permutation on every rank
        for images, ids in loader:
            loss, logged = step_loss(clip, model, images, ids, mode)
            opt.zero_grad(set_to_none=True)
            loss.backward()                                                  # DDP all-reduces (averages) here
            opt.step()
            clip.clamp_logit_scale_()                                        # as open_clip: the parameter itself
            losses.append(logged)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        val_loss = clip.loss(*val.tensors).item()
    return {"mode": mode, "world_size": world, "global_loss": losses, "val_loss": val_loss, "seconds": seconds}


def worker(mode: str, out: Path) -> None:
    """Entry point of one process (launched by torchrun, or directly for ``single``)."""
    torch.set_num_threads(1)
    if mode == "single":
        result = run(mode, CONFIG)
    else:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ["WORLD_SIZE"]) \
            else "gloo"
        dist.init_process_group(backend)
        result = run(mode, CONFIG)
        result["backend"] = backend
        dist.destroy_process_group()
        if int(os.environ["RANK"]) != 0:
            return
    out.write_text(json.dumps(result))


# ---- driver: all three runs, the results file and the figure --------------------------------------

def main() -> None:
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("single", "gather", "local"):
            out = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, __file__, "--mode", mode, "--out", str(out)]
            if mode != "single":
                cmd[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            curves[mode] = json.loads(out.read_text())
    single = torch.tensor(curves["single"]["global_loss"], dtype=torch.float64)
    summary = {m: {"max_abs_diff_vs_single": (torch.tensor(c["global_loss"], dtype=torch.float64) - single)
                   .abs().max().item(), "final_loss": c["global_loss"][-1], "val_loss": c["val_loss"],
                   "seconds": c["seconds"]} for m, c in curves.items()}
    RESULTS.mkdir(exist_ok=True)
    result = {"config": CONFIG, "torch": torch.__version__, "runs": curves, "summary": summary}
    (RESULTS / "ddp_clip.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "ddp_clip.png")
    print(json.dumps(summary, indent=1))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, summary = result["runs"], result["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    style = {"single": ("1 process, batch 64", "-", 3.0, "C0"),
             "gather": ("DDP 2 × 32, all-gather with gradient", "--", 1.5, "C1"),
             "local": ("DDP 2 × 32, per-process loss", ":", 1.5, "C2")}
    single = torch.tensor(runs["single"]["global_loss"])
    for mode, (label, ls, lw, color) in style.items():
        loss = torch.tensor(runs[mode]["global_loss"])
        axes[0].plot(loss, ls, lw=lw, color=color, label=label)
        if mode != "single":
            axes[1].semilogy((loss - single).abs().clamp_min(1e-9), ls, lw=1.5, color=color,
                             label=f"{label} (max {summary[mode]['max_abs_diff_vs_single']:.1e})")
    axes[0].set(xlabel="step", ylabel="CLIP loss on the global batch of 64", title="Loss curves")
    axes[1].set(xlabel="step", ylabel="|loss − single-process loss|", ylim=(5e-10, 1),
                title="Difference from one process (0 drawn at 1e-9)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("single", "gather", "local"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    mmlearn.seed_everything(CONFIG["seed"])
    if args.mode is None:
        main()
    else:
        worker(args.mode, args.out)
