"""`xmr`: serve, index folders with a progress bar, search, inspect, evaluate.

Every command but `serve` talks to a running server over HTTP (`--server`, `XMR_SERVER`).
Exit codes: 0 success, 1 the server refused something (or items failed), 2 bad usage or input,
3 the server cannot be reached.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import click
import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from xmr.client import XmrClient, XmrError
from xmr.files import ImageFile, MissingPathError, find_images, sha256_file

LOOKUP_CHUNK = 1000
TEXT_CHUNK = 256

app = typer.Typer(
    name="xmr",
    help="Cross-modal retrieval: search images with text and texts with images.",
    no_args_is_help=True,
    add_completion=False,
)
# soft_wrap: messages and paths are never broken across lines when output is not a terminal
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ServerOption = Annotated[
    str, typer.Option("--server", envvar="XMR_SERVER", help="URL of the xmr server")
]
KeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="XMR_API_KEY", help="the server's API key")
]
CollectionOption = Annotated[
    str | None,
    typer.Option("--collection", "-c", help="act on this collection (default: default)"),
]
DEFAULT_SERVER = "http://127.0.0.1:8000"


class CliError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main() -> None:
    """Console entry point: run the app and turn failures into a message and an exit code."""
    try:
        code = app(standalone_mode=False)
    except CliError as e:
        err.print(f"xmr: {e}", markup=False)
        sys.exit(e.code)
    except MissingPathError as e:
        err.print(f"xmr: {e}", markup=False)
        sys.exit(2)
    except XmrError as e:
        err.print(f"xmr: the server answered {e.status}: {e.detail}", markup=False)
        sys.exit(1)
    except httpx.TransportError as e:
        err.print(f"xmr: cannot reach the server ({e}); is it running? (xmr serve)", markup=False)
        sys.exit(3)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("xmr: aborted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# -- serve ------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on (XMR_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (XMR_PORT)")] = None,
) -> None:
    """Run the service (configured by XMR_* variables, see the README)."""
    from app.__main__ import main as serve_main

    if host is not None:
        os.environ["XMR_HOST"] = host
    if port is not None:
        os.environ["XMR_PORT"] = str(port)
    code = serve_main()
    if code:
        raise typer.Exit(code)


# -- index ------------------------------------------------------------------------------------
def read_captions(path: Path) -> dict[str, list[str]]:
    """Captions by image file name, from a Karpathy JSON, a {name: caption(s)} JSON, or CSV/TSV."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read captions file {path}: {e.strerror or e}", 2) from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CliError(f"{path} is not valid JSON: {e}", 2) from e
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return {
                entry["filename"]: [
                    s["raw"] if isinstance(s, dict) else str(s) for s in entry["sentences"]
                ]
                for entry in data["images"]
            }
        if isinstance(data, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in data.items()}
        raise CliError(f"{path}: expected a Karpathy file or an object of captions", 2)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    captions: dict[str, list[str]] = {}
    for row in csv.reader(text.splitlines(), delimiter=delimiter):
        if len(row) >= 2 and row[0].strip() and row[1].strip():
            captions.setdefault(row[0].strip(), []).append(row[1].strip())
    return captions


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal and os.environ.get("XMR_PROGRESS") != "1",
    )


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
    out.print(
        f"indexed {len(todo) - len(failures)} images, skipped {len(files) - len(todo)} "
        f"already indexed, {len(failures)} failed" + (f", {texts} captions" if captions else "")
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
        f"indexed {report.indexed} images, skipped {report.skipped} already indexed, "
        f"{len(report.failed)} failed"
        + (f", {len(texts)} captions" if captions else "")
        + f" ({report.indexed / max(report.seconds, 1e-9):.1f} images/s on Ray)"
    )
    for item_id, reason in report.failed[:20]:
        err.print(f"  {item_id}: {reason}", markup=False)
    if report.failed:
        raise CliError(f"{len(report.failed)} images could not be indexed", 1)


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
            counted = 0
            while True:
                job = client.job(job_id)
                finished = job["done"] + job["failed"]
                progress.advance(task, finished - counted)
                counted = finished
                if job["status"] not in ("queued", "running"):
                    break
                time.sleep(0.2)
            if job["status"] != "done":
                raise CliError(f"batch job {job_id} ended {job['status']}: {job.get('error')}", 1)
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


