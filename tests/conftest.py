"""Shared fixtures: a tiny real open_clip model, real data dirs, a real app through TestClient."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from models.options import LoadOptions
from tests.postgres import (
    ThrowawayPostgres,
    running_cluster,
    throwaway_cluster,
    why_unavailable,
)

TINY_MODEL = "xmr-test-tiny"  # models/configs/xmr-test-tiny.json, seeded random weights


@pytest.fixture(scope="session")
def tiny_encoder() -> OpenClipEncoder:
    """fp32 so that equality with open_clip's own calls can be asserted tightly.

    The runtime is the default one (OpenVINO on a CPU where it reproduces PyTorch's vectors).
    """
    return OpenClipEncoder.load(TINY_MODEL, "", LoadOptions(device="cpu", precision="fp32"))


@pytest.fixture(scope="session")
def torch_encoder() -> OpenClipEncoder:
    """The same weights run by PyTorch itself: its module is the reference."""
    return OpenClipEncoder.load(
        TINY_MODEL, "", LoadOptions(device="cpu", precision="fp32", runtime="torch")
    )


def torch_state(encoder: OpenClipEncoder) -> dict[str, Any]:
    """The weights of a PyTorch-run encoder."""
    assert encoder.torch_model is not None, "load it with runtime='torch'"
    return dict(encoder.torch_model.state_dict())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        model=TINY_MODEL,
        pretrained="",
        device="cpu",
        data_dir=tmp_path / "data",
        import_root=tmp_path / "import",
        snapshot_interval_s=3600,
        allowed_hosts="testserver,127.0.0.1,localhost",  # TestClient sends Host: testserver
    )


@pytest.fixture
def client(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as test_client:
        yield test_client


COLLECTION_ROUTE = re.compile(
    r"^/v1/(images|texts|batch|vectors|search|embed|items|classify)(?=[/?]|$)"
)


class DefaultCollectionClient(TestClient):
    """A TestClient that sends each `/v1/<data route>` to `/v1/collections/default/<route>`."""

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if isinstance(url, str):
            url = COLLECTION_ROUTE.sub(r"/v1/collections/default/\1", url)
        return super().request(method, url, *args, **kwargs)


def wait_for_job(client: Any, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """Poll a job through `client` (a TestClient or an httpx.Client) until it has ended."""
    from xmr.client import wait_for_job as poll

    try:
        return poll(lambda: client.get(f"/v1/jobs/{job_id}").json(), 0.05, timeout_s=timeout_s)
    except TimeoutError as e:
        raise AssertionError(f"job {job_id} did not finish: {e}") from e


def reference_open_clip(encoder: OpenClipEncoder) -> tuple[Any, Any, Any]:
    """open_clip's own model, transform and tokenizer for TINY_MODEL, with `encoder`'s weights.

    `encoder` is run by PyTorch (the `torch_encoder` fixture).
    """
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=None)
    model.load_state_dict(torch_state(encoder))
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_MODEL)


def image_bytes(
    color: str | tuple[int, ...] = "red",
    fmt: str = "PNG",
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt)
    return buffer.getvalue()


def png_file(name: str, color: str | tuple[int, ...]) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart `files` entry holding a solid-colour PNG."""
    return ("files", (name, image_bytes(color), "image/png"))


@pytest.fixture
def live_server(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[str]:
    """The app under a real uvicorn server on a free loopback port, in a thread; yields its URL."""
    with serve_in_thread(create_app(settings, encoder=tiny_encoder)) as url:
        yield url


@pytest.fixture
def http(live_server: str) -> Iterator[Any]:
    """An httpx client of `live_server`: requests that run side by side, as clients send them."""
    import httpx

    with httpx.Client(base_url=live_server, timeout=60) as client:
        yield client


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in a thread; yields its URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _milvus_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


# the API tests run on both vector backends, so that they cannot drift apart
BACKENDS = [
    "faiss",
    pytest.param(
        "milvus",
        marks=pytest.mark.skipif(not _milvus_available(), reason="pymilvus/milvus-lite missing"),
    ),
]


def with_backend(settings: Settings, backend: str) -> Settings:
    return settings.model_copy(update={"index_backend": backend})


@pytest.fixture(scope="session")
def milvus_lite_server() -> Iterator[str]:
    """Milvus Lite's gRPC server, shared by the session's tests (tests/milvus_servers.py)."""
    from tests.milvus_servers import lite_server, why_no_lite_server

    reason = why_no_lite_server()
    if reason is not None:
        pytest.skip(reason)
    with lite_server() as server:
        yield server.uri


@pytest.fixture(scope="session")
def milvus_standalone() -> Iterator[str]:
    """The Milvus 2.3 standalone server, shared by the session's tests."""
    from tests.milvus_servers import standalone_server, why_no_standalone

    reason = why_no_standalone()
    if reason is not None:
        pytest.skip(reason)
    with standalone_server() as server:
        yield server.uri


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """Ceph's RADOS Gateway, a real S3 server, for the session (tests/s3_server.py)."""
    from tests.s3_server import rados_gateway, why_unavailable

    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with rados_gateway() as gateway:
        gateway.server.client().create_bucket(Bucket="xmr-tests")
        yield gateway.server


@pytest.fixture
def s3_url(s3_server: Any) -> str:
    """A key prefix of the test's own in the session's bucket."""
    import uuid

    return f"s3://xmr-tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session (tests/postgres.py); skips, saying why,
    where none can run."""
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with throwaway_cluster() as url:
        yield url


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL of the test's own, which it may kill -9 and start again."""
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A database of its own on the throwaway cluster, dropped after the test."""
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
