"""A Python client for the xmr HTTP API (httpx), with one method per endpoint."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np


class XmrError(Exception):
    """The server answered with an error status; `status` and the server's `detail` are kept."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


ImageArg = bytes | str | Path


class XmrClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 120.0,
        http: httpx.Client | None = None,
        collection: str | None = None,
    ) -> None:
        """Talk to `base_url`, or through `http` (any httpx.Client, e.g. a FastAPI TestClient).

        `collection`: the data calls act on it; by default on the server's `default` collection.
        """
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = http or httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self._data = (
            "/v1" if collection is None else f"/v1/collections/{quote(collection, safe='')}"
        )

    def __enter__(self) -> XmrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- collections ------------------------------------------------------------------------
    def collections(self) -> list[dict[str, Any]]:
        return self._json(self._http.get("/v1/collections"))["collections"]

    def collection(self, name: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/collections/{quote(name, safe='')}"))

    def create_collection(
        self, name: str, model: str, pretrained: str | None = None, precision: str = "auto"
    ) -> dict[str, Any]:
        body = {"name": name, "model": model, "pretrained": pretrained, "precision": precision}
        return self._json(self._http.post("/v1/collections", json=body))

    def delete_collection(self, name: str) -> None:
        response = self._http.delete(f"/v1/collections/{quote(name, safe='')}")
        if response.status_code != 204:
            self._json(response)

    def reindex_collection(
        self, name: str, model: str, pretrained: str | None = None, precision: str = "auto"
    ) -> str:
        """Start re-embedding `name` with another model; returns the job's id."""
        body = {"model": model, "pretrained": pretrained, "precision": precision}
        path = f"/v1/collections/{quote(name, safe='')}/reindex"
        return self._json(self._http.post(path, json=body))["job_id"]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.delete(f"/v1/jobs/{job_id}"))

    # -- calls ------------------------------------------------------------------------------
    def health(self) -> bool:
        return self._http.get("/healthz").status_code == 200

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.ready():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"xmr at {self._http.base_url} was not ready within {timeout_s:.0f}s")

    def info(self) -> dict[str, Any]:
        return self._json(self._http.get("/v1/info"))

    def index_images(
        self,
        images: Sequence[ImageArg],
        ids: Sequence[str | None] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[str]:
        files, data = _multipart(images, ids, metadata)
        return self._json(self._http.post(f"{self._data}/images", files=files, data=data))["ids"]

    def index_texts(self, items: Sequence[dict[str, Any]]) -> list[str]:
        return self._json(self._http.post(f"{self._data}/texts", json={"items": list(items)}))[
            "ids"
        ]

    def submit_batch(self, items: Sequence[dict[str, Any]]) -> str:
        return self._json(self._http.post(f"{self._data}/batch", json={"items": list(items)}))[
            "job_id"
        ]

    def submit_batch_files(
        self,
        images: Sequence[ImageArg],
        ids: Sequence[str | None] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> str:
        """Upload images as one background batch job; returns its job id."""
        files, data = _multipart(images, ids, metadata)
        return self._json(self._http.post(f"{self._data}/batch", files=files, data=data))["job_id"]

    def wait_for_job(
        self,
        job_id: str,
        poll_s: float = 0.2,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll a job until it ends (see `wait_for_job`); its final state."""
        return wait_for_job(lambda: self.job(job_id), poll_s, on_update, timeout_s)

    def lookup_hashes(self, digests: Sequence[str]) -> dict[str, str]:
        """Which SHA-256 digests of image bytes are indexed already: digest -> id."""
        if not digests:
            return {}
        body = {"sha256": list(digests)}
        return self._json(self._http.post(f"{self._data}/items/lookup", json=body))["found"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def search_text(
        self,
        query: str,
        k: int = 10,
        target: str = "images",
        where: dict[str, Any] | None = None,
        offset: int = 0,
        min_score: float | None = None,
        mode: str = "vector",
        alpha: float = 0.5,
        fusion: str = "relative",
    ) -> dict[str, Any]:
        """`where`: metadata conditions (see the README's filters); `offset` pages; only hits
        scoring at least `min_score` come back; `mode` vector, keyword or hybrid (`alpha`: the
        vector side's weight, `fusion`: relative or rrf)."""
        params = {"q": query, "k": k, "target": target, "offset": offset, "mode": mode}
        if mode == "hybrid":
            params.update(alpha=alpha, fusion=fusion)
        return self._json(
            self._http.get(f"{self._data}/search/text", params=_with(params, where, min_score))
        )

    def search_image(
        self,
        image: ImageArg,
        k: int = 10,
        target: str = "texts",
        where: dict[str, Any] | None = None,
        offset: int = 0,
        min_score: float | None = None,
    ) -> dict[str, Any]:
        data = _with({"k": k, "target": target, "offset": offset}, where, min_score)
        response = self._http.post(
            f"{self._data}/search/image",
            files={"file": _file_part(image, 0)},
            data={name: str(value) for name, value in data.items()},
        )
        return self._json(response)

    def search_texts(
        self, queries: Sequence[str], k: int = 10, target: str = "images"
    ) -> dict[str, Any]:
        """Several text queries in one request: `results` holds one ranked list per query."""
        body = {"queries": list(queries), "k": k, "target": target}
        return self._json(self._http.post(f"{self._data}/search/text/batch", json=body))

    def search_images(
        self, images: Sequence[ImageArg], k: int = 10, target: str = "texts"
    ) -> dict[str, Any]:
        files = [("files", _file_part(image, n)) for n, image in enumerate(images)]
        response = self._http.post(
            f"{self._data}/search/image/batch", files=files, data={"k": str(k), "target": target}
        )
        return self._json(response)

    def duplicates(
        self,
        threshold: float = 0.95,
        target: str = "images",
        where: dict[str, Any] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Near-duplicate groups: the answer, or (over the server's sync limit) a `job_id`
        whose finished job's `result` holds the same."""
        params = {"threshold": threshold, "target": target, "limit": limit, "offset": offset}
        return self._json(self._http.get(f"{self._data}/duplicates", params=_with(params, where)))

    def tag_items(
        self,
        labels: Sequence[str],
        field: str,
        template: str | None = None,
        where: dict[str, Any] | None = None,
        target: str = "images",
    ) -> str:
        """Start a job writing each item's best zero-shot label into metadata `field`."""
        body = {
            "labels": list(labels),
            "field": field,
            "template": template,
            "filter": where,
            "target": target,
        }
        return self._json(self._http.post(f"{self._data}/classify/tag", json=body))["job_id"]

    def get_item(self, item_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"{self._data}/items/{quote(item_id, safe='')}"))

    def item_content(self, item_id: str) -> bytes:
        """The stored image bytes, or the text as UTF-8."""
        response = self._http.get(f"{self._data}/items/{quote(item_id, safe='')}/content")
        if response.status_code >= 400:
            self._json(response)  # raises XmrError with the server's detail
        return response.content

    def delete_item(self, item_id: str) -> None:
        response = self._http.delete(f"{self._data}/items/{quote(item_id, safe='')}")
        if response.status_code != 204:
            self._json(response)

    def embed_images(self, images: Sequence[ImageArg]) -> list[list[float]]:
        files, _ = _multipart(images, None, None)
        return self._json(self._http.post(f"{self._data}/embed/image", files=files))["embeddings"]

    def submit_vectors(self, vectors: np.ndarray, items: Sequence[dict[str, Any]]) -> str:
        """Vectors made elsewhere, one row an item ({id, kind?, text?, metadata?}), as one
        background job of the server; returns its job id."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(vectors))
        files = {"vectors": ("vectors.npy", buffer.getvalue(), "application/octet-stream")}
        data = {"items": json.dumps(list(items))}
        return self._json(self._http.post(f"{self._data}/vectors", files=files, data=data))[
            "job_id"
        ]

    def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        return self._json(self._http.post(f"{self._data}/embed/text", json={"texts": list(texts)}))[
            "embeddings"
        ]

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise XmrError(
                response.status_code, detail if isinstance(detail, str) else json.dumps(detail)
            )
        return response.json()


def wait_for_job(
    read_job: Callable[[], dict[str, Any]],
    poll_s: float = 0.2,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Read a job every `poll_s` until it is no longer queued or running; its final state.
    `on_update` sees every state read; past `timeout_s` a TimeoutError says how it stands."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        job = read_job()
        if on_update is not None:
            on_update(job)
        if job["status"] not in ("queued", "running"):
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job.get('job_id')} still {job['status']} after {timeout_s} s")
        time.sleep(poll_s)


def _with(
    params: dict[str, Any], where: dict[str, Any] | None, min_score: float | None = None
) -> dict[str, Any]:
    """`params` and the optional filter (as JSON) and score cutoff, where given."""
    if where is not None:
        params = {**params, "filter": json.dumps(where)}
    if min_score is not None:
        params = {**params, "min_score": min_score}
    return params


def _multipart(
    images: Sequence[ImageArg],
    ids: Sequence[str | None] | None,
    metadata: Sequence[dict[str, Any] | None] | None,
) -> tuple[list[tuple[str, tuple[str, bytes, str]]], dict[str, str]]:
    """The `files` parts and the `ids`/`metadata` form fields of an image upload."""
    data: dict[str, str] = {}
    if ids is not None:
        data["ids"] = json.dumps(list(ids))
    if metadata is not None:
        data["metadata"] = json.dumps(list(metadata))
    return [("files", _file_part(image, n)) for n, image in enumerate(images)], data


def _file_part(image: ImageArg, position: int) -> tuple[str, bytes, str]:
    if isinstance(image, bytes):
        return (f"image-{position}", image, "application/octet-stream")
    path = Path(image)
    return (path.name, path.read_bytes(), "application/octet-stream")
