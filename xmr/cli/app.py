"""What every command shares: the Typer apps, the consoles, the options, the one error type,
progress bars and following a job."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from xmr.client import XmrClient

app = typer.Typer(
    name="xmr",
    help="Cross-modal retrieval: search images with text and texts with images.",
    no_args_is_help=True,
    add_completion=False,
)
collections_app = typer.Typer(help="List, create, show, delete and re-embed collections.")
app.add_typer(collections_app, name="collections")
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


def parse_filter_option(where: str | None) -> dict[str, Any] | None:
    try:
        return json.loads(where) if where else None
    except json.JSONDecodeError as e:
        raise CliError(f"--filter is not valid JSON: {e.msg}", 2) from e


def follow_job(client: XmrClient, job_id: str, description: str) -> dict[str, Any]:
    """A progress bar over a job until it ends; its final state, which is `done` (any other
    end is a CliError naming the job and its error)."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=None)

        def show(job: dict[str, Any]) -> None:
            progress.update(task, total=job["total"] or None, completed=job["done"])

        job = client.wait_for_job(job_id, poll_s=0.5, on_update=show)
    return finished(job)


def finished(job: dict[str, Any]) -> dict[str, Any]:
    """`job` if it is done; else a CliError naming it and how it ended."""
    if job["status"] != "done":
        raise CliError(f"job {job['job_id']} ended {job['status']}: {job.get('error')}", 1)
    return job
