"""`xmr index`: image folders (and their captions) through the batch API, or on Ray."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, TaskID

from xmr.cli.app import (
    DEFAULT_SERVER,
    CliError,
    CollectionOption,
    KeyOption,
    ServerOption,
    app,
    chunks,
    err,
    finished,
    out,
    progress_bar,
)
from xmr.cli.captions import caption_items, read_captions
from xmr.client import XmrClient
from xmr.files import ImageFile, find_images, sha256_file

LOOKUP_CHUNK = 1000
TEXT_CHUNK = 256


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="go into subfolders")
    ] = False,
    captions: Annotated[
        Path | None,
        typer.Option(help="captions to index as texts: Karpathy JSON, {name: caption} or CSV"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="images per batch job")] = 64,
    ray: Annotated[
        bool, typer.Option("--ray", help="embed on Ray, straight into --data-dir (server stopped)")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="a Ray cluster (e.g. auto, ray://host:10001); default local")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="with --ray: model actors")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="with --ray: the data directory (XMR_DATA_DIR)")
    ] = None,
    collection: CollectionOption = None,
    server: ServerOption = DEFAULT_SERVER,
    api_key: KeyOption = None,
) -> None:
    """Index images (and their captions) through the batch API; already indexed bytes are skipped.

    Resumable: run it again after an interruption and only what is missing is sent. With --ray
    the embedding runs on a Ray cluster and writes into the data directory directly.
    """
    files = find_images(paths, recursive)
    if not files and captions is None:
        raise CliError("no image files found (use --recursive for subfolders)", 2)
    if ray:
        ray_index(files, captions, collection, data_dir, ray_address, workers, batch_size)
        return
    with XmrClient(server, api_key, timeout=600, collection=collection) as client:
        client.wait_ready(10)
        with progress_bar() as progress:
            hashing = progress.add_task("hashing", total=len(files))
            digests = []
            for file in files:
                digests.append(sha256_file(file.path))
                progress.advance(hashing)
        known: dict[str, str] = {}
        for part in chunks(digests, LOOKUP_CHUNK):
            known |= client.lookup_hashes(part)
        todo = [(f, d) for f, d in zip(files, digests, strict=True) if d not in known]
        failures = upload_images(client, todo, batch_size)
        texts = index_captions(client, files, read_captions(captions)) if captions else 0
    failed = {item_id for item_id, _ in failures}
    indexed = [f for f, _ in todo if f.item_id not in failed]
    out.print(
        f"indexed {len(indexed)} images ({count_dated(indexed)} with a capture date), skipped "
        f"{len(files) - len(todo)} already indexed, {len(failures)} failed"
        + (f", {texts} captions" if captions else "")
    )
    for item_id, reason in failures[:20]:
        err.print(f"  {item_id}: {reason}", markup=False)
    if failures:
        raise CliError(f"{len(failures)} images could not be indexed", 1)


def ray_index(
    files: Sequence[ImageFile],
    captions: Path | None,
    collection: str | None,
    data_dir: Path | None,
    address: str | None,
    workers: int,
    batch_size: int,
) -> None:
    """`xmr index --ray`: Ray Data embeds, this process writes into the data directory."""
    from index import StorageError
    from xmr.offline import index_on_ray

    texts = caption_items(files, read_captions(captions)) if captions else []
    try:
        report = index_on_ray(
            files, texts, collection or "default", data_dir, address, workers, batch_size
        )
    except StorageError as e:
        raise CliError(str(e), 2) from e
    out.print(
        f"indexed {report.indexed} images ({report.dated} with a capture date), skipped "
        f"{report.skipped} already indexed, {len(report.failed)} failed"
        + (f", {len(texts)} captions" if captions else "")
        + f" ({report.indexed / max(report.seconds, 1e-9):.1f} images/s on Ray)"
    )
    for item_id, reason in report.failed[:20]:
        err.print(f"  {item_id}: {reason}", markup=False)
    if report.failed:
        raise CliError(f"{len(report.failed)} images could not be indexed", 1)


def count_dated(files: Sequence[ImageFile]) -> int:
    """How many of `files` say in their EXIF when they were taken (as the server reads it)."""
    from models.photos import photo_facts

    return sum("taken_at" in photo_facts(f.path) for f in files)


class Advance:
    """Moves a progress bar on by the items a job settled since it last looked."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task
        self._counted = 0

    def __call__(self, job: dict[str, Any]) -> None:
        settled = job["done"] + job["failed"]
        self._progress.advance(self._task, settled - self._counted)
        self._counted = settled


def upload_images(
    client: XmrClient, todo: Sequence[tuple[ImageFile, str]], batch_size: int
) -> list[tuple[str, str]]:
    """Send `todo` as batch jobs of `batch_size`, following each job's progress."""
    failures: list[tuple[str, str]] = []
    with progress_bar() as progress:
        task = progress.add_task("indexing", total=len(todo))
        for part in chunks(todo, batch_size):
            job_id = client.submit_batch_files(
                [f.path for f, _ in part],
                ids=[f.item_id for f, _ in part],
                metadata=[{"path": f.item_id} for f, _ in part],
            )
            job = finished(client.wait_for_job(job_id, on_update=Advance(progress, task)))
            failures += [(e["id"], e["error"]) for e in job["errors"]]
    return failures


def index_captions(
    client: XmrClient, files: Sequence[ImageFile], captions: dict[str, list[str]]
) -> int:
    """Index each image's captions as texts `<image id>#<n>`, linked by metadata `image_id`."""
    items = caption_items(files, captions)
    for part in chunks(items, TEXT_CHUNK):
        client.index_texts(part)
    return len(items)
