"""Metrics (Prometheus), the recent-request statistics behind the dashboard, and structured logs."""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exemplar.app.context import request_id

__all__ = ["AccessMiddleware", "JsonFormatter", "Observability", "RecentStats"]

log = logging.getLogger("exemplar.access")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RecentStats:
    """A bounded window of recent selections: latency over time, strategy mix, labels returned."""

    def __init__(self, maxlen: int = 20_000) -> None:
        self._events: collections.deque[tuple[float, str, str, float, tuple[str, ...]]] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def record(self, pool: str, strategy: str, latency_ms: float, labels: Iterable[str | None]) -> None:
        with self._lock:
            self._events.append((time.time(), pool, strategy, latency_ms, tuple(lab or "(none)" for lab in labels)))

    def summary(self, *, window_s: float = 3600, bucket_s: float = 60) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            events = [e for e in self._events if e[0] >= now - window_s]
        buckets: dict[int, list[float]] = collections.defaultdict(list)
        strategies: collections.Counter[str] = collections.Counter()
        labels: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for at, pool, strategy, latency, returned in events:
            buckets[int(at // bucket_s)].append(latency)
            strategies[strategy] += 1
            labels[pool].update(returned)
        series = []
        for key in sorted(buckets):
            values = sorted(buckets[key])
            series.append({"t": key * bucket_s, "count": len(values), "p50_ms": _pct(values, 50), "p95_ms": _pct(values, 95)})
        return {"window_s": window_s, "bucket_s": bucket_s, "requests": len(events), "latency": series,
                "strategies": dict(strategies), "labels_returned": {p: dict(c) for p, c in labels.items()}}


def _pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 3)


class Observability:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("exemplar_http_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("exemplar_http_request_seconds", "HTTP request latency", ["route", "method"],
                                 buckets=_BUCKETS, registry=self.registry)
        self.selects = Histogram("exemplar_select_seconds", "Selection time per request, by strategy", ["strategy"],
                                 buckets=_BUCKETS, registry=self.registry)
        self.search = Histogram("exemplar_index_search_seconds", "Index search time per request", buckets=_BUCKETS,
                                registry=self.registry)
        self.encode = Histogram("exemplar_encode_seconds", "Query encoding time per request", buckets=_BUCKETS,
                                registry=self.registry)
        self.recent = RecentStats()
        self._selects: dict[str, Any] = {}

    def observe_selection(self, pool: str, strategy: str, timing_ms: dict[str, float], labels: Iterable[str | None]) -> None:
        selects = self._selects.get(strategy)
        if selects is None:  # labels() looks the child up under a lock on each call: once per strategy here
            selects = self._selects[strategy] = self.selects.labels(strategy)
        selects.observe(timing_ms.get("total", 0.0) / 1000)
        self.search.observe(timing_ms.get("search", 0.0) / 1000)
        self.encode.observe(timing_ms.get("encode", 0.0) / 1000)
        self.recent.record(pool, strategy, timing_ms.get("total", 0.0), labels)

    def add_state_collector(self, collect: Any) -> None:  # noqa: ANN401 - a prometheus Collector
        self.registry.register(collect)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector:
    """Pool sizes and job progress, read from the services at scrape time."""

    def __init__(self, services: Any) -> None:  # noqa: ANN401 - Services (import cycle)
        self.services = services

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: ANN201
        sizes = GaugeMetricFamily("exemplar_pool_items", "Items in the current version of each pool", labels=["pool"])
        segments = GaugeMetricFamily("exemplar_pool_segments", "Segments of the current version of each pool",
                                     labels=["pool"])
        deleted = GaugeMetricFamily("exemplar_pool_deleted_rows", "Deleted rows compaction has not purged yet",
                                    labels=["pool"])
        for pool in self.services.pools.list():
            stats = self.services.pools.stats(pool.name)
            sizes.add_metric([pool.name], stats.size)
            segments.add_metric([pool.name], stats.segments)
            deleted.add_metric([pool.name], stats.deleted)
        yield sizes
        yield segments
        yield deleted
        compactions = CounterMetricFamily("exemplar_compactions", "Compaction jobs that ended, by outcome",
                                          labels=["state"])
        for state in ("succeeded", "failed", "cancelled"):
            compactions.add_metric([state], len(self.services.jobs.list(states=(state,), kinds=("compact",), limit=100_000)))
        yield compactions
        progress = GaugeMetricFamily("exemplar_job_progress_ratio", "Progress of running jobs (done / total)",
                                     labels=["job", "kind", "pool"])
        done = GaugeMetricFamily("exemplar_job_items_done", "Items done by running jobs", labels=["job", "kind", "pool"])
        for job in self.services.jobs.list(states=("queued", "running"), limit=1000):
            p = job.progress
            done.add_metric([job.id, job.kind, job.pool], float(p.get("done") or 0))
            if p.get("total"):
                progress.add_metric([job.id, job.kind, job.pool], float(p.get("done") or 0) / float(p["total"]))
        yield progress
        yield done


class AccessMiddleware:
    """Counts and times every request by route template, and writes one access log line."""

    def __init__(self, app: ASGIApp, observability: Observability) -> None:
        self.app = app
        self.obs = observability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            self.obs.requests.labels(route, scope["method"], str(status)).inc()
            self.obs.latency.labels(route, scope["method"]).observe(seconds)
            if log.isEnabledFor(logging.INFO):
                state = scope.get("state") or {}
                log.info("request", extra={"event": "request", "method": scope["method"], "path": scope["path"],
                                           "route": route, "status": status, "ms": round(seconds * 1000, 3),
                                           "key": state.get("principal")})


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    _FIELDS = ("event", "method", "path", "route", "status", "ms", "key")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "message": record.getMessage(), "request_id": request_id()}
        for name in self._FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)
