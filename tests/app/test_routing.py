"""How the app holds its routes: each one its own, with its whole path and every option its
module gave it, under both mountings of the data routes."""

from __future__ import annotations

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route


def test_every_route_is_held_by_the_app_itself(client: TestClient) -> None:
    # an included router is a branch FastAPI walks twice per level and request (app.routers)
    kinds = {type(route) for route in client.app.router.routes}  # type: ignore[attr-defined]
    assert kinds <= {APIRoute, Route, Mount}, kinds
    paths = [route.path for route in client.app.router.routes]  # type: ignore[attr-defined]
    assert {"/v1/search/text", "/v1/collections/{collection}/search/text", "/healthz"} <= set(paths)


def test_the_answers_a_route_declares_are_documented_under_both_mountings(
    client: TestClient,
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for base in ("/v1", "/v1/collections/{collection}"):
        duplicates = paths[f"{base}/duplicates"]["get"]["responses"]
        assert duplicates["202"]["description"] == "too many items: a job finds them"
        thumbnail = paths[f"{base}/items/{{item_id}}/thumbnail"]["get"]["responses"]
        assert "304" in thumbnail


def test_copies_keep_their_options(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/" not in spec["paths"]  # the page is left out of the schema, as its router says
    search = spec["paths"]["/v1/search/text"]["get"]
    in_collection = spec["paths"]["/v1/collections/{collection}/search/text"]["get"]
    assert search["tags"] == in_collection["tags"] == ["search"]
    assert in_collection["operationId"].endswith("_in_collection")
    assert in_collection["operationId"] != search["operationId"]
    assert any(p["name"] == "collection" for p in in_collection["parameters"])
    assert client.get("/v1/collections/nosuch/search/text?q=x").status_code == 404
    for base in ("/v1", "/v1/collections/default"):
        assert client.get(f"{base}/search/text", params={"q": "a red circle"}).status_code == 200
