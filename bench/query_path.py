"""Where a text query's time goes beyond the model, at concurrency 1.

    .venv/bin/python -m bench.query_path --json-out bench/query-path-cpu.json

One server (XMR_RUNTIME as set, default auto) with 64 images indexed; each figure is the p50 of
`--requests` sequential requests per client, interleaved in rounds so that drift hits all
alike. Two clients take turns, request by request: the standard library's http.client on one
kept-alive connection (the headline figures: it costs little in Python itself, so they are
mostly the server's) and httpx (under `httpx`, with what it costs over http.client on the
same empty route: `its_own_cost_ms`, the client's share of any figure measured with it).
The kinds:
- GET /healthz: HTTP and the whole middleware stack, nothing else (the floor);
- POST /v1/embed/text with one query: + the route, tokenizing, the batcher's hand-off to the
  inference thread, the encode and 512 floats of JSON;
- GET /v1/search/text: + the search and the records of its hits.
The query cache is off (XMR_QUERY_CACHE_MB=0: every query text differs anyway); with
`--query-cache-mb N` it is on and one more kind asks one text again and again (all hits but the
first): `search_text_cached`.
Then, with the server stopped, the raw encode of the same texts on a thread set up like the
server's inference thread (tokenizing included, as the server's encode does): back to back,
and paced (`--raw-pause-ms` between calls, as a server's calls come). The differences
are the breakdown; `over_raw_ms` is the search's p50 less the raw encode's.
The server's own metrics over the same requests give means inside the app (from the outermost
middleware's start to its end) per route, and of the text model calls as the batcher times
them (its hops to the inference thread and back included) and of the encodes alone (timed on
the inference thread): what is left of a route's time beyond the model call is the event
loop's share. Each response's Server-Timing header says how long the model took for it: the
p50 of each request's time at the client less its model time is the query path's cost over the
model in one server (`over_the_model_in_the_server_ms`; tokenizing is in it, as in the raw
encode), which the machine's drift between the server's run and the raw encode's cannot
bend. The same header's index time splits each request further, by the lean client
(`server_timing_shares_p50_ms`, per kind, the p50 of each part, so they need not add up to
the total's p50): the model, the index (the search and the reads of its records on a store
thread), the rest of the app (the service's own Python on the event loop and the hand-offs
between threads) and what lies outside the app (HTTP, the network, the client). Last,
tokenizing one query on this process's main thread (as the server's event loop does) with its
caches warm (in a loop) and right after a model call on the inference thread: the same Python
code, a few times slower once the model has run through the caches; and the token rows of one
query with open_clip's clean (ftfy on every text) against the encoder's (ftfy skipped on
printable ASCII), taking turns after model calls.

With `--baseline-tree DIR` (a checkout of other code, e.g. `git worktree add /tmp/old HEAD~1`)
a second server runs that code beside this one's, and the rounds alternate between the two: a
before and after from one run, which on a machine whose speed drifts by half between runs is
the only comparison worth reading. Its figures are under `baseline`. The servers take turns
request by request, so each model call finds the caches full of the other server's weights:
the model calls and the totals are slower than with one server, alike for both; read the
difference between the two, not the figures against the raw encode.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import open_clip
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.services.threads import inference_pool
from bench.report import benchmark_parser, emit
from bench.run import REPO, free_port, query, stop, text_query_p50_ms, wait_http, write_images
from bench.runtimes import cpu_flags
from models import OpenClipEncoder
from models.options import LoadOptions
from models.text import skip_ftfy_on_plain_text, token_rows
from models.threads import use_threads
from xmr.client import XmrClient

ROUNDS = 5


@dataclass(frozen=True)
class Ask:
    """One kind of request: its method and path, and the n-th request's query and JSON body."""

    method: str
    path: str
    params: Callable[[int], dict[str, Any]] = lambda n: {}
    body: Callable[[int], Any] | None = None


