"""bench/scale.py sized down for CI: the whole path it measures at 1M and 10M (a folder of
precomputed vectors imported offline, the real server started on it, searches, an import
through the server, a kill -9 and the replay) runs, and every figure it reports is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
ITEMS = 20_000


def test_the_scale_benchmark_runs_sized_down_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    keep = tmp_path / "kept"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale",
            "--items",
            str(ITEMS),
            "--model",
            TINY_MODEL,
            "--filter-fields",
            "rare,rating",
            "--record-vectors",
            "float16",
            "--work-dir",
            str(tmp_path),
            "--keep",
            str(keep),
            "--json-out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    timed = [
        "import_items_per_s",
        "startup_from_snapshots_s",
        "startup_after_kill_s",
        "raw_text_encode_p50_ms",
        "text_search_p50_ms",
        "selective_filter_p50_ms",
        "broad_filter_p50_ms",
        "keyword_search_p50_ms",
        "hybrid_search_p50_ms",
        "rss_mb",
        "disk_mb_per_million",
        "snapshot_mb",
        "import_through_server_items_per_s",
    ]
    assert all(report[name] > 0 for name in timed), report
    assert report["snapshot_write_lock_s"] >= 0
    assert report["structures"] == {"image": "Flat", "text": "Flat"}  # under the 100k threshold
    # what the searches found: the rare items (7 and 10,007), a town's four photos, exact recall
    assert report["selective_filter_found"] == 2
    assert report["keyword_search_found"] == ITEMS // 5000
    assert report["hybrid_search_found"] == 10
    assert report["recall_at_10"] == 1.0
    # the folder and the data directory were kept for bench.scale_again
    assert (keep / "folder" / "vectors.npy").is_file() and (keep / "data").is_dir()
