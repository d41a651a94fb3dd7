"""A real S3 server for the tests: Debian's Ceph RADOS Gateway on a one-monitor, one-OSD Ceph
cluster of the test's own (`apt-get install radosgw ceph-mon ceph-osd`; `make cluster-test`
installs them). About 15 s to start; stopped by its PIDs whatever the outcome.

The OSD keeps its objects in a sparse file outside the cluster folder (bluestore on a file);
authentication inside the cluster is off and the messengers use `crc` (with `secure` modes and
no keys radosgw exits after 300 s). Pools have one replica.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")
ACCESS_KEY = "xmr-test"
SECRET_KEY = "xmr-test-secret"

CONFIG = """
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
run dir = {root}/run
log file = {root}/log/$name.log
admin socket = {root}/run/$name.asok
keyring = {root}/keyring
[mon.a]
mon data = {root}/mon
[osd.0]
osd data = {root}/osd
osd objectstore = bluestore
bluestore block path = {block}
bluestore block create = true
bluestore block size = 10737418240
osd memory target = 939524096
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
"""


def why_unavailable() -> str | None:
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (
            f"no RADOS Gateway here ({', '.join(missing)} missing): "
            "apt-get install radosgw ceph-mon ceph-osd (make cluster-test does)"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def env(self) -> dict[str, str]:
        """The variables a process (boto3) needs to reach it."""
        return {
            "XMR_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


class RadosGateway:
    """A Ceph monitor, one OSD and radosgw, each a process of its own in a folder of its own."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="xmr-ceph-"))
        self.block = Path(tempfile.mkdtemp(prefix="xmr-ceph-block-")) / "block"
        self.mon_port = _free_port()
        self.rgw_port = _free_port()
        self.config = self.root / "ceph.conf"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.server = S3Server(f"http://127.0.0.1:{self.rgw_port}")

    def _ceph(self, *args: str) -> str:
        done = subprocess.run(
            [args[0], "-c", str(self.config), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def _daemon(self, name: str, *args: str) -> None:
        with (self.root / "log" / f"{name}.out").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                [args[0], "-c", str(self.config), "-f", *args[1:]],
                stdout=out,
                stderr=out,
            )

    def create(self) -> None:
        """Make the cluster's folders and its monitor's and OSD's stores (once)."""
        for folder in ("mon", "osd", "run", "log", "rgw"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.config.write_text(
            CONFIG.format(
                fsid=fsid,
                mon_port=self.mon_port,
                rgw_port=self.rgw_port,
                root=self.root,
                block=self.block,
            ),
            encoding="utf-8",
        )
        keyring = str(self.root / "keyring")
        subprocess.run(
            ["ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon."],
            capture_output=True,
            check=True,
        )
        monmap = str(self.root / "monmap")
        subprocess.run(
            ["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]"]
            + ["--fsid", fsid, monmap],
            capture_output=True,
            check=True,
        )
        self._ceph("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        self.start_monitor()
        osd_uuid = str(uuid.uuid4())
        self._ceph("ceph", "osd", "new", osd_uuid)
        self._ceph("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)

    def start_monitor(self) -> None:
        self._daemon("mon", "ceph-mon", "-i", "a")
        self._wait(lambda: "quorum" in self._ceph("ceph", "-s"), "the monitor", 30)

    def start(self) -> None:
        """Start (or start again, after a kill) the monitor, the OSD and radosgw."""
        if "mon" not in self.processes or self.processes["mon"].poll() is not None:
            self.start_monitor()
        self._daemon("osd", "ceph-osd", "-i", "0")
        self._wait(lambda: "1 up" in self._ceph("ceph", "osd", "stat"), "the OSD", 60)
        self.start_gateway()

    def start_gateway(self) -> None:
        """Start radosgw (again, after a kill) and wait until it answers."""
        with contextlib.suppress(FileNotFoundError):  # a killed one leaves its socket behind
            (self.root / "run" / "client.rgw.asok").unlink()
        self._daemon("rgw", "radosgw", "-n", "client.rgw")
        self._wait(self._gateway_answers, "radosgw", 120)

    def add_user(self) -> None:
        self._ceph(
            "radosgw-admin",
            "-n",
            "client.admin",
            "user",
            "create",
            "--uid",
            "xmr-test",
            "--display-name",
            "xmr tests",
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        )

    def _gateway_answers(self) -> bool:
        try:
            return httpx.get(self.server.endpoint_url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    def _wait(self, ready, what: str, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    log = (self.root / "log" / f"{name}.out").read_text(errors="replace")
                    raise RuntimeError(
                        f"ceph {name} exited while waiting for {what}: {log[-2000:]}"
                    )
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                if ready():
                    return
            time.sleep(0.3)
        raise TimeoutError(f"{what} did not come up within {timeout_s} s")

    def kill(self, name: str | None = None) -> None:
        """kill -9 of one daemon ("mon", "osd", "rgw") or all, by PID."""
        for daemon, process in self.processes.items():
            if name in (None, daemon) and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.block.parent, ignore_errors=True)


@contextlib.contextmanager
def rados_gateway() -> Iterator[RadosGateway]:
    """A running gateway with a user (tests/s3_server.py's keys); gone afterwards."""
    gateway = RadosGateway()
    try:
        gateway.create()
        gateway.start()
        gateway.add_user()
        yield gateway
    finally:
        gateway.remove()
