"""Asking a running server: search, info, evaluation, near-duplicates, zero-shot tags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from xmr.cli.app import (
    DEFAULT_SERVER,
    CliError,
    CollectionOption,
    KeyOption,
    ServerOption,
    app,
    follow_job,
    out,
    parse_filter_option,
)
from xmr.client import XmrClient


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
            answer = follow_job(client, answer["job_id"], "finding duplicates")["result"]
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
    out.print(f"tagged {job['done']} items: metadata {write_metadata!r}")