REQUESTS: dict[str, Ask] = {
    "healthz": Ask("GET", "/healthz"),
    "embed_text": Ask("POST", "/v1/embed/text", body=lambda n: {"texts": [query(n)]}),
    "search_text": Ask("GET", "/v1/search/text", params=lambda n: {"q": query(n), "k": 10}),
}
CACHED: dict[str, Ask] = {
    "search_text_cached": Ask("GET", "/v1/search/text", params=lambda n: {"q": query(0), "k": 10}),
}


class HttpxClient:
    """httpx, as an application in Python would call the service."""

    name = "httpx"

    def __init__(self, base: str) -> None:
        self._http = httpx.Client(base_url=base, timeout=60)

    def send(self, ask: Ask, n: int) -> dict[str, float]:
        body = ask.body(n) if ask.body else None
        response = self._http.request(ask.method, ask.path, params=ask.params(n), json=body)
        response.raise_for_status()
        return server_timings(response.headers.get("server-timing"))

    def close(self) -> None:
        self._http.close()


class StdlibClient:
    """The standard library's http.client on one kept-alive connection: the same requests at a
    small part of httpx's own cost in Python, so that what it measures is mostly the server."""

    name = "http.client"

    def __init__(self, base: str) -> None:
        address = urlsplit(base)
        self._connection = http.client.HTTPConnection(
            address.hostname or "127.0.0.1", address.port, timeout=60
        )

    def send(self, ask: Ask, n: int) -> dict[str, float]:
        params = ask.params(n)
        target = f"{ask.path}?{urlencode(params)}" if params else ask.path
        headers = {"content-type": "application/json"} if ask.body else {}
        body = json.dumps(ask.body(n)).encode() if ask.body else None
        self._connection.request(ask.method, target, body=body, headers=headers)
        response = self._connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{ask.method} {target}: {response.status} {data[:200]!r}")
        return server_timings(response.getheader("server-timing"))

    def close(self) -> None:
        self._connection.close()


CLIENTS = (StdlibClient, HttpxClient)


def server_timings(header: str | None) -> dict[str, float]:
    """The milliseconds of a response's Server-Timing header by name (model, index, app)."""
    found = {}
    for entry in (header or "").split(","):
        name, _, duration = entry.strip().partition(";dur=")
        if duration:
            found[name] = float(duration)
    return found


def shares_ms(elapsed: float, timing: dict[str, float]) -> dict[str, float]:
    """One request's time in parts: the model's and the index's (as the server timed them on
    their threads), the rest of the app's (the service's own Python and its hand-offs between
    threads), and what the client measured outside the app (HTTP, the network, the client)."""
    model, index = timing.get("model", 0.0), timing.get("index", 0.0)
    app = timing.get("app", elapsed)
    return {
        "model": model,
        "index": index,
        "app_beyond_model_and_index": app - model - index,
        "outside_the_app": elapsed - app,
    }


ROUTES = {"healthz": "/healthz", "embed_text": "/v1/embed/text", "search_text": "/v1/search/text"}