def caption_items(
    files: Sequence[ImageFile], captions: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """The text items for the images' captions: `<image id>#<n>`, metadata `image_id`."""
    items: list[dict[str, Any]] = []
    for file in files:
        for key in (file.item_id, file.path.name):
            if key in captions:
                link = {"image_id": file.item_id}
                items += [
                    {"id": f"{file.item_id}#{n}", "text": text, "metadata": link}
                    for n, text in enumerate(captions[key])
                    if text.strip()
                ]
                break
    return items


# -- migrate ----------------------------------------------------------------------------------
@app.command()
def migrate(
    to: Annotated[str, typer.Option(help="the backend to move to: milvus or faiss")],
    data_dir: Annotated[
        Path | None, typer.Option(help="the data directory (XMR_DATA_DIR); stop the server first")
    ] = None,
    milvus_uri: Annotated[
        str | None, typer.Option(help="Milvus Lite file or http://host:19530 (XMR_MILVUS_URI)")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="sample queries per kind to compare")] = 20,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="only this collection (default: all)")
    ] = None,
) -> None:
    """Copy the vectors of the collections into the other backend and verify them.

    Counts must match, and so must the top-10 of sample queries in both backends. Then start
    the server with XMR_INDEX_BACKEND (and XMR_MILVUS_URI) set to the new backend.
    """
    from app.config import Settings
    from index import StorageError
    from xmr.offline import migrate_collections

    if to not in ("milvus", "faiss"):
        raise CliError("--to must be milvus or faiss", 2)
    folder = data_dir or Settings().data_dir
    if not (folder / "records.sqlite3").exists() and not (folder / "collections").is_dir():
        raise CliError(f"{folder} is not an xmr data directory", 2)
    try:
        reports = migrate_collections(folder, to, collection, milvus_uri, samples)
    except StorageError as e:
        raise CliError(str(e), 2) from e
    failed = []
    for name, (source, report) in reports.items():
        for kind, (before, after) in report.counts.items():
            out.print(f"{name}: {kind}: {before} vectors in {source}, {after} in {to}")
        out.print(
            f"{name}: top-10 of {report.queries} sample queries compared: "
            f"{len(report.mismatches)} differ"
        )
        for line in report.mismatches[:10]:
            err.print(f"  {line}", markup=False)
        if not report.ok:
            failed.append(name)
    if failed:
        raise CliError(f"the backends disagree on {', '.join(failed)}; keep the old backend", 1)
    out.print(f"done: start the server with XMR_INDEX_BACKEND={to}")


# -- search, info, eval -----------------------------------------------------------------------
@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="the text to search with")] = None,
    image: Annotated[Path | None, typer.Option(help="search with this image instead")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="how many results")] = 10,
    target: Annotated[
        str | None, typer.Option(help="images or texts (default: the other modality)")
    ] = None,
    where: Annotated[
        str | None, typer.Option("--filter", help='metadata conditions as JSON: {"album": "2024"}')
    ] = None,
    offset: Annotated[int, typer.Option(min=0, help="skip this many results")] = 0,
    min_score: Annotated[
        float | None, typer.Option(min=-1.0, help="only results scoring at least this")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="text queries: vector, keyword (BM25) or hybrid (both fused)")
    ] = "vector",
    alpha: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="hybrid: the vector ranking's weight")
    ] = 0.5,
    fusion: Annotated[str, typer.Option(help="hybrid: relative or rrf")] = "relative",
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
    collection: CollectionOption = None,
    server: ServerOption = DEFAULT_SERVER,
    api_key: KeyOption = None,
) -> None:
    """Search images with a text, or texts (or images) with an image."""
    if (query is None) == (image is None):
        raise CliError("give either a text query or --image FILE", 2)
    if image is not None and mode != "vector":
        raise CliError("--mode keyword and hybrid take a text query, not --image", 2)
    conditions = parse_filter_option(where)
    if target not in (None, "images", "texts"):
        raise CliError("--target must be images or texts", 2)
    if image is not None and not image.is_file():
        raise CliError(f"{image} is not a file", 2)
    with XmrClient(server, api_key, collection=collection) as client:
        if image is not None:
            result = client.search_image(image, k, target or "texts", conditions, offset, min_score)
        else:
            result = client.search_text(
                query or "",
                k,
                target or "images",
                conditions,
                offset,
                min_score,
                mode,
                alpha,
                fusion,
            )
    if as_json:
        out.print_json(json.dumps(result))
        return
    table = Table("rank", "score", "id", "kind", "text / metadata")
    for rank, hit in enumerate(result["results"], start=1):
        detail = hit.get("text") or json.dumps(hit.get("metadata") or {})
        table.add_row(str(rank), f"{hit['score']:.4f}", hit["id"], hit["kind"], detail)
    out.print(table)
    out.print(f"{len(result['results'])} results in {result['took_ms']:.1f} ms")


