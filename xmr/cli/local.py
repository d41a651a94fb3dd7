"""Commands that work on a data directory in this process: serving, moving a stopped server's
data to another vector backend, importing embeddings (into it, or through a running server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from xmr.cli.app import CliError, KeyOption, app, err, out

if TYPE_CHECKING:
    from xmr.embedding_files import Layout
    from xmr.import_embeddings import ImportReport


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


@app.command()
def migrate(
    to: Annotated[
        str | None, typer.Option(help="the vector backend to move to: milvus or faiss")
    ] = None,
    to_database: Annotated[
        str | None,
        typer.Option(
            "--to-database",
            help="postgresql://user:password@host:port/db: copy the records there",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="the data directory (XMR_DATA_DIR); stop the server first")
    ] = None,
    milvus_uri: Annotated[
        str | None, typer.Option(help="Milvus Lite file or http://host:19530 (XMR_MILVUS_URI)")
    ] = None,
    blob_dir: Annotated[
        Path | None,
        typer.Option(help="with --to-database: copy the image bytes here too (XMR_BLOB_DIR)"),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="sample queries per kind to compare")] = 20,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="only this collection (default: all)")
    ] = None,
) -> None:
    """Move the collections to another vector backend (--to), or their records from SQLite into
    PostgreSQL (--to-database), and verify the result.

    Counts must match, and so must the top-10 of sample queries before and after. Then start
    the server with XMR_INDEX_BACKEND, or XMR_DATABASE_URL (and XMR_BLOB_DIR), set accordingly.
    """
    from app.config import Settings
    from index import StorageError
    from index.records import database_problem
    from xmr.offline import migrate_collections, migrate_collections_to_database

    if (to is None) == (to_database is None):
        raise CliError("give one of --to (milvus or faiss) and --to-database", 2)
    if to is not None and to not in ("milvus", "faiss"):
        raise CliError("--to must be milvus or faiss", 2)
    if to_database is not None and (problem := database_problem(to_database)) is not None:
        raise CliError(problem, 2)
    folder = data_dir or Settings().data_dir
    markers = (folder / "records.sqlite3", folder / "collection.json", folder / "collections")
    if not any(marker.exists() for marker in markers):
        raise CliError(f"{folder} is not an xmr data directory", 2)
    target = to or "PostgreSQL"
    try:
        if to_database is not None:
            reports = migrate_collections_to_database(
                folder, to_database, collection, samples, blob_dir
            )
        else:
            reports = migrate_collections(folder, target, collection, milvus_uri, samples)
    except StorageError as e:
        raise CliError(str(e), 2) from e
    failed = []
    for name, (source, report) in reports.items():
        for kind, (before, after) in report.counts.items():
            out.print(f"{name}: {kind}: {before} vectors in {source}, {after} in {target}")
        out.print(
            f"{name}: top-10 of {report.queries} sample queries compared: "
            f"{len(report.mismatches)} differ"
        )
        for line in report.mismatches[:10]:
            err.print(f"  {line}", markup=False)
        if not report.ok:
            failed.append(name)
    if failed:
        raise CliError(f"the copies disagree on {', '.join(failed)}; keep the old setup", 1)
    if to_database is not None:
        blobs = f" and XMR_BLOB_DIR={blob_dir}" if blob_dir is not None else ""
        out.print(f"done: start the server with XMR_DATABASE_URL set{blobs}")
    else:
        out.print(f"done: start the server with XMR_INDEX_BACKEND={to}")


@app.command("import-embeddings")
def import_embeddings(
    folder: Annotated[Path, typer.Argument(help="clip-retrieval's output, or vectors.npy + ...")],
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="the collection to import into")
    ] = "default",
    layout: Annotated[
        str | None,
        typer.Option("--format", help="clip-retrieval or npy (default: read from the folder)"),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="the parquet column naming each item (default: image_path, url, id)"),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="the data directory (XMR_DATA_DIR); stop the server first")
    ] = None,
    verify: Annotated[
        int,
        typer.Option(
            min=0, help="first re-embed this many originals (under XMR_IMPORT_ROOT) and compare"
        ),
    ] = 0,
    min_cosine: Annotated[
        float, typer.Option(help="with --verify: the lowest cosine that passes")
    ] = 0.98,
    server: Annotated[
        str | None,
        typer.Option(help="a running server (e.g. http://127.0.0.1:8000): import through it"),
    ] = None,
    api_key: KeyOption = None,
    chunk: Annotated[
        int, typer.Option(min=1, max=100_000, help="with --server: rows a request (one job)")
    ] = 10_000,
) -> None:
    """Import embeddings made elsewhere (clip-retrieval's img_emb/, text_emb/, metadata/ or
    vectors.npy + metadata.parquet) into a collection, without embedding the images again.

    Through a running server with --server (a background job a chunk), else into a stopped
    server's data directory. Running it twice stores each item once; an import cut short is
    finished by running it again.
    """
    from index import StorageError
    from xmr.embedding_files import EmbeddingFilesError
    from xmr.import_embeddings import ImportRefusedError
    from xmr.offline import import_embeddings_offline

    if layout not in (None, "clip-retrieval", "npy"):
        raise CliError("--format must be clip-retrieval or npy", 2)
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder", 2)
    try:
        if server is not None:
            report = import_through(
                server, api_key, folder, collection, layout, id_column, verify, min_cosine, chunk
            )
        else:
            report = import_embeddings_offline(
                folder, collection, data_dir, layout, id_column, verify, min_cosine
            )
    except (EmbeddingFilesError, ImportRefusedError, StorageError) as e:
        raise CliError(str(e), 2) from e
    if report.verification is not None:
        check = report.verification
        out.print(
            f"verified {check.checked} images against the collection's model: cosine lowest "
            f"{check.lowest:.4f}, median {check.median:.4f}"
        )
    out.print(
        f"imported {report.images} images and {report.texts} captions, "
        f"{len(report.failed)} failed ({report.images / max(report.seconds, 1e-9):.0f} items/s)"
    )
    for item_id, reason in report.failed[:20]:
        err.print(f"  {item_id}: {reason}", markup=False)
    if report.failed:
        raise CliError(f"{len(report.failed)} rows could not be imported", 1)


def import_through(
    server: str,
    api_key: str | None,
    folder: Path,
    collection: str,
    layout: str | None,
    id_column: str | None,
    verify: int,
    min_cosine: float,
    chunk: int,
) -> ImportReport:
    """`import-embeddings --server`: through the server's `POST .../vectors`; --verify reads
    the originals under XMR_IMPORT_ROOT here and embeds them through the server."""
    from xmr.client import XmrClient, XmrError
    from xmr.import_embeddings import import_through_server

    root = os.environ.get("XMR_IMPORT_ROOT")
    with XmrClient(server, api_key, timeout=600, collection=collection) as client:
        client.wait_ready(10)
        try:
            return import_through_server(
                folder,
                client,
                cast("Layout | None", layout),
                id_column,
                verify,
                Path(root) if root else None,
                min_cosine,
                chunk,
            )
        except XmrError as e:
            raise CliError(f"the server refused the import: {e.detail}", 2) from e