def server_seconds(metrics: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the app's own timings in a /metrics scrape: each route's time inside the
    outermost middleware, the text model calls (the batcher's hop to the inference thread, the
    encode, the hop back) and the encodes alone (timed on the inference thread)."""
    found: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = sample.labels
            if family.name == "xmr_http_request_duration_seconds" and labels.get("method") in (
                "GET",
                "POST",
            ):
                key = f"route {labels['route']}"
            elif family.name == "xmr_encode_batch_duration_seconds":
                key = f"model {labels['modality']}"
            elif family.name == "xmr_encode_model_duration_seconds":
                key = f"model alone {labels['modality']}"
            else:
                continue
            total, count = found.get(key, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                found[key] = (sample.value, count)
            elif sample.name.endswith("_count"):
                found[key] = (total, sample.value)
    return found


def mean_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], key: str
) -> float:
    total = after[key][0] - before.get(key, (0.0, 0.0))[0]
    count = after[key][1] - before.get(key, (0.0, 0.0))[1]
    return round(total / count * 1000, 2)


Samples = dict[str, dict[str, dict[str, list[float]]]]  # server -> client -> kind -> ms


def empty_samples(
    clients: dict[str, list[StdlibClient | HttpxClient]], kinds: dict[str, Ask]
) -> Samples:
    return {
        server: {client.name: {name: [] for name in kinds} for client in pair}
        for server, pair in clients.items()
    }


def timed_rounds(bases: dict[str, str], per_round: int, cached: bool) -> dict[str, Any]:
    """Per server (name -> base URL) and client: p50 ms of each request kind, `ROUNDS` rounds
    of `per_round` each, the kinds interleaved by round, the servers and clients request by
    request, so that the machine's drift hits all alike; and the means each server's own
    metrics give for the same requests."""
    kinds = REQUESTS | (CACHED if cached else {})
    clients: dict[str, list[StdlibClient | HttpxClient]] = {
        server: [make(base) for make in CLIENTS] for server, base in bases.items()
    }
    times = empty_samples(clients, kinds)
    # the same requests' time beyond the model's (Server-Timing), where a server reports it
    beyond = empty_samples(clients, kinds)
    shares: dict[str, dict[str, list[dict[str, float]]]] = {
        server: {name: [] for name in kinds} for server in clients
    }
    before: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        for server, pair in clients.items():
            for ask in kinds.values():  # warm-up: every text length bucket is compiled
                for n in range(20):
                    for client in pair:
                        client.send(ask, n)
            before[server] = server_seconds(httpx.get(f"{bases[server]}/metrics").text)
        for round_ in range(ROUNDS):
            for name, ask in kinds.items():
                for n in range(round_ * per_round, (round_ + 1) * per_round):
                    for server, pair in clients.items():  # servers and clients take turns
                        for client in pair:
                            started = time.perf_counter()
                            timing = client.send(ask, n)
                            elapsed = (time.perf_counter() - started) * 1000
                            times[server][client.name][name].append(elapsed)
                            if "model" in timing:
                                beyond[server][client.name][name].append(elapsed - timing["model"])
                            if client.name == StdlibClient.name and "app" in timing:
                                shares[server][name].append(shares_ms(elapsed, timing))
        figures: dict[str, Any] = {}
        for server, by_client in times.items():
            after = server_seconds(httpx.get(f"{bases[server]}/metrics").text)
            ahead = before[server]
            figures[server] = {
                client: {name: round(statistics.median(v), 2) for name, v in by_kind.items()}
                for client, by_kind in by_client.items()
            }
            figures[server]["over_the_model"] = {
                client: {
                    name: round(statistics.median(v), 2)
                    for name, v in by_kind.items()
                    if v and len(v) == len(times[server][client][name])
                }
                for client, by_kind in beyond[server].items()
            }
            figures[server]["server_timing_shares_p50_ms"] = {
                name: {
                    part: round(statistics.median(s[part] for s in samples), 3)
                    for part in samples[0]
                }
                for name, samples in shares[server].items()
                if samples
            }
            figures[server]["server_means_ms"] = {
                **{
                    f"inside_app_{n}": mean_ms(ahead, after, f"route {r}")
                    for n, r in ROUTES.items()
                },
                "text_model_call": mean_ms(ahead, after, "model text"),
                # not in the metrics of a baseline tree from before the model's own timing
                **(
                    {"text_model_alone": mean_ms(ahead, after, "model alone text")}
                    if "model alone text" in after
                    else {}
                ),
            }
        return figures
    finally:
        for pair in clients.values():
            for client in pair:
                client.close()


@contextlib.contextmanager
def serving(args: Any, root: Path, paths: list[Path], tree: Path) -> Iterator[str]:
    """A server of the code in `tree` with `paths` indexed, on its own data folder: its base URL."""
    port = free_port()
    data = root / f"data-{port}"
    env = os.environ | {
        "PYTHONPATH": str(tree),
        "XMR_MODEL": args.model,
        "XMR_PRETRAINED": args.pretrained,
        "XMR_DEVICE": "cpu",
        "XMR_RUNTIME": args.runtime,
        "XMR_RUNTIME_CACHE_DIR": str(root / "runtime-cache"),
        "XMR_DATA_DIR": str(data),
        "XMR_IMPORT_ROOT": str(paths[0].parent),
        "XMR_PORT": str(port),
        "XMR_LOG_LEVEL": "warning",
        "XMR_QUERY_CACHE_MB": str(args.query_cache_mb),
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=tree, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz")
        with XmrClient(base) as client:
            job = client.submit_batch([{"image_path": p.name} for p in paths])
            client.wait_for_job(job, poll_s=0.2)
        yield base
    finally:
        stop(process)


def through_http(args: Any, root: Path, paths: list[Path]) -> dict[str, Any]:
    """This tree's server, and the baseline tree's beside it when one is given."""
    trees = {"this": REPO} | ({"baseline": args.baseline_tree} if args.baseline_tree else {})
    with contextlib.ExitStack() as stack:
        bases = {
            name: stack.enter_context(serving(args, root, paths, tree))
            for name, tree in trees.items()
        }
        info = httpx.get(f"{bases['this']}/v1/info").json()
        cached = args.query_cache_mb > 0
        figures = timed_rounds(bases, args.requests // ROUNDS, cached)
    return {"runtime": info["runtime"], "precision": info["precision"], **figures}


def raw_encode(args: Any, root: Path, repeats: int) -> dict[str, float]:
    pool = inference_pool()
    try:
        options = LoadOptions(
            device="cpu", runtime=args.runtime, runtime_cache_dir=root / "runtime-cache"
        )
        encoder = pool.submit(OpenClipEncoder.load, args.model, args.pretrained, options).result()

        return {
            "raw_encode": pool.submit(text_query_p50_ms, encoder, repeats).result(),
            "raw_encode_paced": pool.submit(
                paced_p50_ms, encoder, repeats, args.raw_pause_ms / 1000
            ).result(),
            **tokenize_us(encoder, pool, repeats, args.model),
        }
    finally:
        pool.shutdown()


def paced_p50_ms(encoder: OpenClipEncoder, repeats: int, pause_s: float) -> float:
    """p50 ms of the same raw encode made `pause_s` apart, as a server makes its model calls
    (HTTP and the route between them): after a pause the weights come back from memory and
    the runtime's threads wake, which a loop of calls back to back never pays."""
    times = []
    for n in range(repeats):
        time.sleep(pause_s)
        started = time.perf_counter()
        encoder.encode_texts([query(n)])
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def tokenize_us(
    encoder: OpenClipEncoder, pool: Executor, repeats: int, model: str
) -> dict[str, float]:
    """p50 of tokenizing one query on the calling thread: in a loop (caches warm), and right
    after a model call on `pool`'s inference thread (as a server's event loop tokenizes the next
    query): what any Python on a request's path costs after the model has run. Then the token
    rows of one query made with open_clip's clean (ftfy on every text) and with the clean the
    encoder uses (ftfy skipped on printable ASCII), taking turns, both after a model call."""

    def timed_us(tokenize: Callable[[list[str]], Any], n: int) -> float:
        started = time.perf_counter()
        tokenize([query(n)])
        return (time.perf_counter() - started) * 1e6

    rows = list(encoder.tokenize([query(0)]))
    warm = [timed_us(encoder.tokenize, n) for n in range(repeats)]
    after_model = []
    for n in range(repeats):
        pool.submit(encoder.encode_tokens, rows).result()
        after_model.append(timed_us(encoder.tokenize, n))
    with_ftfy = open_clip.get_tokenizer(model)
    without = open_clip.get_tokenizer(model)
    skip_ftfy_on_plain_text(without)
    cleans: dict[str, list[float]] = {"with_ftfy": [], "ftfy_skipped": []}
    for n in range(repeats):
        for name, tokenizer in (("with_ftfy", with_ftfy), ("ftfy_skipped", without)):
            pool.submit(encoder.encode_tokens, rows).result()
            cleans[name].append(timed_us(token_rows(tokenizer, byte_pair_encoder=True), n))
    return {
        "tokenize_warm_us": round(statistics.median(warm), 1),
        "tokenize_after_a_model_call_us": round(statistics.median(after_model), 1),
        **{
            f"token_rows_{name}_after_a_model_call_us": round(statistics.median(times), 1)
            for name, times in cleans.items()
        },
    }


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--requests", type=int, default=500, help="per kind, over all rounds")
    parser.add_argument("--query-cache-mb", type=float, default=0.0)
    parser.add_argument(
        "--raw-pause-ms",
        type=float,
        default=3.0,
        help="the pause between the paced raw encode's calls (about a search's time beyond it)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="a checkout of other code (git worktree add): its server is measured beside this "
        "one's, rounds interleaved",
    )
    args = parser.parse_args()
    use_threads(1)  # as the server's other threads: one multi-core torch pool, the model's
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root / "images", 64)
        http = through_http(args, root, paths)
        raw = raw_encode(args, root, args.requests)
    encode = raw["raw_encode"]
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu_flags": cpu_flags(),
        "model": f"{args.model}/{args.pretrained or 'random-init'}",
        "runtime": http["runtime"],
        "precision": http["precision"],
        **figures_against_raw(http["this"], encode, raw["raw_encode_paced"]),
        "tokenize_us": {k: v for k, v in raw.items() if k.startswith(("tokenize", "token_rows"))},
    }
    if "baseline" in http:
        report["baseline"] = {
            "tree": str(args.baseline_tree),
            **figures_against_raw(http["baseline"], encode, raw["raw_encode_paced"]),
        }
    return emit(report, args.json_out)


