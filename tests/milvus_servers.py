"""Real Milvus servers for the tests, each stopped by its process group whatever the outcome.

- Milvus Lite's own gRPC server (`milvus-lite server`, from the milvus-lite dependency): several
  processes share it; starts in under a second.
- The Milvus 2.3 standalone binary that the PyPI package `milvus` ships (`milvus-server`, a test
  dependency on Linux x86_64): a real Milvus with etcd, coordinators and query nodes in one
  process. Its internal ports are fixed (19529, 19531, 21121-21124, 2379, 2380, 9091, 13333,
  53100) and bind every interface, so one runs at a time, on a fresh data folder (a folder a
  killed server used keeps its stale sessions for about a minute). It ignores SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

STANDALONE_PORTS = (19529, 19531, 21121, 21122, 21123, 21124, 2379, 2380, 9091, 13333, 53100)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _bin(name: str) -> str | None:
    """A console script of this Python's environment, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


class MilvusProcess:
    """A Milvus server in a process group of its own, on a data folder it is given."""

    def __init__(self, command: list[str], uri: str, log: Path) -> None:
        self.uri = uri
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Milvus exited: {self.log.read_text()[-2000:]}")
            try:
                client = MilvusClient(self.uri, timeout=2)
                client.list_collections()
                client.close()
                return
            except Exception as e:  # not answering yet
                last = e
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Milvus at {self.uri} did not answer in {timeout_s} s: {last}")

    def kill(self) -> None:
        """kill -9 of the whole group (the standalone wrapper runs the server as a child)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    stop = kill


def why_no_lite_server() -> str | None:
    if _bin("milvus-lite") is None:
        return "milvus-lite is not installed (pip install milvus-lite)"
    return None


def why_no_standalone() -> str | None:
    if _bin("milvus-server") is None:
        return (
            "the Milvus standalone binary is missing (pip install 'milvus==2.3.5', Linux x86_64;"
            " the test extra has it)"
        )
    taken = [port for port in STANDALONE_PORTS if _port_taken(port)]
    if taken:
        return f"Milvus standalone needs ports {taken}, which something else holds"
    return None


def lite_command(data_dir: Path, port: int) -> list[str]:
    """`milvus-lite server` on loopback at `port`, keeping its data in `data_dir`."""
    return [
        str(_bin("milvus-lite")),
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


@contextlib.contextmanager
def _serving(
    command: list[str], port: int, folder: Path, timeout_s: float
) -> Iterator[MilvusProcess]:
    server = MilvusProcess(command, f"http://127.0.0.1:{port}", folder / "server.log")
    try:
        server.wait_ready(timeout_s)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def lite_server() -> Iterator[MilvusProcess]:
    """`milvus-lite server` on a free loopback port and a throwaway folder."""
    folder = Path(tempfile.mkdtemp(prefix="xmr-milvus-lite-"))
    port = _free_port()
    with _serving(lite_command(folder / "data", port), port, folder, 30) as server:
        yield server


@contextlib.contextmanager
def standalone_server() -> Iterator[MilvusProcess]:
    """The Milvus 2.3 standalone binary on a throwaway folder; its proxy on a free port."""
    folder = Path(tempfile.mkdtemp(prefix="xmr-milvus-standalone-"))
    port = _free_port()
    command = [str(_bin("milvus-server")), "--data", str(folder), "--proxy-port", str(port)]
    with _serving(command, port, folder, 120) as server:
        yield server