@app.command()
def info(server: ServerOption = DEFAULT_SERVER, api_key: KeyOption = None) -> None:
    """The server's model, device, precision and index sizes."""
    with XmrClient(server, api_key) as client:
        out.print_json(json.dumps(client.info()))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def eval(ctx: typer.Context) -> None:  # noqa: A001 - the command is called eval
    """Retrieval quality of a running server (Recall@K, latency); --help lists the options."""
    from xmr.eval import main as eval_main

    code = eval_main(ctx.args)
    if code:
        raise typer.Exit(code)


# -- collections ------------------------------------------------------------------------------
collections_app = typer.Typer(help="List, create, show, delete and re-embed collections.")
app.add_typer(collections_app, name="collections")

ModelOption = Annotated[str, typer.Option(help="open_clip model name or a bundled one")]
PretrainedOption = Annotated[
    str | None, typer.Option(help="pretrained tag or checkpoint path ('' = random weights)")
]
PrecisionOption = Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16")]


@collections_app.command("list")
def collections_list(server: ServerOption = DEFAULT_SERVER, api_key: KeyOption = None) -> None:
    """Every collection with its model and size."""
    with XmrClient(server, api_key) as client:
        listed = client.collections()
    table = Table("name", "model", "images", "texts", "status")
    for c in listed:
        table.add_row(c["name"], c["model_id"], str(c["images"]), str(c["texts"]), c["status"])
    out.print(table)


@collections_app.command("create")
def collections_create(
    name: Annotated[str, typer.Argument(help="lowercase letters, digits, _ and -")],
    model: ModelOption,
    pretrained: PretrainedOption = None,
    precision: PrecisionOption = "auto",
    server: ServerOption = DEFAULT_SERVER,
    api_key: KeyOption = None,
) -> None:
    """Create a collection with its own model (the server loads it to check it)."""
    with XmrClient(server, api_key, timeout=600) as client:
        out.print_json(json.dumps(client.create_collection(name, model, pretrained, precision)))


@collections_app.command("show")
def collections_show(
    name: str, server: ServerOption = DEFAULT_SERVER, api_key: KeyOption = None
) -> None:
    """One collection: model, sizes, index structures, a re-embedding under way."""
    with XmrClient(server, api_key) as client:
        out.print_json(json.dumps(client.collection(name)))


@collections_app.command("delete")
def collections_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
    server: ServerOption = DEFAULT_SERVER,
    api_key: KeyOption = None,
) -> None:
    """Delete a collection with all its items, vectors and images."""
    if not yes and not typer.confirm(f"delete collection {name} and everything in it?"):
        raise typer.Abort()
    with XmrClient(server, api_key) as client:
        client.delete_collection(name)
    out.print(f"deleted {name}")


@collections_app.command("reindex")
def collections_reindex(
    name: str,
    model: ModelOption,
    pretrained: PretrainedOption = None,
    precision: PrecisionOption = "auto",
    wait: Annotated[bool, typer.Option(help="follow the job with a progress bar")] = True,
    server: ServerOption = DEFAULT_SERVER,
    api_key: KeyOption = None,
) -> None:
    """Re-embed every item of a collection with another model; it serves throughout."""
    with XmrClient(server, api_key) as client:
        job_id = client.reindex_collection(name, model, pretrained, precision)
        out.print(f"re-embedding {name}: job {job_id}")
        if not wait:
            return
        job = follow_job(client, job_id, f"re-embedding {name}")
    if job["status"] != "done":
        raise CliError(f"job {job_id} ended {job['status']}: {job.get('error')}", 1)
    out.print(f"{name} now runs {model}: {job['done']} items re-embedded")


