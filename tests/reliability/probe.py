"""A text search of `default` sent at a steady pace while attacks run: how long each waited
and what it got, by the attack under way."""

from __future__ import annotations

import threading
import time

import httpx


class Probe:
    """Searches every `every_s` in a thread of its own; set `current` to label what follows."""

    def __init__(self, base: str, every_s: float = 0.1) -> None:
        self.current = "idle"
        self.latencies: dict[str, list[float]] = {}
        self.failures: list[tuple[str, str]] = []  # (label, status or error)
        self._base = base
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def all_latencies(self) -> list[float]:
        return [seconds for each in self.latencies.values() for seconds in each]

    @property
    def statuses_ok(self) -> bool:
        return bool(self.all_latencies) and not self.failures

    def _run(self) -> None:
        with httpx.Client(base_url=self._base, timeout=30) as http:
            while not self._stop.is_set():
                label, started = self.current, time.perf_counter()
                try:
                    response = http.get("/v1/search/text", params={"q": "probe", "k": 5})
                    if response.status_code != 200:
                        self.failures.append((label, str(response.status_code)))
                except httpx.HTTPError as e:
                    self.failures.append((label, type(e).__name__))
                self.latencies.setdefault(label, []).append(time.perf_counter() - started)
                self._stop.wait(self._every_s)


class Searchers:
    """`clients` threads sending the same search without pause: each answer's status, and for
    a 200 the number of hits (0 for a connection error)."""

    def __init__(self, base: str, path: str, params: dict[str, object], clients: int) -> None:
        self.statuses: list[int] = []
        self.hits: list[int] = []
        self._request = (base, path, params)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Searchers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        base, path, params = self._request
        with httpx.Client(base_url=base, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    response = http.get(path, params=params)  # type: ignore[arg-type]
                except httpx.HTTPError:
                    self.statuses.append(0)
                    continue
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.hits.append(len(response.json()["results"]))
