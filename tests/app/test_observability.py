"""Operations: Prometheus metrics, request ids, and JSON logs without secrets or bytes."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from app.observability.logs import JsonFormatter, RequestIdFilter
from models import OpenClipEncoder
from tests.conftest import TINY_MODEL, png_file


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}}" if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_batches_and_index_sizes(client: TestClient) -> None:
    client.post("/v1/images", files=[png_file("a.png", "red"), png_file("b.png", "blue")])
    client.post("/v1/texts", json={"items": [{"text": "one"}, {"text": "two"}, {"text": "3"}]})
    for _ in range(3):
        client.get("/v1/search/text", params={"q": "red", "k": 2})
    client.get("/v1/items/nope")
    client.get("/no/such/page")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    search = {"method": "GET", "route": "/v1/search/text", "status": "200"}
    assert metric_value(text, "xmr_http_requests_total", **search) == 3
    missing = {"method": "GET", "route": "/v1/items/{item_id:path}", "status": "404"}
    assert metric_value(text, "xmr_http_requests_total", **missing) == 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert metric_value(text, "xmr_http_requests_total", **unmatched) == 1
    latency = {"method": "GET", "route": "/v1/search/text"}
    assert metric_value(text, "xmr_http_request_duration_seconds_count", **latency) == 3
    assert metric_value(text, "xmr_encode_batch_size_sum", modality="image") == 2
    # three texts indexed, one query: its two repeats came from the query cache
    assert metric_value(text, "xmr_encode_batch_size_sum", modality="text") == 3 + 1
    batches = metric_value(text, "xmr_encode_batch_duration_seconds_count", modality="text")
    assert batches >= 2
    # the model's own time of the same calls, on the inference thread: within their whole time
    assert metric_value(text, "xmr_encode_model_duration_seconds_count", modality="text") == batches
    model_sum = metric_value(text, "xmr_encode_model_duration_seconds_sum", modality="text")
    whole_sum = metric_value(text, "xmr_encode_batch_duration_seconds_sum", modality="text")
    assert 0 < model_sum <= whole_sum
    model_id = f"{TINY_MODEL}/random-init"
    assert metric_value(text, "xmr_encode_queue_depth", model_id=model_id, modality="text") == 0
    assert metric_value(text, "xmr_query_cache_lookups_total", model_id=model_id, result="hit") == 2
    assert (
        metric_value(text, "xmr_query_cache_lookups_total", model_id=model_id, result="miss") == 1
    )
    assert metric_value(text, "xmr_query_cache_entries", model_id=model_id) == 1
    default = {"collection": "default"}
    assert metric_value(text, "xmr_collection_info", **default, model_id=model_id) == 1
    assert metric_value(text, "xmr_index_vectors", **default, kind="image", structure="Flat") == 2
    assert metric_value(text, "xmr_index_vectors", **default, kind="text", structure="Flat") == 3
    model = {"device": "cpu", "model_id": model_id, "precision": "fp32"}
    assert metric_value(text, "xmr_model_info", **model, runtime="openvino") == 1
    for tower in ("text", "image"):
        run = {"model_id": model_id, "precision": "fp32", "runtime": "openvino", "tower": tower}
        assert metric_value(text, "xmr_model_tower_info", **run) == 1
    assert metric_value(text, "xmr_index_building", **default, kind="text") == 0


def test_request_ids_are_echoed_or_made_up(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id; with spaces"})
    assert made.headers["x-request-id"] != "bad id; with spaces"
    assert len(made.headers["x-request-id"]) == 32
    assert client.get("/healthz").headers["x-request-id"] != made.headers["x-request-id"]


def timings(response: httpx.Response) -> dict[str, float]:
    """The durations of a Server-Timing header, by name."""
    found = {}
    for entry in response.headers["server-timing"].split(","):
        name, _, duration = entry.strip().partition(";dur=")
        found[name] = float(duration)
    return found


def test_server_timing_says_the_model_s_share_of_a_request(client: TestClient) -> None:
    first = timings(client.post("/v1/embed/text", json={"texts": ["a red circle", "a square"]}))
    assert set(first) == {"model", "app"} and 0 < first["model"] <= first["app"]
    search = timings(client.get("/v1/search/text", params={"q": "a blue star", "k": 3}))
    assert 0 < search["model"] <= search["app"]
    # no model call: an empty route, and a query the query cache answers
    assert set(timings(client.get("/healthz"))) == {"app"}
    again = client.get("/v1/search/text", params={"q": "a blue star", "k": 3})
    assert again.status_code == 200 and set(timings(again)) == {"index", "app"}


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_server_timing_says_the_index_s_share_of_a_search(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The index's time is that of the search on its thread: a search made 50 ms slower there
    shows 50 ms more, and model and index together fit in the app's time."""
    client.post("/v1/texts", json={"items": [{"text": "a blue star"}, {"text": "a red circle"}]})
    searches = type(client.app.state.services.collections.default().store.searches)
    slowed = getattr(searches, mode)

    def slow_search(self: object, *args: object) -> object:
        time.sleep(0.05)
        return slowed(self, *args)

    monkeypatch.setattr(searches, mode, slow_search)
    query = {"q": "blue star", "k": 3, "target": "texts", "mode": mode}
    response = client.get("/v1/search/text", params=query)
    assert response.status_code == 200 and response.json()["results"]
    found = timings(response)
    assert found["index"] >= 50
    assert found.get("model", 0) + found["index"] <= found["app"]
    assert ("model" in found) == (mode != "keyword")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def test_json_logs_carry_the_request_id_and_no_secrets_or_bytes(
    settings: Settings, tiny_encoder: OpenClipEncoder, json_log: io.StringIO
) -> None:
    secret = "s3cret-key-value"
    keyed = settings.model_copy(update={"api_key": SecretStr(secret)})
    marker = b"\x89PNG-MARKER-BYTES"
    with TestClient(create_app(keyed, encoder=tiny_encoder)) as client:
        response = client.post(
            "/v1/images",
            files=[("files", ("x.png", marker, "image/png"))],
            headers={"X-API-Key": secret, "X-Request-ID": "req-7"},
        )
        assert response.status_code == 422
        assert client.get("/v1/info").status_code == 401
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    access = [e for e in lines if e["logger"] == "xmr.access"]
    upload = next(e for e in access if e["path"] == "/v1/images")
    assert upload["request_id"] == "req-7"
    assert (upload["method"], upload["status"]) == ("POST", 422)
    assert upload["duration_ms"] >= 0
    assert any(e["path"] == "/v1/info" and e["status"] == 401 for e in access)
    everything = json_log.getvalue()
    assert secret not in everything
    assert "PNG-MARKER" not in everything
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in lines)


def test_the_runtime_setting_reaches_the_model(settings: Settings) -> None:
    chosen = settings.model_copy(update={"runtime": "onnxruntime", "precision": "auto"})
    with TestClient(create_app(chosen)) as client:  # the app loads the model itself
        info = client.get("/v1/info").json()
        text = client.get("/metrics").text
    assert (info["runtime"], info["precision"]) == ("onnxruntime", "fp32")  # fp32 only
    run = {"runtime": "onnxruntime", "precision": "fp32"}
    assert info["towers"] == {"text": run, "image": run}
    model = {"device": "cpu", "model_id": f"{TINY_MODEL}/random-init", "precision": "fp32"}
    assert metric_value(text, "xmr_model_info", **model, runtime="onnxruntime") == 1
