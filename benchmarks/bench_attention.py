"""Speed and memory of chapter 6's attention against PyTorch's.

    python benchmarks/bench_attention.py [--out benchmarks/results/attention.json] [--device cpu] [--threads 1]
                                         [--no-rss]

Measures, in one run on one machine (so the numbers are comparable):
  * time: `mmlearn.attention.scaled_dot_product_attention` (vectorised, materialises the L x S weights) vs
    `F.scaled_dot_product_attention` (fused), forward, float32, (batch 1, 8 heads, L, 64) for a few L. The two
    are timed alternately in the same loop; each time is the minimum over the repeats.
  * peak memory vs L up to 4096 (shape (1, 1, L, 64), float32, forward under no_grad): naive
    (`scaled_dot_product_attention`) vs tiled (`flash_attention`, block 128) vs `F.scaled_dot_product_attention`,
    measured with `mmlearn.attention.measure_peak_memory` — on the CPU, `torch.profiler(profile_memory=True)`
    records every allocation/free of PyTorch's allocator with its running total and the peak of that total is
    taken; on CUDA, `torch.cuda.max_memory_allocated`.
  * training-time peak memory (forward + backward, inputs requiring gradients) vs L up to 2048, shape
    (1, 1, L, 64): naive (autograd through `scaled_dot_product_attention`) vs tiled (`flash_attention`, whose
    backward recomputes P tile by tile from the saved row log-sum-exp) vs `F.scaled_dot_product_attention`.
  * a training step (forward, backward, AdamW step) of the book's ViT and CLIP (`mmlearn.models`) at three
    sizes, with the book's own attention (inside `mmlearn.attention.keep_weights(model)`, which computes and
    keeps the weights) vs the models' default, the fused fast path of `MultiHeadAttention` (`need_weights=False`,
    i.e. `F.scaled_dot_product_attention`); the two alternate step by step, median (and minimum) over the
    repeats, one run. ``--only train_step`` reruns this part alone and merges it into an existing --out file.
  * cross-check at L = 4096 (Linux CPU only, unless --no-rss): the growth of the process's peak resident set
    size (VmHWM, reset just before the call through /proc/self/clear_refs) during one call, each method in a
    fresh Python process — an operating-system measurement that does not rely on PyTorch's bookkeeping.
The run takes well under a minute on a laptop CPU. On a machine shared with other jobs, use ``--threads 1``.
OpenMP threads are told to sleep rather than spin while waiting (OMP_WAIT_POLICY=PASSIVE, unless already set):
on an oversubscribed CPU, spinning threads slow small operations down by orders of magnitude.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede `import torch`

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mmlearn.attention import (  # noqa: E402
    flash_attention,
    keep_weights,
    measure_peak_memory,
    scaled_dot_product_attention,
)
from mmlearn.device import get_device, seed_everything  # noqa: E402
from mmlearn.models import CLIP, TextTransformer, VisionTransformer  # noqa: E402

TIME_LENGTHS = (128, 256, 512, 1024)
MEMORY_LENGTHS = (256, 512, 1024, 2048, 4096)
TRAIN_MEMORY_LENGTHS = (256, 512, 1024, 2048)
BLOCK = 128


def bench_time(device: torch.device, repeat: int = 7, heads: int = 8, d: int = 64) -> list[dict]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    with torch.no_grad():
        for L in TIME_LENGTHS:
            qkv = [torch.randn(1, heads, L, d, device=device) for _ in range(3)]
            fns = {"ours": scaled_dot_product_attention, "torch": F.scaled_dot_product_attention}
            best = {name: float("inf") for name in fns}
            for fn in fns.values():  # warm-up
                fn(*qkv)
            for _ in range(repeat):  # alternate, so both see the same machine load
                for name, fn in fns.items():
                    sync()
                    start = time.perf_counter()
                    fn(*qkv)
                    sync()
                    best[name] = min(best[name], time.perf_counter() - start)
            rows.append({"L": L, "shape": [1, heads, L, d], "ours_seconds": best["ours"],
                         "torch_seconds": best["torch"], "ours_over_torch": best["ours"] / best["torch"]})
    return rows


def bench_memory(device: torch.device, d: int = 64) -> list[dict]:
    rows = []
    with torch.no_grad():
        for L in MEMORY_LENGTHS:
            q, k, v = (torch.randn(1, 1, L, d, device=device) for _ in range(3))  # 4-D: torch's fused kernel
            naive = measure_peak_memory(scaled_dot_product_attention, q, k, v)[1]
            tiled = measure_peak_memory(flash_attention, q, k, v, block_size=BLOCK)[1]
            fused = measure_peak_memory(F.scaled_dot_product_attention, q, k, v)[1]
            rows.append({"L": L, "naive_bytes": naive, "tiled_bytes": tiled, "torch_bytes": fused,
                         "naive_over_tiled": naive / tiled, "naive_over_one_LxL_matrix": naive / (L * L * 4)})
    return rows


def _forward_backward(fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> None:
    fn(q, k, v).backward(g)


def bench_train_memory(device: torch.device, d: int = 64) -> list[dict]:
    """Peak memory of forward + backward (what training needs), each method on fresh leaves."""
    methods = {"naive": lambda q, k, v: scaled_dot_product_attention(q, k, v)[0],
               "tiled": lambda q, k, v: flash_attention(q, k, v, block_size=BLOCK),
               "torch": F.scaled_dot_product_attention}
    rows = []
    for L in TRAIN_MEMORY_LENGTHS:
        row = {"L": L}
        for name, fn in methods.items():
            q, k, v = (torch.randn(1, 1, L, d, device=device, requires_grad=True) for _ in range(3))
            g = torch.randn(1, 1, L, d, device=device)
            row[f"{name}_bytes"] = measure_peak_memory(_forward_backward, fn, q, k, v, g, device=device)[1]
        row["naive_over_tiled"] = row["naive_bytes"] / row["tiled_bytes"]
        rows.append(row)
    return rows


TRAIN_CONFIGS = {  # the ViT of chapter 7 (17 tokens), a CLIP with a ViT of 65 tokens, a ViT with 257 tokens
    "vit_book": dict(batch=64, image_size=32, patch_size=8, dim=64, depth=2, heads=4),
    "clip_book": dict(batch=64, image_size=32, patch_size=4, dim=64, depth=2, heads=4, text_len=8, vocab=64),
    "vit_257_tokens": dict(batch=32, image_size=32, patch_size=2, dim=64, depth=2, heads=4),
}


def _train_step_fn(name: str, cfg: dict, device: torch.device):
    """A model, its AdamW optimiser and a closure running one training step on fixed random data."""
    vit = VisionTransformer(cfg["image_size"], cfg["patch_size"], dim=cfg["dim"], depth=cfg["depth"],
                            num_heads=cfg["heads"], num_classes=None if "text_len" in cfg else 10)
    images = torch.randn(cfg["batch"], 3, cfg["image_size"], cfg["image_size"], device=device)
    if "text_len" in cfg:
        text = TextTransformer(cfg["vocab"], cfg["dim"], depth=1, num_heads=cfg["heads"], max_len=cfg["text_len"])
        model = CLIP(vit, text, embed_dim=32).to(device)
        ids = torch.randint(1, cfg["vocab"], (cfg["batch"], cfg["text_len"]), device=device)
        loss_fn = lambda: model.loss(images, ids)  # noqa: E731
    else:
        model = vit.to(device)
        labels = torch.randint(0, 10, (cfg["batch"],), device=device)
        loss_fn = lambda: F.cross_entropy(model(images), labels)  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    return model, step


def _timed(step, slow: bool, model: torch.nn.Module, sync) -> float:
    """Seconds of one training step, on the book's attention path (slow) or the models' fast path."""
    sync()
    start = time.perf_counter()
    if slow:
        with keep_weights(model):
            step()
    else:
        step()
    sync()
    return time.perf_counter() - start


def bench_train_step(device: torch.device, repeat: int = 9) -> list[dict]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for name, cfg in TRAIN_CONFIGS.items():
        seed_everything(0)
        model, step = _train_step_fn(name, cfg, device)
        times = {True: [], False: []}
        for i in range(repeat + 1):  # the first round is a warm-up; alternate, so both see the same load
            for slow in (True, False):
                seconds = _timed(step, slow, model, sync)
                if i > 0:
                    times[slow].append(seconds)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"config": name, **cfg, "repeats": repeat,
                     "book_attention_seconds": med[True], "fast_path_seconds": med[False],
                     "book_attention_min_seconds": min(times[True]), "fast_path_min_seconds": min(times[False]),
                     "speedup": med[True] / med[False], "speedup_of_minima": min(times[True]) / min(times[False])})
    return rows


_RSS_PROBE = """
import os, re, sys
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
from mmlearn.attention import flash_attention, scaled_dot_product_attention


