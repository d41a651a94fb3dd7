"""Hostile clients: requests built to break the service, each answered without harm.

Every test here failed on the release before the hostile-client work (issue 12); RELIABILITY.md
lists them under "Hostile clients".
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from index import MAX_METADATA_DEPTH
from models import OpenClipEncoder
from tests.app.routes.conftest import index_texts
from tests.conftest import image_bytes, serve_in_thread, wait_for_job


def nested(depth: int) -> dict:
    """An object whose innermost list sits `depth` levels down (the object itself is level 1)."""
    return {"a": json.loads("[" * (depth - 1) + "]" * (depth - 1))}


# -- 1. poisoned records ---------------------------------------------------------------------


def test_metadata_nested_too_deep_is_refused_on_every_route(client: TestClient) -> None:
    deep = nested(260)
    text = client.post("/v1/texts", json={"items": [{"text": "x", "metadata": deep}]})
    assert text.status_code == 422
    assert "nested deeper than the 32 levels" in text.text
    image = client.post(
        "/v1/images",
        files=[("files", ("a.png", image_bytes("red"), "image/png"))],
        data={"metadata": json.dumps([deep])},
    )
    assert image.status_code == 422
    assert image.json()["detail"].startswith("files[0].metadata: nested deeper")
    batch_json = client.post("/v1/batch", json={"items": [{"text": "x", "metadata": deep}]})
    assert batch_json.status_code == 422
    batch_form = client.post(
        "/v1/batch",
        files=[("files", ("a.png", image_bytes("red"), "image/png"))],
        data={"metadata": json.dumps([deep])},
    )
    assert batch_form.status_code == 422
    assert batch_form.json()["detail"].startswith("items[0].metadata: nested deeper")
    assert client.get("/v1/info").json()["texts"] == 0


def test_metadata_at_the_limits_is_stored_and_returned(client: TestClient) -> None:
    deepest = nested(MAX_METADATA_DEPTH)
    index_texts(client, {"text": "deep enough", "id": "d", "metadata": deepest})
    assert client.get("/v1/items/d").json()["metadata"] == deepest
    hits = client.get("/v1/search/text", params={"q": "deep enough", "target": "texts"})
    assert hits.status_code == 200 and hits.json()["results"][0]["metadata"] == deepest
    too_deep = client.post(
        "/v1/texts", json={"items": [{"text": "x", "metadata": nested(MAX_METADATA_DEPTH + 1)}]}
    )
    assert too_deep.status_code == 422


def test_metadata_larger_than_the_limit_is_refused(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    small = settings.model_copy(update={"max_metadata_bytes": 1000})
    with TestClient(create_app(small, encoder=tiny_encoder)) as client:
        fits = {"note": "x" * 900}
        index_texts(client, {"text": "fits", "metadata": fits})
        item = {"text": "x", "metadata": {"n": "x" * 1000}}
        too_big = client.post("/v1/texts", json={"items": [item]})
        assert too_big.status_code == 422
        detail = too_big.json()["detail"]
        assert detail.startswith("items[0].metadata:") and "XMR_MAX_METADATA_BYTES" in detail
        assert "xxxxxxxxxx" not in detail  # the input is not echoed


def test_a_record_stored_by_an_older_release_cannot_break_search(
    client: TestClient, settings: Settings
) -> None:
    """Metadata 300 deep, written straight into SQLite as the old release allowed."""
    index_texts(client, {"text": "poison", "id": "poison"}, {"text": "fine", "id": "fine"})
    with sqlite3.connect(settings.data_dir / "records.sqlite3") as db:
        db.execute("UPDATE items SET metadata = ? WHERE id = 'poison'", (json.dumps(nested(300)),))
    hits = client.get("/v1/search/text", params={"q": "poison", "target": "texts", "k": 10})
    assert hits.status_code == 200
    by_id = {hit["id"]: hit for hit in hits.json()["results"]}
    assert set(by_id) == {"poison", "fine"} and by_id["poison"]["metadata"] is None
    assert client.get("/v1/items/poison").status_code == 200


# -- 2. deep JSON in form and query fields ----------------------------------------------------


@pytest.mark.parametrize("field", ["ids", "metadata"])
def test_deep_json_in_form_fields_is_a_422(client: TestClient, field: str) -> None:
    response = client.post(
        "/v1/images",
        files=[("files", ("a.png", image_bytes("red"), "image/png"))],
        data={field: "[" * 100_000},
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"{field} must be a JSON list")


def test_deep_json_in_a_filter_is_a_422(client: TestClient) -> None:
    query = client.get("/v1/search/text", params={"q": "x", "filter": "[" * 15_000})
    assert query.status_code == 422 and "nested too deeply" in query.text
    form = client.post(
        "/v1/search/image",
        files={"file": ("q.png", image_bytes("red"), "image/png")},
        data={"filter": "{" * 100_000},
    )
    assert form.status_code == 422


def test_deep_json_body_is_a_4xx(client: TestClient) -> None:
    body = '{"items": [{"text": "x", "metadata": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}]}"
    for url in ("/v1/texts", "/v1/batch"):
        response = client.post(url, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text


# -- 8. response amplification ----------------------------------------------------------------


def test_a_batch_search_cannot_build_a_huge_response(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    budget = settings.model_copy(update={"max_response_mb": 1.0})
    with TestClient(create_app(budget, encoder=tiny_encoder)) as client:
        index_texts(client, {"text": "heavy", "id": "h", "metadata": {"blob": "x" * 60_000}})
        queries = ["heavy"] * 16
        body = {"queries": queries, "k": 1, "target": "texts"}
        fine = client.post("/v1/search/text/batch", json=body)
        assert fine.status_code == 200  # 16 x 60 KB: under 1 MB
        too_big = client.post(
            "/v1/search/text/batch", json={"queries": queries * 2, "k": 1, "target": "texts"}
        )
        assert too_big.status_code == 422
        assert "XMR_MAX_RESPONSE_MB" in too_big.json()["detail"]


def test_queries_times_k_is_bounded(client: TestClient) -> None:
    response = client.post(
        "/v1/search/text/batch", json={"queries": ["a"] * 256, "k": 1000, "target": "texts"}
    )
    assert response.status_code == 422
    assert "queries x (k + offset)" in response.json()["detail"]


def test_texts_longer_than_the_limit_are_refused(client: TestClient) -> None:
    from app.schemas import MAX_TEXT_CHARS

    response = client.post("/v1/texts", json={"items": [{"text": "x" * (MAX_TEXT_CHARS + 1)}]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "items", 0, "text"]


# -- 10. input is never echoed whole ----------------------------------------------------------


def test_errors_quote_a_short_escaped_excerpt_of_the_input(client: TestClient) -> None:
    long_id = quote("evil\n" + "z" * 5000, safe="")
    for response in (
        client.get(f"/v1/items/{long_id}"),
        client.get(f"/v1/jobs/{long_id}"),
        client.post("/v1/batch", json={"items": [{"image_path": "../" + "a" * 5_000_000}]}),
    ):
        assert 400 <= response.status_code < 500
        detail = response.json()["detail"]
        assert len(detail) < 200, detail[:300]
        assert "\n" not in detail


def test_the_text_log_format_keeps_one_event_on_one_line() -> None:
    """Whatever a message holds (an exception's text, a value from a client), one line."""
    from app.observability.logs import TEXT_FORMAT, RequestIdFilter, TextFormatter

    record = logging.LogRecord("xmr", logging.INFO, __file__, 1, "bad %s", ("a\nb\rc",), None)
    RequestIdFilter().filter(record)
    line = TextFormatter(TEXT_FORMAT).format(record)
    assert "\n" not in line and "\r" not in line and "a\\x0ab\\x0dc" in line
    assert record.getMessage() == "bad a\nb\rc"  # the record itself is left as it was


def test_a_newline_in_the_path_cannot_forge_a_log_line(client: TestClient) -> None:
    from app.observability.logs import TEXT_FORMAT, RequestIdFilter, TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(TextFormatter(TEXT_FORMAT))
    access = logging.getLogger("xmr.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        client.get("/v1/items/a%0A2026-01-01 INFO xmr.access forged" + "%0A" * 3 + "x" * 5000)
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "\\x0a2026-01-01 INFO xmr.access forged" in lines[0]
    assert len(lines[0]) < 700


# -- 11. ids with slashes and other reserved characters ---------------------------------------

ODD_IDS = [
    "p",
    "p/content",
    "/content",
    "a/b/c",
    "100%",
    "%2F",
    "what?x=1",
    "tag#1",
    "with space",
    "日本/写真.jpg",
]


def test_odd_ids_through_every_item_route_and_the_client(live_server: str) -> None:
    from xmr.client import XmrClient, XmrError

    images = {item_id: image_bytes((n * 20, 255 - n * 20, 90)) for n, item_id in enumerate(ODD_IDS)}
    with XmrClient(live_server) as client:
        assert client.index_images(list(images.values()), ids=list(images)) == ODD_IDS
        for item_id, data in images.items():
            assert client.get_item(item_id)["id"] == item_id
            assert client.item_content(item_id) == data
        # the plain routes spell it out: an encoded slash belongs to the id
        with httpx.Client(base_url=live_server) as http:
            assert http.get("/v1/items/p%2Fcontent").json()["id"] == "p/content"
            assert http.get("/v1/items/p/content").content == images["p"]
            assert http.get("/v1/items/p%2Fcontent/content").content == images["p/content"]
        for item_id in ODD_IDS:
            client.delete_item(item_id)
            with pytest.raises(XmrError) as gone:
                client.get_item(item_id)
            assert gone.value.status == 404
        assert client.info()["images"] == 0


# -- 3. cross-site writes and DNS rebinding ---------------------------------------------------


@pytest.fixture
def loopback_client(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    """The defaults of a server bound to 127.0.0.1, reached as http://127.0.0.1:8000."""
    defaults = settings.model_copy(update={"allowed_hosts": None, "host": "127.0.0.1"})
    app = create_app(defaults, encoder=tiny_encoder)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


def test_a_foreign_host_header_is_refused(loopback_client: TestClient) -> None:
    assert loopback_client.get("/v1/info").status_code == 200
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert loopback_client.get("/v1/info", headers={"Host": host}).status_code == 200
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example"):
        rebound = loopback_client.get("/v1/info", headers={"Host": host})
        assert rebound.status_code == 400, host
        deleted = loopback_client.delete("/v1/items/x", headers={"Host": host})
        assert deleted.status_code == 400


def test_the_trusted_hosts_follow_the_bind_address_and_the_setting(settings: Settings) -> None:
    assert "localhost" in settings.model_copy(update={"allowed_hosts": None}).trusted_hosts()
    public = settings.model_copy(update={"allowed_hosts": None, "host": "0.0.0.0"})
    assert public.trusted_hosts() == ["*"]
    listed = public.model_copy(update={"allowed_hosts": "search.example.com, *.example.org"})
    assert listed.trusted_hosts() == ["search.example.com", "*.example.org"]
    ipv6 = settings.model_copy(update={"allowed_hosts": None, "host": "::1"})
    assert "[::1]" in ipv6.trusted_hosts()


def test_a_foreign_page_cannot_write(loopback_client: TestClient) -> None:
    files = [("files", ("a.png", image_bytes("red"), "image/png"))]
    for origin in (
        "https://evil.example",
        "null",
        "http://127.0.0.1:9999",
        "http://localhost:8000",
    ):
        headers = {"Origin": origin}
        assert loopback_client.post("/v1/images", files=files, headers=headers).status_code == 403
        batch = loopback_client.post("/v1/batch", files=files, headers=headers)
        assert batch.status_code == 403
        assert loopback_client.delete("/v1/items/x", headers=headers).status_code == 403
    assert loopback_client.get("/v1/info").json()["images"] == 0
    # the page itself (same origin), and curl or the CLI (no Origin), keep working
    same = {"Origin": "http://127.0.0.1:8000"}
    assert loopback_client.post("/v1/images", files=files, headers=same).status_code == 201
    assert loopback_client.post("/v1/images", files=files).status_code == 201


def test_listed_cors_origins_may_call_the_api(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    app_origin = "https://photos.example.com"
    cors = settings.model_copy(update={"cors_origins": app_origin + "/"})
    with TestClient(create_app(cors, encoder=tiny_encoder)) as client:
        preflight = client.options(
            "/v1/texts",
            headers={
                "Origin": app_origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == app_origin
        written = client.post(
            "/v1/texts", json={"items": [{"text": "hello"}]}, headers={"Origin": app_origin}
        )
        assert written.status_code == 201
        assert written.headers["access-control-allow-origin"] == app_origin
        other = client.post(
            "/v1/texts", json={"items": [{"text": "x"}]}, headers={"Origin": "https://evil.example"}
        )
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_a_trailing_slash_never_redirects_to_the_host_header(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    anywhere = settings.model_copy(update={"allowed_hosts": None, "host": "0.0.0.0"})
    with TestClient(create_app(anywhere, encoder=tiny_encoder)) as client:
        response = client.get("/v1/info/", headers={"Host": "evil.example"}, follow_redirects=False)
        assert response.status_code == 404
        assert "evil.example" not in response.headers.get("location", "")


# -- 13. hardening ----------------------------------------------------------------------------


def test_page_and_docs_forbid_framing_and_foreign_scripts(client: TestClient) -> None:
    for path in ("/", "/docs", "/static/app.js", "/v1/info"):
        response = client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY"
    docs = client.get("/docs").text
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', docs)
    assert scripts and all(src.startswith("/static/") for src in scripts)
    assert "<script>" not in docs  # no inline script: the policy would block it
    for src in scripts + re.findall(r'href="(/static/[^"]+)"', docs):
        assert client.get(src).status_code == 200, src
    assert client.get("/openapi.json").status_code == 200


def test_a_stalled_body_is_answered_408_and_the_connection_freed(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    impatient = settings.model_copy(update={"body_timeout_s": 1.0})
    with serve_in_thread(create_app(impatient, encoder=tiny_encoder)) as url:
        host, port = url.removeprefix("http://").split(":")
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as stalled:
            stalled.sendall(
                b"POST /v1/texts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"items": ['
            )
            answer = stalled.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert time.monotonic() - started < 5
        with httpx.Client(base_url=url) as http:  # and the server serves on
            assert http.get("/v1/info").status_code == 200


# -- 4, 5, 6. files under the import root ------------------------------------------------------


def test_a_directory_swapped_for_a_link_never_leads_outside(tmp_path: Path) -> None:
    """Rename-exchange a folder and a link to outside while reading: never the outside file."""
    import ctypes

    from app.jobs.import_files import read_import_file
    from app.services.errors import InvalidInputError

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "dir").mkdir(parents=True)
    outside.mkdir()
    (root / "dir" / "a.png").write_bytes(b"inside")
    (outside / "a.png").write_bytes(b"SECRET")
    (root / "swap").symlink_to(outside)
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    stop = threading.Event()

    def swap() -> None:
        a, b = str(root / "dir").encode(), str(root / "swap").encode()
        while not stop.is_set():
            libc.renameat2(at_fdcwd, a, at_fdcwd, b, rename_exchange)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    seen: dict[bytes | str, int] = {}
    try:
        for _ in range(3000):
            try:
                result: bytes | str = read_import_file(root, "dir/a.png", 1000)
            except InvalidInputError as e:
                result = str(e)
            seen[result] = seen.get(result, 0) + 1
    finally:
        stop.set()
        swapper.join()
    assert b"SECRET" not in seen, seen
    assert seen.get(b"inside", 0) > 0 and len(seen) > 1  # the swap really raced the reads


def test_fifos_special_files_and_os_errors_fail_their_item_only(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    root = settings.import_root
    assert root is not None
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(image_bytes("green"))
    (root / "ok.gif").write_bytes(image_bytes("blue", fmt="GIF"))
    os.mkfifo(root / "fifo.png")
    (root / "loop").symlink_to(root / "loop")
    (root / "sub" / "dirlink").symlink_to(tmp_path)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "socket.png"))
    items = {
        "fifo": "fifo.png",
        "notdir": "ok.gif/x",
        "toolong": "a" * 300 + ".png",
        "loop": "loop",
        "dirlink": "sub/dirlink/x.png",
        "folder": "sub",
        "socket": "socket.png",
        "good": "ok.png",
    }
    started = time.monotonic()
    response = client.post(
        "/v1/batch", json={"items": [{"id": i, "image_path": p} for i, p in items.items()]}
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"], timeout_s=20)
    assert time.monotonic() - started < 20
    server.close()
    assert (job["status"], job["done"], job["failed"]) == ("done", 1, len(items) - 1)
    errors = {e["id"]: e["error"] for e in job["errors"]}
    assert "not a regular file" in errors["fifo"] and "not a regular file" in errors["socket"]
    assert "not a folder" in errors["notdir"] and "too long" in errors["toolong"]
    assert "symbolic link" in errors["loop"] and "folder" in errors["folder"]
    # the job queue is not stuck behind the FIFO: the next job runs
    after = client.post("/v1/batch", json={"items": [{"text": "after"}]})
    assert wait_for_job(client, after.json()["job_id"])["status"] == "done"


def test_a_file_over_the_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    from app.jobs.import_files import read_import_file
    from app.services.errors import InvalidInputError

    (tmp_path / "big.png").write_bytes(b"x" * 1001)
    (tmp_path / "fits.png").write_bytes(b"x" * 1000)
    assert read_import_file(tmp_path, "fits.png", 1000) == b"x" * 1000
    with pytest.raises(InvalidInputError, match="larger than the 1000 bytes"):
        read_import_file(tmp_path, "big.png", 1000)


# -- 9. big batch bodies ------------------------------------------------------------------------


def test_a_large_base64_batch_is_accepted_in_seconds(client: TestClient) -> None:
    tiny = base64.b64encode(image_bytes("red", size=(8, 8))).decode()
    items = [{"image_base64": tiny, "id": f"i{n}"} for n in range(20_000)]
    started = time.monotonic()
    response = client.post("/v1/batch", json={"items": items})
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert elapsed < 20, f"{elapsed:.1f} s to accept 20,000 items"
    staged = list((client.app.state.settings.data_dir / "staging").rglob("*"))  # type: ignore[attr-defined]
    assert 0 < len([p for p in staged if p.is_file()]) <= 2  # not a file per item


# -- 7. memory and latency from legal images ----------------------------------------------------


def test_a_text_query_never_waits_behind_a_large_decode(
    tiny_encoder: OpenClipEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large image's decode is held open; text queries and small images are answered meanwhile.

    On the CPU small decodes take turns with the model on the inference thread; were a large one
    queued there too, every query would wait for it (and here, for ever).
    """
    from app.services import encoding as encoding_module
    from app.services.encoding import LARGE_IMAGE_PIXELS, EncodingLimits, EncodingService

    release = threading.Event()
    decoding_threads: list[str] = []
    real_decode = encoding_module.decode_image

    def held_decode(data: bytes, *args: Any) -> Any:
        image = real_decode(data, *args)
        decoding_threads.append(threading.current_thread().name)
        if threading.current_thread().name.startswith("xmr-decode-large"):
            assert release.wait(30)
        return image

    monkeypatch.setattr(encoding_module, "decode_image", held_decode)
    side = int(LARGE_IMAGE_PIXELS**0.5) + 10
    large = image_bytes("red", "PNG", (side, side))

    async def scenario() -> None:
        service = EncodingService(tiny_encoder, EncodingLimits(50_000_000, decode_workers=2))
        service.start()
        try:
            big = asyncio.ensure_future(service.prepare_many([large, image_bytes("blue")]))
            single = asyncio.ensure_future(service.prepare(large))
            await asyncio.sleep(0.2)
            vectors = await asyncio.wait_for(service.encode_texts(["a query"]), 10)
            small = await asyncio.wait_for(service.prepare(image_bytes("green")), 10)
            assert vectors.shape == (1, tiny_encoder.dim) and small is not None
            assert not big.done() and not single.done()  # still held
            release.set()
            results = await asyncio.wait_for(asyncio.gather(big, single), 30)
            assert all(not isinstance(r, Exception) for r in [*results[0], results[1]])
        finally:
            release.set()
            await service.stop()
            service.close()

    asyncio.run(scenario())
    assert decoding_threads.count("xmr-decode-large_0") == 2  # one thread: one at a time


def test_the_snapshot_loop_survives_any_error(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    frequent = settings.model_copy(update={"snapshot_interval_s": 0.05})
    with TestClient(create_app(frequent, encoder=tiny_encoder)) as client:
        store = client.app.state.services.collections.get("default").store  # type: ignore[attr-defined]
        calls: list[float] = []
        real_snapshot = store.snapshot

        def failing_then_working() -> bool:
            calls.append(time.monotonic())
            if len(calls) <= 2:
                raise RuntimeError("dictionary changed size during iteration")
            return bool(real_snapshot())

        store.snapshot = failing_then_working
        index_texts(client, {"text": "saved after the errors"})
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 4
        assert not store.is_dirty()
