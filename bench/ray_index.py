"""Distributed embedding on Ray: images/s with 1 and 2 model actors, through `xmr index --ray`.

    .venv/bin/python -m bench.ray_index --images 128 --json-out bench/ray-cpu.json

Each run starts a local Ray instance on this machine, indexes the same generated JPEGs into a
fresh data directory, and reports the throughput the command measures (hashing, reading,
decoding, encoding and writing; Ray's start-up excluded). The ratio of 2 actors to 1 is the
scaling figure; on one machine both share its cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import benchmark_parser, emit
from bench.run import write_images

REPO = Path(__file__).resolve().parent.parent


def run_ray_index(folder: Path, data_dir: Path, workers: int, args: argparse.Namespace) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")} | {
        "XMR_MODEL": args.model,
        "XMR_PRETRAINED": args.pretrained,
        "XMR_DEVICE": "cpu",
        "XMR_PRECISION": "fp32",
        "XMR_DATA_DIR": str(data_dir),
    }
    command = [sys.executable, "-m", "xmr", "index", str(folder), "--ray"]
    command += ["--workers", str(workers), "--batch-size", str(args.batch)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    match = re.search(r"\(([\d.]+) images/s on Ray\)", result.stdout)
    if match is None:
        raise RuntimeError(result.stdout + result.stderr)
    return float(match.group(1))


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", args.images)
        rates = {
            workers: run_ray_index(root / "images", root / f"data-{workers}", workers, args)
            for workers in (1, 2)
        }
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": f"{args.model}/{args.pretrained or 'random-init'}, fp32",
        "images": args.images,
        "images_per_s": {str(w): round(r, 2) for w, r in rates.items()},
        "ratio_2_vs_1": round(rates[2] / rates[1], 2),
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
