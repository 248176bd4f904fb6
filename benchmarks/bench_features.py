"""Speed of chapter 3's from-scratch feature extractors against PyTorch's kernels.

    python benchmarks/bench_features.py [--out benchmarks/results/features.json] [--device cpu] [--threads 1]

Measures, in one run on one machine (so the ratios are comparable):
  * conv2d: seven Python loops (`conv2d_loops`) vs im2col + matmul (`mmlearn.features.conv2d`) vs `F.conv2d`,
    on a small case (where the loops finish) and a larger one (im2col vs F.conv2d only);
  * LSTM: `mmlearn.features.LSTM` (a Python loop over time) vs `nn.LSTM` (a fused C++/cuDNN kernel),
    forward and forward + backward, with the same weights.
Each time is the median of several repeats after a warm-up. Runs in well under a minute on a laptop CPU.
On a machine shared with other jobs, use ``--threads 1``: PyTorch's intra-op threads then do not compete
for busy cores (the load average at the start is recorded in the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmlearn import features as mf
from mmlearn.device import get_device, seed_everything


def median_time(fn: Callable[[], object], device: torch.device, repeat: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (synchronising the GPU around each call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_conv(device: torch.device) -> dict:
    small_x, small_w = torch.randn(1, 3, 16, 16, device=device), torch.randn(8, 3, 3, 3, device=device)
    large_x, large_w = torch.randn(8, 16, 64, 64, device=device), torch.randn(32, 16, 3, 3, device=device)
    small = {
        "loops": median_time(lambda: mf.conv2d_loops(small_x, small_w, padding=1), device, repeat=1, warmup=0),
        "im2col": median_time(lambda: mf.conv2d(small_x, small_w, padding=1), device),
        "torch": median_time(lambda: F.conv2d(small_x, small_w, padding=1), device),
    }
    large = {
        "im2col": median_time(lambda: mf.conv2d(large_x, large_w, padding=1), device),
        "torch": median_time(lambda: F.conv2d(large_x, large_w, padding=1), device),
    }
    return {
        "small": {"input": [1, 3, 16, 16], "weight": [8, 3, 3, 3], "padding": 1, "seconds": small,
                  "loops_over_torch": small["loops"] / small["torch"],
                  "loops_over_im2col": small["loops"] / small["im2col"],
                  "im2col_over_torch": small["im2col"] / small["torch"]},
        "large": {"input": [8, 16, 64, 64], "weight": [32, 16, 3, 3], "padding": 1, "seconds": large,
                  "im2col_over_torch": large["im2col"] / large["torch"]},
    }


def bench_lstm(device: torch.device, B: int = 32, T: int = 50, I: int = 32, H: int = 64) -> dict:  # noqa: E741
    ref = nn.LSTM(I, H, batch_first=True).to(device)
    ours = mf.LSTM(I, H, batch_first=True).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I, device=device)

    def train_step(model: nn.Module) -> None:
        output, (h_n, c_n) = model(x)
        (output.square().mean() + h_n.sum() + c_n.sum()).backward()

    with torch.no_grad():
        forward = {"ours": median_time(lambda: ours(x), device), "torch": median_time(lambda: ref(x), device)}
    backward = {"ours": median_time(lambda: train_step(ours), device),
                "torch": median_time(lambda: train_step(ref), device)}
    return {"shape": {"batch": B, "time_steps": T, "input_size": I, "hidden_size": H},
            "forward_seconds": forward, "forward_ours_over_torch": forward["ours"] / forward["torch"],
            "forward_backward_seconds": backward,
            "forward_backward_ours_over_torch": backward["ours"] / backward["torch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "features.json")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: mmlearn.get_device())")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    seed_everything(0)
    start = time.perf_counter()
    results = {"conv2d": bench_conv(device), "lstm": bench_lstm(device)}
    results["meta"] = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "load_average_1min_at_start": load[0] if load else None,
                       "python": platform.python_version(), "total_seconds": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    conv, lstm = results["conv2d"], results["lstm"]
    print(f"conv2d small: loops / F.conv2d = {conv['small']['loops_over_torch']:,.0f}x, "
          f"loops / im2col = {conv['small']['loops_over_im2col']:,.0f}x, "
          f"im2col / F.conv2d = {conv['small']['im2col_over_torch']:.1f}x")
    print(f"conv2d large: im2col / F.conv2d = {conv['large']['im2col_over_torch']:.2f}x")
    print(f"LSTM: ours / nn.LSTM = {lstm['forward_ours_over_torch']:.2f}x (forward), "
          f"{lstm['forward_backward_ours_over_torch']:.2f}x (forward + backward)")
    print(f"wrote {args.out} in {results['meta']['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
