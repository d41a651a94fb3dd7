"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary folder, started on a
free loopback port, stopped by its PID whatever the tests did (nothing shared with any other
PostgreSQL on the machine)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")


def why_unavailable() -> str | None:
    """Why no throwaway cluster can run here, or None."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    if _binary("initdb") is None or _binary("pg_ctl") is None:
        return "PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "initdb refuses to run as root, and there is no postgres user to run it as"
    return None


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A running cluster's URL (user xmr, trust authentication on loopback)."""
    folder = Path(tempfile.mkdtemp(prefix="xmr-pg-"))  # under /tmp: the postgres user can reach it
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    pid: int | None = None
    try:
        _run([*run_as, str(_binary("initdb")), "-D", str(data), "-A", "trust", "-U", "xmr",
              "-E", "UTF8", "--no-sync"])  # fmt: skip
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        _run([*run_as, str(_binary("pg_ctl")), "-D", str(data), "-l", str(folder / "log"),
              "-o", options, "-w", "-t", "30", "start"])  # fmt: skip
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield f"postgresql://xmr@127.0.0.1:{port}/postgres"
    finally:
        if pid is None and (data / "postmaster.pid").exists():
            pid = int((data / "postmaster.pid").read_text().split()[0])
        if pid is not None:
            _stop(pid)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(pid: int, timeout_s: float = 30.0) -> None:
    """Fast shutdown (SIGINT), then SIGKILL if it is still there at the deadline."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr or result.stdout}")


def _binary(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    candidate = DEBIAN_BIN / name
    return candidate if candidate.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
