"""Prometheus metrics and the process's liveness (Health); mmops/metrics_http.py serves them."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

PROCESSED = Counter(
    "mmops_entries_processed", "Stream entries handled and acked", ["group"], registry=REGISTRY
)
FAILED = Counter(
    "mmops_entries_failed",
    "Handler attempts that left an entry pending",
    ["group"],
    registry=REGISTRY,
)
DEAD = Counter(
    "mmops_entries_dead_lettered",
    "Entries moved to the dead-letter stream",
    ["group"],
    registry=REGISTRY,
)
RECLAIMED = Counter(
    "mmops_entries_reclaimed", "Entries reclaimed from idle consumers", ["group"], registry=REGISTRY
)
LATENCY = Histogram(
    "mmops_handler_seconds",
    "Handler latency per entry",
    ["group"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# per stream as well: with MM_STREAM_SHARDS > 1 a group reads several
PENDING = Gauge(
    "mmops_group_pending", "Entries pending in the group", ["group", "stream"], registry=REGISTRY
)
LAG = Gauge(
    "mmops_group_lag",
    "Entries not yet delivered to the group (-1: unknown)",
    ["group", "stream"],
    registry=REGISTRY,
)
HEARTBEAT_AGE = Gauge(
    "mmops_heartbeat_age_seconds",
    "Seconds since the loop last made progress",
    ["group"],
    registry=REGISTRY,
)
TAKEPROFITS = Counter(
    "mmops_takeprofits",
    "mm:takeprofits entries written by this process, by type",
    ["type"],
    registry=REGISTRY,
)
HTTP_DROPPED = Counter(
    "mmops_metrics_http_dropped",
    "Clients of the metrics endpoint dropped: deadline, oversized (head too long), evicted"
    " (all connections taken)",
    ["reason"],
    registry=REGISTRY,
)


class Health:
    """Liveness of the loops in this process: each loop beats; /healthz reports the oldest."""

    def __init__(self, stale_after: float = 30.0) -> None:
        self.beats: dict[str, float] = {}
        self.stale_after = stale_after

    def beat(self, name: str) -> None:
        self.beats[name] = time.monotonic()
        HEARTBEAT_AGE.labels(name).set(0)

    def report(self) -> tuple[bool, dict[str, float]]:
        now = time.monotonic()
        ages = {name: round(now - at, 3) for name, at in self.beats.items()}
        for name, age in ages.items():
            HEARTBEAT_AGE.labels(name).set(age)
        healthy = bool(ages) and all(age < self.stale_after for age in ages.values())
        return healthy, ages


HEALTH = Health()
