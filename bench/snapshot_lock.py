"""How long a snapshot of a large store holds the write lock: three writes, each followed by a
snapshot, on an existing data directory (a stopped server's, e.g. the one `bench.scale` imported).

    python -m bench.snapshot_lock DATA_DIR --record-vectors float16 --json-out FILE

It writes three items (`snapshot-lock-N`) into the store and leaves them there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import benchmark_parser, emit


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--record-vectors", choices=["float32", "float16"], default="float32")
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    from index import IndexOptions, NewItem
    from index.records import stored_model
    from index.store import ItemStore

    model = stored_model(args.data_dir)
    if model is None:
        raise SystemExit(f"{args.data_dir} holds no store")
    started = time.perf_counter()
    options = IndexOptions(record_vectors=args.record_vectors)
    store = ItemStore(args.data_dir, model[0], model[1], options)
    report: dict[str, Any] = {"open_s": round(time.perf_counter() - started, 1), "snapshots": []}
    report["structures"] = {kind: info.spec for kind, info in store.index_info().items()}
    try:
        for n in range(3):
            vector = np.random.default_rng(n).normal(size=model[1]).astype(np.float32)
            item = NewItem(
                id=f"snapshot-lock-{n}", kind="image", vector=vector / np.linalg.norm(vector)
            )
            store.upsert([item])
            started = time.perf_counter()
            store.snapshot()
            timing = store.last_snapshot
            assert timing is not None
            report["snapshots"].append(
                {
                    "total_s": round(time.perf_counter() - started, 2),
                    "write_lock_s": timing.write_lock_s,
                    "mb": round(timing.bytes / 2**20, 1),
                }
            )
    finally:
        store.close()
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
