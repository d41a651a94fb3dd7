"""Retrieval-quality evaluation of a running xmr server, through its HTTP API.

    python -m xmr.eval --server http://127.0.0.1:8000 --shapes          # held-out shapes data
    python -m xmr.eval --server URL --captions dataset_flickr30k.json --images-dir flickr30k-images

Indexes a test split (images and their captions), runs every caption as a text->image query and
every image as an image->text query, and reports Recall@K and median query latency, per group
and overall, as a table and as JSON. The items it indexes are deleted again unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.client import XmrClient, XmrError

DEFAULT_KS = (1, 5, 10)
UPLOAD_CHUNK = 32


@dataclass(frozen=True)
class EvalImage:
    path: Path
    captions: tuple[str, ...]
    group: str


@dataclass
class DirectionResult:
    ranks: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, group: str, rank: int, latency_ms: float) -> None:
        self.ranks[group].append(rank)
        self.ranks["all"].append(rank)
        self.latencies_ms.append(latency_ms)

    def recalls(self, ks: Sequence[int]) -> dict[str, dict[str, float]]:
        return {
            group: {f"R@{k}": sum(r < k for r in ranks) / len(ranks) for k in ks}
            | {"queries": float(len(ranks))}
            for group, ranks in sorted(self.ranks.items())
        }


def load_karpathy(
    captions_file: Path, images_dir: Path | None, split: str | None
) -> list[EvalImage]:
    """Read a Karpathy-style file: {"images": [{"filename", "sentences": [{"raw"}], "split"}]}."""
    data = json.loads(captions_file.read_text())
    base = images_dir or captions_file.parent
    images = []
    for entry in data["images"]:
        if split and entry.get("split", split) != split:
            continue
        folder = base / entry["filepath"] if "filepath" in entry else base
        captions = tuple(s["raw"] if isinstance(s, dict) else str(s) for s in entry["sentences"])
        images.append(
            EvalImage(folder / entry["filename"], captions, entry.get("group", "all-images"))
        )
    if not images:
        raise SystemExit(f"no images of split {split!r} in {captions_file}")
    return images


def evaluate(
    client: XmrClient, images: Sequence[EvalImage], ks: Sequence[int], keep: bool
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    image_ids = [f"eval-{run}-img-{n}" for n in range(len(images))]
    caption_rows = [(n, c) for n, image in enumerate(images) for c in image.captions]
    text_ids = [f"eval-{run}-txt-{m}" for m in range(len(caption_rows))]
    depth = max(ks)
    try:
        started = time.perf_counter()
        for start in range(0, len(images), UPLOAD_CHUNK):
            chunk = images[start : start + UPLOAD_CHUNK]
            client.index_images(
                [i.path for i in chunk], ids=image_ids[start : start + UPLOAD_CHUNK]
            )
        for start in range(0, len(caption_rows), 256):
            rows = caption_rows[start : start + 256]
            client.index_texts(
                [{"text": c, "id": text_ids[start + j]} for j, (_, c) in enumerate(rows)]
            )
        index_seconds = time.perf_counter() - started
        text_to_image = DirectionResult()
        for _m, (n, caption) in enumerate(caption_rows):
            t0 = time.perf_counter()
            hits = client.search_text(caption, k=depth + 50, target="images")["results"]
            latency = (time.perf_counter() - t0) * 1000
            ranked = [h["id"] for h in hits if h["id"].startswith(f"eval-{run}-img-")]
            rank = ranked.index(image_ids[n]) if image_ids[n] in ranked else depth
            text_to_image.add(images[n].group, rank, latency)
        image_to_text = DirectionResult()
        own_texts = defaultdict(set)
        for (n, _), text_id in zip(caption_rows, text_ids, strict=True):
            own_texts[n].add(text_id)
        for n, image in enumerate(images):
            t0 = time.perf_counter()
            hits = client.search_image(image.path, k=depth + 50, target="texts")["results"]
            latency = (time.perf_counter() - t0) * 1000
            ranked = [h["id"] for h in hits if h["id"].startswith(f"eval-{run}-txt-")]
            rank = next((r for r, i in enumerate(ranked) if i in own_texts[n]), depth)
            image_to_text.add(image.group, rank, latency)
    finally:
        if not keep:
            for item_id in image_ids + text_ids:
                with contextlib.suppress(XmrError):  # an item that never got indexed
                    client.delete_item(item_id)
    info = client.info()
    return {
        "model": info.get("model_id"),
        "device": info.get("device"),
        "images": len(images),
        "captions": len(caption_rows),
        "index_seconds": round(index_seconds, 2),
        "text_to_image": text_to_image.recalls(ks)
        | {"median_latency_ms": round(statistics.median(text_to_image.latencies_ms), 2)},
        "image_to_text": image_to_text.recalls(ks)
        | {"median_latency_ms": round(statistics.median(image_to_text.latencies_ms), 2)},
    }


def format_table(report: dict[str, Any], ks: Sequence[int]) -> str:
    header = f"{'direction':<15}{'group':<14}{'queries':>8}" + "".join(
        f"{'R@' + str(k):>8}" for k in ks
    )
    lines = [
        f"model {report['model']} on {report['device']}: {report['images']} images, "
        f"{report['captions']} captions",
        header,
        "-" * len(header),
    ]
    for direction in ("text_to_image", "image_to_text"):
        result = report[direction]
        for group, values in result.items():
            if not isinstance(values, dict):
                continue
            recalls = "".join(f"{values[f'R@{k}']:>8.3f}" for k in ks)
            lines.append(f"{direction:<15}{group:<14}{int(values['queries']):>8}{recalls}")
        lines.append(f"{direction:<15}median query latency {result['median_latency_ms']:.1f} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xmr eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--collection", default=None, help="evaluate in this collection")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shapes", action="store_true", help="generate a held-out shapes set")
    source.add_argument("--captions", type=Path, help="Karpathy-style captions JSON")
    parser.add_argument("--images-dir", type=Path, default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the generated shapes set")
    parser.add_argument("--two-shape-scenes", type=int, default=200)
    parser.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS))
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="leave the evaluation items indexed")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory() as tmp,
        XmrClient(args.server, args.api_key, collection=args.collection) as client,
    ):
        if args.shapes:
            from xmr.shapes import write_eval_set

            captions = write_eval_set(Path(tmp), seed=args.seed, n_two=args.two_shape_scenes)
            images = load_karpathy(captions, None, args.split)
        else:
            images = load_karpathy(args.captions, args.images_dir, args.split)
        client.wait_ready(60)
        report = evaluate(client, images, args.k, args.keep)
    print(format_table(report, args.k))
    payload = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(payload + "\n")
    print(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