def peak_rss_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))


torch.manual_seed(0)
L, method = int(sys.argv[1]), sys.argv[2]
q, k, v = (torch.randn(L, 64) for _ in range(3))
with torch.no_grad():
    flash_attention(q[:256], k[:256], v[:256], block_size=128)  # load the code paths once
    scaled_dot_product_attention(q[:256], k[:256], v[:256])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    before = peak_rss_kib()
    if method == "naive":
        out = scaled_dot_product_attention(q, k, v)[0]
    else:
        out = flash_attention(q, k, v, block_size=128)
    after = peak_rss_kib()
print(after - before)
"""


def rss_check(L: int = 4096) -> dict:
    """Growth of the peak resident set size (KiB) during one call, each method in a fresh process (Linux)."""
    result = {"L": L, "method": "growth of VmHWM (/proc/self/status) during one call after resetting it via "
                                "/proc/self/clear_refs; one fresh Python process per method; KiB"}
    for method in ("naive", "tiled"):
        out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(L), method], capture_output=True, text=True,
                             check=True, env=dict(os.environ))
        result[f"{method}_kib"] = int(out.stdout.strip().splitlines()[-1])
    result["naive_over_tiled"] = result["naive_kib"] / max(result["tiled_kib"], 1)
    return result


def _print_train_step(rows: list[dict]) -> None:
    for row in rows:
        print(f"train step {row['config']:>15}: book attention {1e3 * row['book_attention_seconds']:7.1f} ms, "
              f"fast path {1e3 * row['fast_path_seconds']:7.1f} ms (medians), speed-up {row['speedup']:.2f}x")


def _only_train_step(out: Path, device: torch.device, load, start: float) -> None:
    results = json.loads(out.read_text()) if out.exists() else {}
    results["train_step"] = bench_train_step(device)
    results["train_step_meta"] = {"device": str(device), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                                  "load_average_1min_at_start": load[0] if load else None,
                                  "total_seconds": time.perf_counter() - start}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    _print_train_step(results["train_step"])
    print(f"merged train_step into {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention.json")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: mmlearn.get_device())")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-rss", action="store_true", help="skip the resident-set-size cross-check")
    parser.add_argument("--only", choices=["train_step"], default=None,
                        help="run only this part and merge it into the existing --out file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    if device.type == "mps":
        raise SystemExit("peak memory cannot be measured on mps: run with --device cpu")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    seed_everything(0)
    start = time.perf_counter()
    if args.only == "train_step":
        _only_train_step(args.out, device, load, start)
        return
    results = {"time": bench_time(device)}
    method = ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
              "torch.profiler(profile_memory=True): peak of the allocator's running total")
    results["memory"] = {"rows": bench_memory(device), "shape": "(1, 1, L, 64)", "dtype": "float32",
                         "tiled_block_size": BLOCK, "forward_only": True, "method": method}
    results["train_memory"] = {"rows": bench_train_memory(device), "shape": "(1, 1, L, 64)", "dtype": "float32",
                               "tiled_block_size": BLOCK, "forward_and_backward": True, "method": method}
    results["train_step"] = bench_train_step(device)
    if device.type == "cpu" and not args.no_rss and os.access("/proc/self/clear_refs", os.W_OK):
        results["memory_rss_check"] = rss_check()
    results["meta"] = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "machine": platform.machine(),
                       "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                       "load_average_1min_at_start": load[0] if load else None, "python": platform.python_version(),
                       "total_seconds": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for row in results["time"]:
        print(f"time  L={row['L']:>5}: ours {1e3 * row['ours_seconds']:8.2f} ms, "
              f"torch {1e3 * row['torch_seconds']:8.2f} ms, ratio {row['ours_over_torch']:.2f}x")
    for row in results["memory"]["rows"]:
        print(f"peak  L={row['L']:>5}: naive {row['naive_bytes'] / 2**20:8.2f} MiB, tiled "
              f"{row['tiled_bytes'] / 2**20:6.3f} MiB, torch {row['torch_bytes'] / 2**20:8.2f} MiB, "
              f"naive/tiled {row['naive_over_tiled']:.1f}x")
    for row in results["train_memory"]["rows"]:
        print(f"train peak L={row['L']:>5}: naive {row['naive_bytes'] / 2**20:8.2f} MiB, tiled "
              f"{row['tiled_bytes'] / 2**20:6.3f} MiB, torch {row['torch_bytes'] / 2**20:8.2f} MiB")
    _print_train_step(results["train_step"])
    if "memory_rss_check" in results:
        rss = results["memory_rss_check"]
        print(f"RSS   L={rss['L']:>5}: naive +{rss['naive_kib'] / 1024:.1f} MiB, tiled +{rss['tiled_kib'] / 1024:.1f} "
              f"MiB, ratio {rss['naive_over_tiled']:.0f}x")
    print(f"wrote {args.out} in {results['meta']['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