def figures_against_raw(http: dict[str, Any], encode: float, paced: float) -> dict[str, Any]:
    """One server's p50s (by the lean client; httpx's beside them) and means, set against the
    raw encode of the same run."""
    means = http["server_means_ms"]
    lean, httpx_ = http[StdlibClient.name], http[HttpxClient.name]
    return {
        "p50_ms": {**lean, "raw_encode": encode, "raw_encode_paced": paced},
        "breakdown_ms": {
            "http_and_middleware": lean["healthz"],
            "route_tokenize_batcher_json": round(lean["embed_text"] - lean["healthz"] - encode, 2),
            "search_and_records": round(lean["search_text"] - lean["embed_text"], 2),
        },
        "server_means_ms": means,
        "inside_app_beyond_the_model_call_ms": {
            kind: round(means[f"inside_app_{kind}"] - means["text_model_call"], 2)
            for kind in ("embed_text", "search_text")
        },
        "over_raw_ms": round(lean["search_text"] - encode, 2),
        "over_paced_raw_ms": round(lean["search_text"] - paced, 2),
        **over_the_model_in_the_server(http, means),
        "server_timing_shares_p50_ms": http["server_timing_shares_p50_ms"],
        "httpx": {
            "p50_ms": httpx_,
            "over_raw_ms": round(httpx_["search_text"] - encode, 2),
            "its_own_cost_ms": round(httpx_["healthz"] - lean["healthz"], 2),
            "over_the_model_ms": http["over_the_model"][HttpxClient.name],
        },
    }


def over_the_model_in_the_server(http: dict[str, Any], means: dict[str, float]) -> dict[str, Any]:
    """Against the model's time in the same server for the same requests (Server-Timing), and
    the hand-off to the inference thread and back (the server's metrics): no drift between a
    figure and what it is set against. Empty for a server without them (an older tree)."""
    lean = http["over_the_model"][StdlibClient.name]
    if not lean or "text_model_alone" not in means:
        return {}
    return {
        "over_the_model_in_the_server_ms": lean,
        "hand_off_to_the_inference_thread_and_back_ms": round(
            means["text_model_call"] - means["text_model_alone"], 2
        ),
    }


if __name__ == "__main__":
    raise SystemExit(main())
