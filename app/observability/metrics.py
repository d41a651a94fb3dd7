"""Prometheus metrics of one app: requests, encoder batches and queues, index sizes.

Each app has its own registry (no process globals), so tests and several apps in one process
never share counters. Queue depths and index sizes are read from the services at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.services.batcher import BatchTimes
from app.services.query_cache import QueryCacheStats
from index import IndexInfo, Kind
from models.tower_run import TOWERS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "xmr_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "xmr_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "xmr_encode_batch_size",
            "Items per model call, by modality",
            ["modality"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "xmr_encode_batch_duration_seconds",
            "Time of one model call, by modality",
            ["modality"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "xmr_encode_model_duration_seconds",
            "Time of one model call on the inference thread alone, by modality (the batch "
            "duration less the hand-off to that thread and back)",
            ["modality"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._state: StateCollector | None = None

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def observe_batch(self, batch: BatchTimes) -> None:
        self.batch_size.labels(batch.modality).observe(batch.items)
        self.batch_seconds.labels(batch.modality).observe(batch.seconds)
        self.model_seconds.labels(batch.modality).observe(batch.model_seconds)

    def watch(self, state: Callable[[], ServiceState]) -> None:
        """Report the service's live state at every scrape (until `unwatch`)."""
        self.unwatch()
        self._state = StateCollector(state)
        self.registry.register(self._state)

    def unwatch(self) -> None:
        if self._state is not None:
            self.registry.unregister(self._state)
            self._state = None

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class CollectionGauges:
    name: str
    model_id: str
    indexes: dict[Kind, IndexInfo]


@dataclass(frozen=True)
class ServiceState:
    """What a scrape reports besides the counters.

    models: labels of each loaded model (model_id, device, runtime, precision);
    queues: (model_id, modality) -> items waiting; collections: each one's model and indexes;
    query_caches: model_id -> its query cache's counts.
    """

    models: list[dict[str, str]] = field(default_factory=list)
    queues: dict[tuple[str, str], int] = field(default_factory=dict)
    query_caches: dict[str, QueryCacheStats] = field(default_factory=dict)
    collections: list[CollectionGauges] = field(default_factory=list)


def query_cache_metrics(caches: dict[str, QueryCacheStats]) -> Iterator[Metric]:
    """Each loaded model's query cache: hits and misses since it loaded, entries and bytes."""
    lookups = CounterMetricFamily(
        "xmr_query_cache_lookups",
        "Query texts looked up in a model's query cache, by result",
        labels=["model_id", "result"],
    )
    entries = GaugeMetricFamily(
        "xmr_query_cache_entries", "Query vectors a model's cache holds", labels=["model_id"]
    )
    size = GaugeMetricFamily(
        "xmr_query_cache_bytes", "What a model's query cache holds, in bytes", labels=["model_id"]
    )
    for model_id, stats in caches.items():
        lookups.add_metric([model_id, "hit"], stats.hits)
        lookups.add_metric([model_id, "miss"], stats.misses)
        entries.add_metric([model_id], stats.entries)
        size.add_metric([model_id], stats.bytes)
    yield from (lookups, entries, size)


class StateCollector(Collector):
    def __init__(self, state: Callable[[], ServiceState]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        model = GaugeMetricFamily(
            "xmr_model_info",
            "A loaded model, and how it runs",
            labels=["device", "model_id", "precision", "runtime"],
        )
        for labels in state.models:
            model.add_metric([labels[k] for k in ("device", "model_id", "precision", "runtime")], 1)
        yield model
        tower = GaugeMetricFamily(
            "xmr_model_tower_info",
            "How each tower of a loaded model runs: its runtime and precision",
            labels=["model_id", "tower", "runtime", "precision"],
        )
        for labels in state.models:
            for name in TOWERS:
                tower.add_metric(
                    [
                        labels["model_id"],
                        name,
                        labels[f"{name}_runtime"],
                        labels[f"{name}_precision"],
                    ],
                    1,
                )
        yield tower
        queue = GaugeMetricFamily(
            "xmr_encode_queue_depth",
            "Items waiting for a model's encoder",
            labels=["model_id", "modality"],
        )
        for (model_id, modality), depth in state.queues.items():
            queue.add_metric([model_id, modality], depth)
        yield queue
        yield from query_cache_metrics(state.query_caches)
        collections = GaugeMetricFamily(
            "xmr_collection_info",
            "A collection and the model of its vectors",
            labels=["collection", "model_id"],
        )
        vectors = GaugeMetricFamily(
            "xmr_index_vectors",
            "Searchable vectors per index",
            labels=["collection", "kind", "structure"],
        )
        building = GaugeMetricFamily(
            "xmr_index_building",
            "1 while an index is rebuilt in the background",
            labels=["collection", "kind"],
        )
        for collection in state.collections:
            collections.add_metric([collection.name, collection.model_id], 1)
            for kind, info in collection.indexes.items():
                vectors.add_metric([collection.name, kind, info.spec], info.size)
                building.add_metric([collection.name, kind], 1 if info.building else 0)
        yield collections
        yield vectors
        yield building
