"""`xmr collections`: list, create, show, delete and re-embed collections."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from xmr.cli.app import (
    DEFAULT_SERVER,
    KeyOption,
    ServerOption,
    collections_app,
    follow_job,
    out,
)
from xmr.client import XmrClient

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
    out.print(f"{name} now runs {model}: {job['done']} items re-embedded")
