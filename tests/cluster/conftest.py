"""Several real xmr replicas (`python -m app`) on one throwaway PostgreSQL, with a shared blob
folder and, where a test wants it, Debian's HAProxy in front. Every process is stopped by its
PID whatever the test's outcome."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL
from tests.postgres import ThrowawayPostgres
from xmr.client import XmrClient

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One `python -m app` with a data directory (its cache) of its own."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = int(env["XMR_PORT"])
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(env["XMR_DATA_DIR"]).parent / f"{name}.log"
        self.prefix: list[str] = []  # e.g. taskset -c 1: the cores it may use

    def start(self) -> None:
        Path(self.env["XMR_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "app"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        with XmrClient(self.url) as client:
            try:
                client.wait_ready(timeout_s)
            except TimeoutError as e:
                raise TimeoutError(f"{e}; its log:\n{self.log.read_text()[-3000:]}") from e

    def client(self) -> XmrClient:
        return XmrClient(self.url, timeout=60)

    def kill(self) -> None:
        """kill -9, as a crash would stop it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, as an orchestrator stops it: its exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


class ReplicaSet:
    """Replicas of one deployment: one database, one blob folder, each its own port and cache."""

    def __init__(self, root: Path, database_url: str, **settings: str) -> None:
        self.root = root
        self.database_url = database_url
        self.settings = settings
        self.replicas: list[Replica] = []

    def add(self, **settings: str) -> Replica:
        name = f"r{len(self.replicas)}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")}
        env |= {
            "XMR_MODEL": TINY_MODEL,
            "XMR_PRETRAINED": "",
            "XMR_DEVICE": "cpu",
            "XMR_DATA_DIR": str(self.root / name / "data"),
            "XMR_BLOB_DIR": str(self.root / "shared-blobs"),
            "XMR_DATABASE_URL": self.database_url,
            "XMR_PORT": str(free_port()),
            "XMR_LOG_LEVEL": "warning",
            "XMR_DECODE_WORKERS": "1",
            **self.settings,
            **settings,
        }
        replica = Replica(name, env)
        self.replicas.append(replica)
        return replica

    def start(self, count: int, cores: list[str] | None = None) -> list[Replica]:
        """`count` more replicas, started together and ready; `cores[i]`, if given, is the
        taskset core list the i-th may use."""
        started = [self.add() for _ in range(count)]
        for replica, allowed in zip(started, cores or [], strict=False):
            replica.prefix = ["taskset", "-c", allowed]
        for replica in started:
            replica.start()
        for replica in started:
            replica.wait_ready()
        return started

    def stop(self) -> None:
        for replica in self.replicas:
            replica.kill()


class HAProxy:
    """Debian's HAProxy in front of the replicas: health-checked on /readyz, and a request the
    chosen replica could not take (refused, closed, 503) is sent to another."""

    def __init__(self, binary: str, root: Path, replicas: list[Replica]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "haproxy.cfg"
        self.socket = root / "haproxy.sock"
        servers = "\n".join(
            f"    server {r.name} 127.0.0.1:{r.port} check inter 300ms fall 1 rise 2"
            for r in replicas
        )
        self.config.write_text(
            HAPROXY_CONFIG.format(port=self.port, servers=servers, socket=self.socket),
            encoding="utf-8",
        )
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "haproxy.log").open("ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception), XmrClient(self.url) as client:
                if client.ready():
                    return
            time.sleep(0.1)
        raise TimeoutError("HAProxy did not pass requests within 10 s")

    def wait_up(self, name: str, timeout_s: float = 30) -> None:
        """Until HAProxy's own checks have `name` up again (as a rolling restart waits for its
        balancer, not for a fixed time: on a busy 2-core machine 1.5 s was once not enough)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.server_status(name) == "UP":
                return
            time.sleep(0.1)
        raise TimeoutError(f"HAProxy did not see {name} up within {timeout_s:g} s")

    def server_status(self, name: str) -> str:
        """`name`'s status in HAProxy's `show stat` (UP, DOWN, "UP 1/2" while rising...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            connection.connect(str(self.socket))
            connection.sendall(b"show stat\n")
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        rows = csv.DictReader(answer.decode().lstrip("# ").splitlines())
        for row in rows:
            if row["pxname"] == "replicas" and row["svname"] == name:
                return row["status"]
        raise KeyError(name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


HAPROXY_CONFIG = """
global
    maxconn 512
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    # a replica's /readyz on a busy 2-core machine can take longer than the 300 ms interval
    timeout check 2s
    retries 5
    option redispatch 1
    option http-buffer-request
    retry-on conn-failure empty-response response-timeout 503

frontend xmr
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
{servers}
"""


@pytest.fixture
def vector_store(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The replicas' vector settings: FAISS in each (the default), or, where a test is
    parametrized with "milvus-server", one Milvus Lite server of the test's own, shared."""
    if getattr(request, "param", "faiss") == "faiss":
        yield {}
        return
    from tests.milvus_servers import lite_server, why_no_lite_server

    reason = why_no_lite_server()
    if reason is not None:
        pytest.skip(reason)
    with lite_server() as server:
        yield {"XMR_INDEX_BACKEND": "milvus", "XMR_MILVUS_URI": server.uri}


# the tests that replicas on one shared Milvus server must pass as well
ON_EVERY_VECTOR_STORE = pytest.mark.parametrize(
    "vector_store", ["faiss", "milvus-server"], indirect=True
)


@pytest.fixture
def replica_set(
    tmp_path: Path, postgres: ThrowawayPostgres, vector_store: dict[str, str]
) -> Iterator[ReplicaSet]:
    replicas = ReplicaSet(tmp_path, postgres.url, **vector_store)
    try:
        yield replicas
    finally:
        replicas.stop()


def haproxy_path() -> str | None:
    """Debian installs HAProxy under /usr/sbin, which a user's PATH may lack."""
    sbin = Path("/usr/sbin/haproxy")
    return shutil.which("haproxy") or (str(sbin) if sbin.exists() else None)


@pytest.fixture
def haproxy_binary() -> str:
    binary = haproxy_path()
    if binary is None:
        pytest.skip("HAProxy is not installed (apt-get install haproxy; `make test` does)")
    return binary
