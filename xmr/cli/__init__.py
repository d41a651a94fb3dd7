"""`xmr`: serve, index folders with a progress bar, search, inspect, evaluate.

Every command but `serve`, `migrate` and `index --ray` talks to a running server over HTTP
(`--server`, `XMR_SERVER`). Exit codes: 0 success, 1 the server refused something (or items
failed), 2 bad usage or input, 3 the server cannot be reached.

One module per command group; `app.py` holds what they share. The CLI reaches the service
through `xmr.client` (HTTP), `serve` runs app/ in this process, and the commands that act on a
stopped server's data go through `xmr.offline`; each is imported when its command runs.
"""

from __future__ import annotations

import sys

import click
import httpx
import typer

from xmr.cli import collections, indexing, local, queries  # noqa: F401 - they register commands
from xmr.cli.app import CliError, app, err
from xmr.client import XmrError
from xmr.files import MissingPathError

__all__ = ["app", "main"]


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