# -- duplicates, zero-shot tags ----------------------------------------------------------------
@app.command()
def duplicates(
    threshold: Annotated[
        float, typer.Option(min=-1.0, max=1.0, help="the least cosine of two duplicates")
    ] = 0.95,
    target: Annotated[str, typer.Option(help="images or texts")] = "images",
    where: Annotated[
        str | None, typer.Option("--filter", help="metadata conditions as JSON")
    ] = None,
    delete_keep_first: Annotated[
        bool,
        typer.Option(
            "--delete-keep-first", help="delete every item of a group but its first (oldest)"
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
    collection: CollectionOption = None,
    server: ServerOption = DEFAULT_SERVER,
    api_key: KeyOption = None,
) -> None:
    """Report groups of near-duplicate items; optionally keep only the first of each."""
    conditions = parse_filter_option(where)
    with XmrClient(server, api_key, collection=collection) as client:
        groups = all_duplicate_groups(client, threshold, target, conditions)
        extra = sum(len(g["ids"]) - 1 for g in groups)
        if delete_keep_first:
            for group in groups:
                for item_id in group["ids"][1:]:
                    client.delete_item(item_id)
    if as_json:
        out.print_json(json.dumps({"groups": groups, "deleted": extra if delete_keep_first else 0}))
        return
    table = Table("group", "items", "least cosine", "keep", "duplicates")
    for number, group in enumerate(groups, start=1):
        ids = group["ids"]
        table.add_row(
            str(number), str(len(ids)), f"{group['min_score']:.4f}", ids[0], ", ".join(ids[1:])
        )
    out.print(table)
    out.print(f"{len(groups)} groups, {extra} items beyond the first of each")
    if delete_keep_first:
        out.print(f"deleted {extra} items, kept the first of each group")


def all_duplicate_groups(
    client: XmrClient, threshold: float, target: str, where: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Every group, page by page; a large collection's answer comes from a job."""
    groups: list[dict[str, Any]] = []
    page = 1000
    while True:
        answer = client.duplicates(threshold, target, where, page, len(groups))
        if "job_id" in answer:
            job = follow_job(client, answer["job_id"], "finding duplicates")
            if job["status"] != "done":
                raise CliError(f"job {job['job_id']} ended {job['status']}: {job.get('error')}", 1)
            answer = job["result"]
        groups += answer["groups"]
        if len(groups) >= answer["total_groups"] or not answer["groups"]:
            return groups


@app.command()
def classify(
    labels: Annotated[Path, typer.Option(help="a text file: one label per line")],
    write_metadata: Annotated[
        str, typer.Option("--write-metadata", help="the metadata key that gets the best label")
    ],
    template: Annotated[
        str | None, typer.Option(help='how a label is phrased, e.g. "a photo of {}"')
    ] = None,
    where: Annotated[
        str | None, typer.Option("--filter", help="metadata conditions as JSON")
    ] = None,
    target: Annotated[str, typer.Option(help="images or texts")] = "images",
    wait: Annotated[bool, typer.Option(help="follow the job with a progress bar")] = True,
    collection: CollectionOption = None,
    server: ServerOption = DEFAULT_SERVER,
    api_key: KeyOption = None,
) -> None:
    """Tag stored items with zero-shot labels: the best label and its probability go into each
    item's metadata (`<key>` and `<key>_probability`), in a job that resumes after a restart."""
    try:
        names = [line.strip() for line in labels.read_text("utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise CliError(f"cannot read {labels}: {e.strerror or e}", 2) from e
    conditions = parse_filter_option(where)
    with XmrClient(server, api_key, collection=collection) as client:
        job_id = client.tag_items(names, write_metadata, template, conditions, target)
        out.print(f"tagging: job {job_id}")
        if not wait:
            return
        job = follow_job(client, job_id, "tagging")
    if job["status"] != "done":
        raise CliError(f"job {job_id} ended {job['status']}: {job.get('error')}", 1)
    out.print(f"tagged {job['done']} items: metadata {write_metadata!r}")


def parse_filter_option(where: str | None) -> dict[str, Any] | None:
    try:
        return json.loads(where) if where else None
    except json.JSONDecodeError as e:
        raise CliError(f"--filter is not valid JSON: {e.msg}", 2) from e


def follow_job(client: XmrClient, job_id: str, description: str) -> dict[str, Any]:
    """A progress bar over a job until it ends; its final state."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=None)
        while True:
            job = client.job(job_id)
            progress.update(task, total=job["total"] or None, completed=job["done"])
            if job["status"] not in ("queued", "running"):
                return job
            time.sleep(0.5)


if __name__ == "__main__":
    main()
