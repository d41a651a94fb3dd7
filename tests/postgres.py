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


class ThrowawayPostgres:
    """A cluster in a temporary folder on a free loopback port (user xmr, trust authentication
    on loopback), which a test may kill -9 and start again on the same data."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="xmr-pg-"))  # the postgres user reaches /tmp
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.folder / "data", _free_port()
        self.url = f"postgresql://xmr@127.0.0.1:{self.port}/postgres"
        _run([*self._run_as, str(_binary("initdb")), "-D", str(self.data), "-A", "trust",
              "-U", "xmr", "-E", "UTF8", "--no-sync"])  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        _run([*self._run_as, str(_binary("pg_ctl")), "-D", str(self.data), "-l",
              str(self.folder / "log"), "-o", options, "-w", "-t", "30", "start"])  # fmt: skip

    def pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pid_file.read_text().split()[0])
        return None

    def kill(self) -> None:
        """SIGKILL the server and every backend, as a crash of its machine would stop them."""
        pid = self.pid()
        if pid is None:
            return
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        for process in [pid, *(int(p) for p in children.stdout.split())]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGKILL)
        _wait_gone(pid, 10.0)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            _stop(pid)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A running cluster's URL, stopped by its PID and deleted whatever the tests did."""
    with running_cluster() as cluster:
        yield cluster.url


@contextlib.contextmanager
def running_cluster() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        cluster.remove()


def _stop(pid: int, timeout_s: float = 30.0) -> None:
    """Fast shutdown (SIGINT), then SIGKILL if it is still there at the deadline."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    if _wait_gone(pid, timeout_s):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


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
