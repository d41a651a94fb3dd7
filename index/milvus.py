"""The vector index on Milvus (pymilvus): Milvus Lite for a local file, or a Milvus server.

Same contract as FaissVectorIndex: int64 labels from the record store, inner-product (cosine)
search over unit vectors, candidates restricted inside the search. One collection per kind and
model, so that vectors of another model are never mixed in. Milvus keeps the vectors itself
(no snapshots); the record store stays the source of truth and `reconcile` brings a collection
back in line with it at start-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from index.errors import ModelMismatchError, StorageError, VectorStoreUnavailableError
from index.types import check_labels, check_vectors

MILVUS_SPEC = "milvus"
_LOGICAL_BITS = 18  # of a Milvus hybrid timestamp, below its physical milliseconds
_READ_RETRY_PAUSE_S = 0.2
_IN_CHUNK = 1000  # labels per `label in [...]` expression when deleting or listing


def collection_name(kind: str, model_id: str, namespace: str = "") -> str:
    """`xmr_<kind>_<digest>`: the digest of the model, and of the xmr collection if not default."""
    key = model_id if not namespace else f"{namespace}\0{model_id}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"xmr_{kind}_{digest}"


def is_local(uri: str) -> bool:
    """A file path (Milvus Lite) rather than an http(s) address of a Milvus server."""
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


class MilvusVectorIndex:
    """One Milvus collection: label (primary key) and vector; exact search on Milvus Lite."""

    spec = MILVUS_SPEC
    deleted_fraction = 0.0

    def __init__(self, client: Any, name: str, d: int, exact: bool = True) -> None:
        self.d = d
        self.exact = exact  # Milvus Lite's FLAT; a server's AUTOINDEX is approximate
        self._client = client
        self._name = name
        self._lock = threading.Lock()
        # Milvus timestamps: of this index's own last write, and the newest any process sharing
        # the server acknowledged. A search waits until Milvus shows that one, not "now":
        # Strong consistency waits for the server's next time tick on every search
        # (BENCHMARKS.md: ~600 ms on Milvus 2.3 standalone against ~5 ms)
        self.write_mark = 0
        self._read_mark = hybrid_now()  # opened: sees what was written before, whoever wrote it

    @classmethod
    def open(
        cls,
        uri: str,
        kind: str,
        model_id: str,
        d: int,
        token: str | None = None,
        namespace: str = "",
    ) -> MilvusVectorIndex:
        """Connect and create the collection if needed; refuse one of another dimension."""
        from pymilvus import MilvusClient, MilvusException

        try:
            client = MilvusClient(uri, token=token or "")
            name = collection_name(kind, model_id, namespace)
            if not client.has_collection(name):
                _create_collection(client, name, model_id, d, exact=is_local(uri))
            dim = _collection_dim(client.describe_collection(name))
            if dim != d:
                raise ModelMismatchError(f"Milvus collection {name} has dim {dim}, not {d}")
            _load(client, name)
        except MilvusException as e:
            raise StorageError(f"Milvus at {uri} cannot be used: {e.message}") from e
        return cls(client, name, d, exact=is_local(uri))

    def __len__(self) -> int:
        rows = self._loaded(
            "count",
            lambda: self._client.query(
                self._name, filter="", output_fields=["count(*)"], **self._consistency()
            ),
        )
        return int(rows[0]["count(*)"])

    @property
    def stored(self) -> int:
        return len(self)

    def add(self, labels: np.ndarray | list[int], xb: np.ndarray) -> None:
        xb = check_vectors(xb, self.d)
        ids = check_labels(labels, xb.shape[0])
        if ids.size == 0:
            return
        rows = [{"label": int(i), "vector": v} for i, v in zip(ids, xb.tolist(), strict=True)]
        with self._lock, _unavailable_mapped("write to"):
            self._client.upsert(self._name, rows)
            self._note_write()

    def remove(self, labels: np.ndarray | list[int]) -> int:
        ids = [int(x) for x in check_labels(labels)]
        removed = 0
        with self._lock, _unavailable_mapped("delete from"):
            before = self._last_write_ts()
            for start in range(0, len(ids), _IN_CHUNK):
                result = self._client.delete(self._name, ids=ids[start : start + _IN_CHUNK])
                removed += _deleted_count(result)
            if ids:
                # Milvus 2.3 gives a delete no timestamp: the time now stands in for it
                after = self._last_write_ts()
                self.write_mark = max(self.write_mark, after if after > before else hybrid_now())
        return removed

    def _note_write(self) -> None:
        """Keep the timestamp Milvus gave this client's last write to the collection."""
        self.write_mark = max(self.write_mark, self._last_write_ts())

    def _last_write_ts(self) -> int:
        from pymilvus.client import ts_utils

        # pymilvus keeps it per server address for its own Session consistency
        address = self._client._get_connection().server_address
        return int(ts_utils.get_collection_ts(self._name, address, "") or 0)

    def _loaded(self, doing: str, request: Callable[[], Any]) -> Any:
        """Run a read; a collection the server released (a Milvus Lite server restarted) is
        loaded again, and a dropped connection waited for, and the read repeated once."""
        from pymilvus import MilvusException

        with _unavailable_mapped(doing):
            try:
                return request()
            except MilvusException as e:
                message = str(e.message).lower()
                if "load" in message:
                    self._client.load_collection(self._name)
                elif "connect" in message or "unavailable" in message:
                    # a server that sent the client away (Milvus Lite's, for pinging it too
                    # often) is usually back at once: a read is asked again, once
                    time.sleep(_READ_RETRY_PAUSE_S)
                else:
                    raise
                return request()

    def show_writes_up_to(self, mark: int) -> None:
        self._read_mark = max(self._read_mark, mark)

    def _consistency(self) -> dict[str, Any]:
        """Wait for the newest write known to be acknowledged (1: nothing to wait for)."""
        mark = max(self._read_mark, self.write_mark, 1)
        return {"consistency_level": "Customized", "guarantee_timestamp": mark}

    def search(
        self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None, widen: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query as (scores, labels), padded with -inf / -1 like FAISS."""
        xq = check_vectors(xq, self.d)
        if k < 1:
            raise ValueError("k must be at least 1")
        scores = np.full((xq.shape[0], k), -np.inf, dtype=np.float32)
        found = np.full((xq.shape[0], k), -1, dtype=np.int64)
        where = ""
        if allowed is not None:
            if len(allowed) == 0:
                return scores, found
            where = f"label in [{','.join(str(int(x)) for x in allowed)}]"
        results = self._loaded(
            "search",
            lambda: self._client.search(
                self._name,
                data=xq.tolist(),
                limit=min(k, 16_384),  # Milvus's own cap on topk
                filter=where,
                output_fields=[],
                search_params={"metric_type": "IP"},
                **self._consistency(),
            ),
        )
        for row, hits in enumerate(results):
            for column, hit in enumerate(hits):
                scores[row, column] = float(hit["distance"])
                found[row, column] = _hit_label(hit)
        return scores, found

    def labels(self) -> np.ndarray:
        labels: list[int] = []
        iterator = self._loaded(
            "list",
            lambda: self._client.query_iterator(
                self._name, batch_size=10_000, filter="", output_fields=["label"]
            ),
        )
        with _unavailable_mapped("list"):
            while rows := iterator.next():
                labels += [int(r["label"]) for r in rows]
            iterator.close()
        return np.array(labels, dtype=np.int64)

    def drop(self) -> None:
        """Delete the Milvus collection with its vectors (its xmr collection is being removed)."""
        from pymilvus import MilvusException

        try:
            with self._lock:
                self._client.drop_collection(self._name)
        except MilvusException as e:
            raise StorageError(f"Milvus could not drop {self._name}: {e.message}") from e

    def close(self) -> None:
        self._client.close()


@contextlib.contextmanager
def _unavailable_mapped(doing: str) -> Iterator[None]:
    """A Milvus that fails a request is a passing condition for the caller (503, retried)."""
    from pymilvus import MilvusException

    try:
        yield
    except MilvusException as e:
        raise VectorStoreUnavailableError(f"Milvus could not {doing}: {e.message}") from e


def _create_collection(client: Any, name: str, model_id: str, d: int, exact: bool) -> None:
    """Create the collection, unless another process sharing the server just did."""
    from pymilvus import DataType, MilvusClient, MilvusException

    schema = MilvusClient.create_schema(auto_id=False, description=model_id)
    schema.add_field("label", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=d)
    params = client.prepare_index_params()
    # Milvus Lite searches FLAT exactly; a server picks its own index (AUTOINDEX)
    params.add_index("vector", index_type="FLAT" if exact else "AUTOINDEX", metric_type="IP")
    try:
        client.create_collection(
            name, schema=schema, index_params=params, consistency_level="Strong"
        )
    except MilvusException:
        if not client.has_collection(name):  # not a race with another replica: a real failure
            raise


def _load(client: Any, name: str, wait_s: float = 10.0) -> None:
    """Load the collection for search; one another process is still creating (its index not
    made yet) is waited for."""
    from pymilvus import MilvusException

    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.load_collection(name)
            return
        except MilvusException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def hybrid_now() -> int:
    """Now as a Milvus hybrid timestamp: milliseconds since 1970 above 18 logical bits (with
    the server's clock in step with this one)."""
    return int(time.time() * 1000) << _LOGICAL_BITS


def _hit_label(hit: Any) -> int:
    """A hit's primary key: under its field's name from Milvus 2.4 on, under `id` from 2.3."""
    label = hit.get("label")
    return int(hit["id"] if label is None else label)


def _deleted_count(result: Any) -> int:
    """How many rows a delete removed: a count from Milvus 2.4 on, the list of keys from 2.3."""
    if isinstance(result, dict):
        return int(result.get("delete_count", 0))
    if isinstance(result, list):
        return len(result)
    return int(getattr(result, "delete_count", 0))


def _collection_dim(description: dict[str, Any]) -> int:
    for field in description.get("fields", []):
        if field.get("name") == "vector":
            return int(field.get("params", {}).get("dim", 0))
    return 0
