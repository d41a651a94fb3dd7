"""How long `POST /v1/batch` takes to accept a large JSON batch of base64 images (the 202).

    .venv/bin/python -m bench.batch_intake --items 100000 --json-out bench/batch-intake-cpu.json

The app runs in-process (TestClient) on a fresh data directory; the items are copies of one
small PNG, so the figure is intake alone (JSON parsing, checks, staging, the job's SQLite rows),
not encoding, which the job does afterwards in the background.
"""

from __future__ import annotations

import base64
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from bench.report import benchmark_parser, emit
from models import OpenClipEncoder
from models.options import LoadOptions


def main() -> int:
    parser = benchmark_parser((__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.set_defaults(model="xmr-test-tiny")  # intake does not touch the model
    options = parser.parse_args()
    encoder = OpenClipEncoder.load(options.model, options.pretrained, LoadOptions(device="cpu"))
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
    items = [{"image_base64": picture, "id": f"i{n}"} for n in range(options.items)]
    with tempfile.TemporaryDirectory(prefix="xmr-intake-") as folder:
        data = Path(folder) / "data"
        settings = Settings(
            model=options.model,
            pretrained=options.pretrained,
            device="cpu",
            data_dir=data,
            allowed_hosts="testserver",
            snapshot_interval_s=3600,
        )
        with TestClient(create_app(settings, encoder=encoder)) as client:
            started = time.perf_counter()
            response = client.post("/v1/batch", json={"items": items})
            seconds = time.perf_counter() - started
            response.raise_for_status()
            staged = [p for p in (data / "staging").rglob("*") if p.is_file()]
            report = {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "items": options.items,
                "accept_s": round(seconds, 2),
                "items_per_s": round(options.items / seconds),
                "staged_files": len(staged),
                "staged_mb": round(sum(p.stat().st_size for p in staged) / 2**20, 1),
            }
    return emit(report, options.json_out)


if __name__ == "__main__":
    sys.exit(main())
