"""Commands that work in this process: serving, and moving a stopped server's data directory
to another vector backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.app import CliError, app, err, out


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
    markers = (folder / "records.sqlite3", folder / "collection.json", folder / "collections")
    if not any(marker.exists() for marker in markers):
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
