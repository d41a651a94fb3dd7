"""A two-node Ray cluster on this machine for the tests: a head and a second node, each with one
CPU, each `ray start --block` in a process group of its own, stopped by its PID whatever the
outcome (never `ray stop`, which kills every Ray process on the machine by name)."""

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

WORKER_PROCESS = "ray::ImageWorker"  # how a model actor's process is named
# Ray 2.60 turns token authentication on once ~/.ray/auth_token exists (a local `ray.init()`
# writes one), and a driver then fails to connect to a cluster started without it: the nodes
# and every driver of the tests (the replicas) run with it off, whatever the home folder holds
DRIVER_ENV = {"RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def why_unavailable() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install 'ray[data]')"
    if not (Path(sys.executable).parent / "ray").exists():
        return "the ray command is missing beside this Python"
    return None


class RayNode:
    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "ray"), "start", "--block", *args],
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
            )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class RayCluster:
    """Its `address` is what XMR_RAY_ADDRESS takes."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="xmr-ray-"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[RayNode] = []
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **DRIVER_ENV}

    def start(self, timeout_s: float = 120) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=200000000"]
        self.nodes.append(
            RayNode(
                ["--head", f"--port={self.port}", f"--temp-dir={self.root / 'tmp'}"]
                + ["--include-dashboard=false", "--disable-usage-stats", *common],
                self.root / "head.log",
                self.env,
            )
        )
        self._wait_for_nodes(1, timeout_s)
        self.nodes.append(
            RayNode([f"--address={self.address}", *common], self.root / "node.log", self.env)
        )
        self._wait_for_nodes(2, timeout_s)

    def _wait_for_nodes(self, count: int, timeout_s: float) -> None:
        probe = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False);"
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"a Ray node exited: {node.log.read_text()[-2000:]}")
            done = subprocess.run(
                [sys.executable, "-c", probe],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=60,
                check=False,
            )
            if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise TimeoutError(f"the Ray cluster did not reach {count} nodes in {timeout_s} s")

    def worker_pids(self) -> list[int]:
        """The processes of the model actors, on either node."""
        found = subprocess.run(
            ["pgrep", "-f", WORKER_PROCESS], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in found.stdout.split()]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        # actor processes outlive a killed raylet for a moment; they are ours: by PID
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
