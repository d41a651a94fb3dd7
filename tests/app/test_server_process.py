"""The real server as a process (`python -m app` under uvicorn): start-up, serving, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL
from xmr.client import XmrClient, XmrError

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")}
    return (
        env
        | {
            "XMR_MODEL": TINY_MODEL,
            "XMR_PRETRAINED": "",
            "XMR_DEVICE": "cpu",
            "XMR_DATA_DIR": str(data_dir),
            "XMR_PORT": str(port),
            "XMR_LOG_LEVEL": "warning",
        }
        | extra
    )


def start_server(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], XmrClient, dict[str, str]]]:
    port = free_port()
    env = server_env(tmp_path / "data", port)
    process = start_server(env)
    client = XmrClient(f"http://127.0.0.1:{port}")
    try:
        client.wait_ready(60)
        yield process, client, env
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_missing_weights_fail_fast_with_a_message(tmp_path: Path) -> None:
    env = server_env(
        tmp_path / "data",
        free_port(),
        XMR_MODEL="ViT-B-32",
        XMR_PRETRAINED="laion2b_s34b_b79k",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=REPO, env=env, text=True, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert time.monotonic() - started < 30
    assert "XMR_PRETRAINED" in result.stderr and "shapes-tiny" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serves_searches_and_stops_cleanly_on_sigterm(
    running: tuple[subprocess.Popen[str], XmrClient, dict[str, str]],
) -> None:
    process, client, env = running
    client.index_texts([{"text": f"caption number {i}", "id": f"c{i}"} for i in range(10)])
    hits = client.search_text("caption number 3", k=1, target="texts")["results"]
    assert hits[0]["id"] == "c3"
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    data_dir = Path(env["XMR_DATA_DIR"])
    assert (data_dir / "index" / "text.json").is_file()  # the final snapshot was written
    restarted = start_server(env)
    try:
        client.wait_ready(60)
        assert client.info()["texts"] == 10
        assert (
            client.search_text("caption number 3", k=1, target="texts")["results"][0]["id"] == "c3"
        )
    finally:
        restarted.kill()
        restarted.wait()


def test_sigterm_finishes_requests_in_flight_and_interrupts_the_batch_job(tmp_path: Path) -> None:
    """Every search the app began when SIGTERM landed is answered 200; the batch job stops after
    its current step, marked `interrupted`, and resumes after a restart.

    Whether the app began a request is read from its own access log: at shutdown uvicorn closes
    connections it has not read yet (the client sees a refusal, a close or a reset, and may
    retry), which is not a request cut off in flight.
    """
    import base64
    import json
    import sqlite3
    import threading

    import httpx

    from tests.conftest import image_bytes

    port = free_port()
    env = server_env(
        tmp_path / "data",
        port,
        XMR_ENCODE_BATCH_SIZE="16",
        XMR_LOG_LEVEL="info",
        XMR_LOG_FORMAT="json",
    )
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    picture = base64.b64encode(image_bytes((30, 60, 90), size=(96, 96))).decode()
    total = 3000
    answered: list[int] = []
    try:
        with XmrClient(base) as client:
            client.wait_ready(60)
            client.index_texts([{"text": f"caption {i}"} for i in range(20)])
            job_id = client.submit_batch(
                [{"image_base64": picture, "id": f"p{i}"} for i in range(total)]
            )
            while client.job(job_id)["done"] == 0:
                time.sleep(0.05)

        def search_until_refused() -> None:
            while True:
                try:  # a new connection each time: after SIGTERM new ones are not served
                    response = httpx.get(f"{base}/v1/search/text", params={"q": "caption"})
                except httpx.HTTPError:
                    return
                answered.append(response.status_code)

        searchers = [threading.Thread(target=search_until_refused) for _ in range(8)]
        for thread in searchers:
            thread.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        for thread in searchers:
            thread.join(60)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    entries = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    begun = [
        e["status"]
        for e in entries
        if e.get("logger") == "xmr.access" and e.get("path") == "/v1/search/text"
    ]
    assert answered.count(200) >= 8
    assert set(answered) <= {200, 503}
    assert sorted(begun) == sorted(answered)  # every search the app began reached its client
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as jobs:
        status = jobs.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    assert status == "interrupted"  # by the graceful stop itself, not by the next start-up
    restarted = start_server(env | {"XMR_LOG_LEVEL": "warning"})
    try:
        with XmrClient(base) as client:
            client.wait_ready(60)
            before = client.job(job_id)
            assert before["status"] == "interrupted" and 0 < before["done"] < total
            assert client.info()["images"] == before["done"]  # what was counted done is stored
            httpx.post(f"{base}/v1/jobs/{job_id}/resume").raise_for_status()
            after = client.wait_for_job(job_id)
            assert (after["status"], after["done"]) == ("done", total)
            assert client.info()["images"] == total
    finally:
        restarted.kill()
        restarted.wait()


def test_chunked_upload_is_cut_off_without_being_read_whole(tmp_path: Path) -> None:
    port = free_port()
    process = start_server(server_env(tmp_path / "data", port, XMR_MAX_UPLOAD_MB="1"))
    try:
        XmrClient(f"http://127.0.0.1:{port}").wait_ready(60)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/texts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            sent = 0
            conn.settimeout(0.05)
            answer = b""
            while sent < 200 * 2**20 and not answer:  # would be 200 MB
                try:
                    conn.sendall(chunk)
                    sent += 65536
                    answer = conn.recv(4096)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            conn.settimeout(10)
            answer = answer or conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413")
        assert sent < 20 * 2**20
    finally:
        process.kill()
        process.wait()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def test_decompression_bombs_are_refused_with_little_memory(
    running: tuple[subprocess.Popen[str], XmrClient, dict[str, str]],
) -> None:
    import io

    from PIL import Image

    from tests.models.test_images import _png_header_only

    process, client, env = running
    real_bomb = io.BytesIO()
    Image.new("L", (12_000, 12_000), 0).save(real_bomb, "PNG")  # 144 Mpx that compress to ~150 KB
    client.index_texts([{"text": "warm up"}])
    before = peak_rss_mb(process.pid)
    for name, data in (
        ("header.png", _png_header_only(20_000, 20_000)),
        ("zeros.png", real_bomb.getvalue()),
    ):
        for route, field in (("/v1/images", "files"), ("/v1/search/image", "file")):
            response = client._http.post(route, files={field: (name, data, "image/png")})
            assert response.status_code == 413, response.text
            assert "pixels" in response.json()["detail"]
    assert peak_rss_mb(process.pid) - before < 200
    assert client.search_text("warm up", target="texts", k=1)["results"]  # still serving


def test_api_key_is_never_logged(tmp_path: Path) -> None:
    port = free_port()
    key = "never-log-this-0123456789"
    env = server_env(tmp_path / "data", port, XMR_API_KEY=key, XMR_LOG_LEVEL="debug")
    process = start_server(env)
    try:
        with XmrClient(f"http://127.0.0.1:{port}", api_key=key) as client:
            client.wait_ready(60)
            client.index_texts([{"text": "secret test"}])
            client.search_text("secret test")
        with XmrClient(f"http://127.0.0.1:{port}", api_key="wrong-key-value") as stranger:
            with pytest.raises(XmrError) as refused:
                stranger.info()
            assert refused.value.status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert "GET /v1/search/text" in output or "search" in output  # the log did record requests
    assert key not in output and "wrong-key-value" not in output


def test_a_bad_setting_is_named_without_a_traceback(tmp_path: Path) -> None:
    env = server_env(tmp_path / "data", free_port(), XMR_RUNTIME="tensorflow", XMR_PORT="http")
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=REPO, env=env, text=True, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert "XMR_RUNTIME: Input should be 'auto', 'torch', 'onnxruntime' or 'openvino'" in (
        result.stderr
    )
    assert "XMR_PORT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
