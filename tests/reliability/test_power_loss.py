"""Durability on power loss, without a power switch: the order of the server's system calls.

SIGKILL keeps the page cache, so the crash test would pass with every fsync removed. A write
survives losing power only if its bytes were synced before it was acknowledged. As
crash-consistency tools do, this test traces the real server's system calls (strace) while it
indexes an image and saves a snapshot, and checks the order: the image file and its folder are
synced, and SQLite's commit is synced, before the first byte of the 201; a snapshot file is
synced before the rename that publishes it.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.app.test_server_process import free_port, server_env, start_server
from tests.conftest import image_bytes
from xmr.client import XmrClient

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(
    STRACE is None, reason="no strace on this machine (apt-get install strace); test skipped"
)
SYSCALLS = "openat,write,pwrite64,fsync,fdatasync,rename,renameat,renameat2,sendto,sendmsg,writev"
# `PID name(args) = result`; a call another thread interrupted comes in two lines, `PID
# name(args <unfinished ...>` and later `PID <... name resumed>rest = result`
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_STARTED = re.compile(r"^(\w+)\((.*)$")


def traced_calls(trace: Path) -> list[tuple[str, str]]:
    """(syscall, whole call) in the order the calls completed, split calls joined again."""
    calls: list[tuple[str, str]] = []
    unfinished: dict[str, tuple[str, str]] = {}
    for line in trace.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        pid, text = match.groups()
        resumed = _RESUMED.match(text)
        if resumed is not None:
            name, head = unfinished.pop(pid, (resumed.group(1), ""))
            calls.append((name, head + resumed.group(2)))
            continue
        started = _STARTED.match(text)
        if started is None:
            continue
        if text.endswith("<unfinished ...>"):
            # `fsync(5</a/b> <unfinished ...>` + `) = 0` is `fsync(5</a/b>) = 0`
            unfinished[pid] = (started.group(1), text.removesuffix("<unfinished ...>").rstrip())
        else:
            calls.append((started.group(1), text))
    return calls


def first(calls: list[tuple[str, str]], names: set[str], pattern: str) -> int:
    for position, (name, line) in enumerate(calls):
        if name in names and re.search(pattern, line):
            return position
    raise AssertionError(f"no {names} call matching {pattern!r} in the trace")


def last_before(calls: list[tuple[str, str]], names: set[str], pattern: str, end: int) -> int:
    found = [
        p for p, (n, line) in enumerate(calls[:end]) if n in names and re.search(pattern, line)
    ]
    assert found, f"no {names} call matching {pattern!r} before position {end}"
    return found[-1]


def test_a_call_split_by_another_thread_reads_as_one(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text(
        "7 fsync(5</data/blobs/ab> <unfinished ...>\n"
        '8 write(9<socket:[1]>, "HTTP/1.1 200 OK", 15) = 15\n'
        "7 <... fsync resumed>) = 0\n"
    )
    assert traced_calls(trace) == [
        ("write", 'write(9<socket:[1]>, "HTTP/1.1 200 OK", 15) = 15'),
        ("fsync", "fsync(5</data/blobs/ab>) = 0"),
    ]


SYNC = {"fsync", "fdatasync"}
SEND = {"sendto", "sendmsg", "write", "writev"}


def test_acknowledged_writes_and_snapshots_are_synced_in_order(tmp_path: Path) -> None:
    assert STRACE is not None
    data = (tmp_path / "data").resolve()
    trace = tmp_path / "trace.txt"
    port = free_port()
    server = start_server(server_env(data, port, XMR_SNAPSHOT_INTERVAL_S="0.5"))
    tracer: subprocess.Popen[bytes] | None = None
    base = f"http://127.0.0.1:{port}"
    try:
        with XmrClient(base) as client:
            client.wait_ready(180)
        # attached once the model is loaded: tracing the imports would take a minute
        tracer = subprocess.Popen(
            [STRACE, "-f", "-qq", "-y", "-s", "64", "-e", f"trace={SYSCALLS}"]
            + ["-o", str(trace), "-p", str(server.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while "HTTP/1.1 200" not in (trace.read_text(errors="replace") if trace.exists() else ""):
            assert time.monotonic() < deadline, "strace did not attach"
            httpx.get(f"{base}/healthz")
            time.sleep(0.2)
        response = httpx.post(
            f"{base}/v1/images",
            files=[("files", ("p.png", image_bytes((1, 2, 3)), "image/png"))],
            data={"ids": '["power"]'},
            timeout=60,
        )
        assert response.status_code == 201
        time.sleep(2.0)  # a snapshot or two
    finally:
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)  # detaches
            tracer.wait(30)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    calls = traced_calls(trace)
    blobs, index = re.escape(str(data / "blobs")), re.escape(str(data / "index"))

    acknowledged = first(calls, SEND, r"HTTP/1\.1 201")
    blob = rf"{blobs}/[0-9a-f]+/\.?[0-9a-f]+\.png"
    blob_synced = last_before(calls, SYNC, rf"<{blob}(\.\d+\.tmp)?>", acknowledged)
    blob_published = last_before(calls, {"rename", "renameat", "renameat2"}, blob, acknowledged)
    folder_synced = last_before(calls, SYNC, rf"<{blobs}/[0-9a-f]+>\)", acknowledged)
    commit_synced = last_before(calls, SYNC, r"records\.sqlite3-wal>", acknowledged)
    assert blob_synced < blob_published < folder_synced < commit_synced < acknowledged
    # the record was written to the WAL only after the image bytes were durable
    wal_write = last_before(calls, {"pwrite64", "write"}, r"records\.sqlite3-wal>", acknowledged)
    assert blob_synced < wal_write

    published = first(calls, {"rename", "renameat", "renameat2"}, rf"{index}/\.?text-\d+\.faiss")
    snapshot_synced = last_before(calls, SYNC, rf"<{index}/\.text-\d+\.faiss\.\d+\.tmp>", published)
    snapshot_written = last_before(calls, {"write"}, rf"<{index}/\.text-\d+\.faiss", published)
    assert snapshot_written < snapshot_synced < published
    folder_after = first(calls[published:], SYNC, rf"<{index}>\)")
    assert folder_after >= 0


def test_sqlite_commits_are_synced_to_disk(tmp_path: Path) -> None:
    """WAL with synchronous=FULL: SQLite syncs the log at every commit."""
    from index.sqlite import open_database

    conn = open_database(tmp_path / "x.sqlite3", "CREATE TABLE t (x INTEGER);")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.close()
