"""Prometheus metrics: requests and latency per route, recommendations per strategy, fallbacks, the bundle.

Each app owns its registry (tests build many apps in one process). With several worker processes
(``cdrec serve --workers N``) the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, and
``/metrics`` then aggregates every worker's values, whichever worker the scrape reaches.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service.supervision import SupervisorCollector

GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)
BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5)


class Metrics:
    def __init__(self, state_dir: Path | None = None) -> None:
        """``state_dir``: the supervisor's (``cdrec serve --workers N``), whose restart counters are exported."""
        self.state_dir = state_dir
        self.registry = r = CollectorRegistry(auto_describe=True)
        if state_dir is not None:
            r.register(SupervisorCollector(state_dir))
        self.requests = Counter(
            "cdrec_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cdrec_http_request_duration_seconds", "Time in the app per request", ["route"], buckets=BUCKETS, registry=r
        )
        self.answers = Histogram(
            "cdrec_recommend_duration_seconds",
            "Recommendation latency by route and strategy (its _count counts answers per strategy)",
            ["route", "strategy", "degraded"],
            buckets=BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "cdrec_fallbacks", "Answers that fell back to popularity, by reason", ["reason"], registry=r
        )
        self.bundle = Gauge(
            "cdrec_bundle_info",
            "1 for the bundle version being served",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter("cdrec_bundle_reloads", "Bundle reloads by result", ["result"], registry=r)
        self.items_added = Counter(
            "cdrec_items_added", "Items added through POST /v1/items, by domain", ["domain"], registry=r
        )
        self.redis_up = Gauge(
            "cdrec_redis_up", "1 when the last Redis call or probe succeeded", registry=r, multiprocess_mode="liveall"
        )
        # a collection stops the whole worker (event loop and executor: it holds the GIL): issue 16 item 1
        self.gc_pauses = Histogram(
            "cdrec_gc_pause_seconds", "Python garbage collections by generation", ["generation"],
            buckets=GC_BUCKETS, registry=r,
        )  # fmt: skip
        self._gc_children = [self.gc_pauses.labels(str(g)) for g in range(3)]
        self._gc_start = 0.0
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._answer_children: dict[tuple[str, str, bool], Histogram] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._request_children.get(key)
        if counter is None:  # label lookups cost microseconds: cache the children
            counter = self._request_children[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        hist = self._latency_children.get(route)
        if hist is None:
            hist = self._latency_children[route] = self.latency.labels(route)
        hist.observe(seconds)

    def answered(self, route: str, strategy: str, degraded: bool, fallback: str | None, seconds: float) -> None:
        key = (route, strategy, degraded)
        hist = self._answer_children.get(key)
        if hist is None:
            hist = self._answer_children[key] = self.answers.labels(route, strategy, "true" if degraded else "false")
        hist.observe(seconds)
        if fallback is not None:
            self.fallbacks.labels(fallback).inc()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self._gc_children[info["generation"]].observe(time.perf_counter() - self._gc_start)

    def watch_gc(self) -> None:
        """Time every garbage collection of this process (``cdrec_gc_pause_seconds``) until ``unwatch_gc``."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def serving(self, version: str, previous: str | None = None) -> None:
        if previous is not None and previous != version:
            self.bundle.labels(previous).set(0)
        self.bundle.labels(version).set(1)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            if self.state_dir is not None:
                registry.register(SupervisorCollector(self.state_dir))
            return generate_latest(registry)
        return generate_latest(self.registry)
