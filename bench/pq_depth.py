"""Recall@10 of a saved IVF-PQ index against how many of its candidates are re-ranked exactly.

    python -m bench.pq_depth DATA_DIR FOLDER --json-out bench/pq-depth-cpu-10m.json

DATA_DIR is a data directory `bench.scale` imported FOLDER (its `vectors.npy`) into, stopped
(kept by hard links before the bench removed it): labels are rows + 1 there. The saved image
index is searched with FAISS directly for 50 of the folder's own vectors at several nprobe and
depths; the candidates are re-ranked by their exact cosine (as index/refine.py does from the
records), and compared with an exact search of the folder leaving each query's own row out.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from bench.report import benchmark_parser, emit
from bench.scale import RECALL_SAMPLE, true_ten
from bench.vector_search import unit


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    meta = json.loads((args.data_dir / "index" / "image.json").read_text())
    index = faiss.read_index(str(args.data_dir / "index" / meta["file"]))
    ivf = faiss.extract_index_ivf(index)
    xb = np.load(args.folder / "vectors.npy", mmap_mode="r")
    sample = np.random.default_rng(1).choice(len(xb), RECALL_SAMPLE, replace=False)
    truth = true_ten(args.folder / "vectors.npy", sample)
    xq = unit(np.asarray(xb[sample], dtype=np.float32))
    report: dict = {"spec": meta["spec"], "ntotal": meta["ntotal"], "recall_at_10": {}}
    for nprobe in (32, 128):
        ivf.nprobe = nprobe
        for depth in (10, 100, 300, 1000, 2000):
            started = time.perf_counter()
            _, labels = index.search(xq, depth + 1)
            search_ms = (time.perf_counter() - started) / len(xq) * 1e3
            shares = []
            for q, row in enumerate(labels):
                rows = np.sort([x - 1 for x in row if 0 < x <= len(xb) and x - 1 != sample[q]])
                exact = unit(np.asarray(xb[rows], dtype=np.float32)) @ xq[q]
                best = rows[np.argsort(-exact)[:10]]
                shares.append(len(set(best.tolist()) & set(truth[q])) / 10)
            report["recall_at_10"][f"nprobe {nprobe}, re-ranking {depth}"] = {
                "recall": round(float(np.mean(shares)), 3),
                "faiss_search_ms": round(search_ms, 2),
            }
            print(json.dumps(report["recall_at_10"]), flush=True)
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
