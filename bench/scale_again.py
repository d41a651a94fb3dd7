"""The real server started again on a data directory `bench.scale` imported (kept by hard links
before the bench removed it): filters with field indexes, and recall@10 at several nprobe.

    python -m bench.scale_again DATA_DIR FOLDER --filter-fields rare,rating \\
        --record-vectors float16 --nprobe 32,128,512 --json-out FILE

FOLDER is the folder that was imported (its `vectors.npy` gives the exact answer). The first
start builds the indexes of `--filter-fields` (its time includes them); it measures a text
search, the selective and the broad filter of bench.scale, keyword and hybrid searches (a
place, and a place with a number), recall@10 and the server's RSS, then
starts the server again for each further nprobe and measures the text search and the recall.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.report import benchmark_parser, emit
from bench.scale import (
    RECALL_SAMPLE,
    free_port,
    p50_ms,
    recall_at_10,
    rss_mb,
    server_env,
    start_server,
    true_ten,
)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--filter-fields", default="rare,rating")
    parser.add_argument("--record-vectors", choices=["float32", "float16"], default="float32")
    parser.add_argument("--nprobe", default="32", help="comma-separated: one start for each")
    args = parser.parse_args()
    items = len(np.load(args.folder / "vectors.npy", mmap_mode="r"))
    sample = np.random.default_rng(1).choice(items, RECALL_SAMPLE, replace=False)
    truth = true_ten(args.folder / "vectors.npy", sample)
    port = free_port()
    env = server_env(args, args.data_dir, port, args.filter_fields, args.record_vectors)
    report: dict[str, Any] = {"items": items}
    for n, nprobe in enumerate(int(x) for x in args.nprobe.split(",")):
        process, started_s = start_server(env | {"XMR_IVF_NPROBE": str(nprobe)}, port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
                figures: dict[str, Any] = {"start_s": round(started_s, 2)}
                figures["text_search_p50_ms"] = round(p50_ms(http, {"k": 10})[0], 2)
                if n == 0:
                    rare = json.dumps({"rare": True})
                    broad = json.dumps({"rating": {"in": [1, 2, 3]}})
                    selective, found = p50_ms(http, {"k": 10, "filter": rare})
                    figures["selective_filter_p50_ms"] = round(selective, 2)
                    figures["selective_filter_found"] = found
                    figures["broad_filter_p50_ms"] = round(
                        p50_ms(http, {"k": 10, "filter": broad})[0], 2
                    )
                    figures |= word_searches(http)
                figures["recall_at_10"] = round(recall_at_10(http, truth, sample), 3)
                figures["rss_mb"] = round(rss_mb(process.pid), 1)
                report[f"nprobe {nprobe}"] = figures
                print(json.dumps({f"nprobe {nprobe}": figures}), flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
    return emit(report, args.json_out)


def word_searches(http: httpx.Client) -> dict[str, float]:
    """Keyword and hybrid search for a place (1 in 5,000, as bench.scale), and with a number
    after it ("town123 7"): a word that most metadata holds somewhere (albums, dates), so the
    keyword side ranks every item that has it."""
    figures = {}
    for mode in ("keyword", "hybrid"):
        place = p50_ms(http, {"k": 10, "mode": mode, "q": "town123"})[0]
        common = p50_ms(http, {"k": 10, "mode": mode}, query="town123")[0]
        figures[f"{mode}_search_p50_ms"] = round(place, 2)
        figures[f"{mode}_search_with_a_number_p50_ms"] = round(common, 2)
    return figures


if __name__ == "__main__":
    sys.exit(main())
