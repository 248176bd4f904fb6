"""Execute one notebook from a fresh kernel (as the book build does) and report on it.

    python tools/nbrun.py notebooks/00_setup.ipynb [--images DIR]

Prints the wall time, the first error (if any) and every exercise-check verdict; writes each PNG
output to DIR (default /tmp/nbimg/<notebook>/) so a figure can be looked at as an image.
The notebook file itself is not modified.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def run(path: Path, image_dir: Path | None, timeout: int = 600) -> int:
    nb = nbformat.read(path, as_version=4)
    log = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    os.environ["MMLEARN_CHECK_LOG"] = str(log)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the book build runs it (dev.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    status = 0
    try:
        client.execute()
    except CellExecutionError as error:
        status = 1
        print(str(error)[-3000:])
    print(f"{path.name}: {time.perf_counter() - start:.1f} s, {'FAILED' if status else 'ok'}")
    for line in log.read_text().splitlines():
        print("  check", json.loads(line))
    if image_dir is not None:
        image_dir.mkdir(parents=True, exist_ok=True)
        for i, cell in enumerate(nb.cells):
            for j, out in enumerate(cell.get("outputs", [])):
                png = out.get("data", {}).get("image/png")
                if png:
                    (image_dir / f"cell{i:02d}_{j}.png").write_bytes(base64.b64decode(png))
        print(f"  images in {image_dir}")
    return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--no-images", action="store_true", help="do not write the figures")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    codes = [run(p, None if args.no_images else args.images or Path("/tmp/nbimg") / p.stem, args.timeout)
             for p in args.notebooks]
    sys.exit(max(codes))
