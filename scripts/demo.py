"""One-command demo: serve the bundled shapes-tiny model, index a generated gallery, search it.

    make demo            # or: python -m scripts.demo [--port 8000] [--exit]

Starts `python -m app` with XMR_MODEL=shapes-tiny on a fresh data directory, indexes a gallery
of drawn shapes through the batch API, runs a few text searches, prints the curl commands to try,
and keeps serving until Ctrl-C (or exits at once with --exit).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from xmr.client import XmrClient
from xmr.shapes import COLORS, SHAPES, canonical_caption, random_scene, render

QUERIES = ("a red circle", "a blue square", "a yellow star", "a green triangle and a purple circle")


def write_gallery(
    folder: Path, seed: int, per_pair: int = 2, two_shape: int = 40
) -> list[tuple[str, str]]:
    """Draw every colour/shape pair `per_pair` times plus some two-shape scenes; (file, caption)."""
    rng = np.random.default_rng(seed)
    scenes = [
        random_scene(rng, 1, pairs=[(c, s)])
        for c in COLORS
        for s in SHAPES
        for _ in range(per_pair)
    ]
    scenes += [random_scene(rng, 2) for _ in range(two_shape)]
    scenes.append(random_scene(rng, 2, pairs=[("green", "triangle"), ("purple", "circle")]))
    folder.mkdir(parents=True, exist_ok=True)
    gallery = []
    for number, scene in enumerate(scenes):
        name = f"shape-{number:03d}.png"
        render(scene, rng).save(folder / name)
        gallery.append((name, canonical_caption(scene)))
    return gallery


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--exit", action="store_true", help="stop the server after the searches")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="xmr-demo-"))
    gallery_dir = workdir / "gallery"
    env = os.environ | {
        "XMR_MODEL": "shapes-tiny",
        "XMR_DATA_DIR": str(args.data_dir or workdir / "data"),
        "XMR_IMPORT_ROOT": str(gallery_dir),
        "XMR_PORT": str(args.port),
        "XMR_LOG_LEVEL": os.environ.get("XMR_LOG_LEVEL", "warning"),  # the demo's own lines only
    }
    env.pop("XMR_PRETRAINED", None)
    server = subprocess.Popen([sys.executable, "-m", "app"], env=env)
    base = f"http://127.0.0.1:{args.port}"
    try:
        gallery = write_gallery(gallery_dir, args.seed)
        with XmrClient(base) as client:
            client.wait_ready(120)
            job_id = client.submit_batch(
                [
                    {"id": name, "image_path": name, "metadata": {"caption": caption}}
                    for name, caption in gallery
                ]
            )
            job = client.wait_for_job(job_id)
            print(f"\nindexed {job['done']} images ({job['failed']} failed) from {gallery_dir}\n")
            for query in QUERIES:
                top = client.search_text(query, k=3)["results"]
                found = ", ".join(f"{r['metadata']['caption']!r} ({r['score']:.2f})" for r in top)
                print(f"{query!r:45} -> {found}")
        print(
            f"\nTry it:\n  curl '{base}/v1/search/text?q=a+red+circle&k=3'\n"
            f"  curl -F file=@{gallery_dir / gallery[0][0]} -F target=images "
            f"{base}/v1/search/image\n"
            f"  open {base}/          (the search page; the API docs are at {base}/docs)\n"
        )
        if args.exit:
            return 0
        print("serving; Ctrl-C stops", flush=True)
        server.wait()
        return server.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
