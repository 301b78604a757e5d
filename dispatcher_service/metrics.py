"""The dispatcher's Prometheus metrics: events in, deliveries out, and the queue between.

Counters move as work is done; the queue's depth and the age of its oldest due delivery
are read from the database when the metrics are scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispatcher_service.domain import QueueStats
from service_common.metrics import read_database

__all__ = ["DispatcherMetrics", "QueueCollector"]

_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class DispatcherMetrics:
    """The counters and histograms; one set per running dispatcher, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.events = Counter(
            "webhooks_events",
            "Published events by outcome: accepted (stored), duplicate (stored before), "
            "rejected (refused, with the field named), throttled (over the tenant's "
            "publish rate; nothing stored).",
            ("outcome",),
            registry=self.registry,
        )
        self.deliveries = Counter(
            "webhooks_deliveries",
            "Recorded delivery attempts by the state they left their delivery in: "
            "succeeded, retrying (another attempt is scheduled) or dead.",
            ("outcome",),
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "webhooks_delivery_attempt_seconds",
            "Time from sending a delivery's request to its answer (or failure), by answer: "
            "2xx, 3xx, 4xx, 5xx, or error (timeout, connection refused, ...).",
            ("status_class",),
            buckets=_ATTEMPT_BUCKETS,
            registry=self.registry,
        )
        self.subscriptions_disabled = Counter(
            "webhooks_subscriptions_disabled",
            "Subscriptions this dispatcher disabled: gone (the endpoint answered 410) or "
            "failing (a long run of failed attempts).",
            ("reason",),
            registry=self.registry,
        )
        self.pruned_rows = Counter(
            "webhooks_pruned_rows",
            "Rows deleted by retention (DISPATCHER_RETENTION_DAYS), by table: events, "
            "deliveries, attempts.",
            ("table",),
            registry=self.registry,
        )
        self.payloads_expunged = Counter(
            "webhooks_payloads_expunged",
            "Event payloads emptied by DISPATCHER_PAYLOAD_RETENTION_DAYS (the events stay).",
            registry=self.registry,
        )
        for outcome in ("accepted", "duplicate", "rejected", "throttled"):
            self.events.labels(outcome)
        for outcome in ("succeeded", "retrying", "dead"):
            self.deliveries.labels(outcome)
        for reason in ("gone", "failing"):
            self.subscriptions_disabled.labels(reason)
        for table in ("events", "deliveries", "attempts"):
            self.pruned_rows.labels(table)
        self._attempts = {
            status_class: self.attempt_seconds.labels(status_class)
            for status_class in ("1xx", "2xx", "3xx", "4xx", "5xx", "error")
        }

    def attempt(self, status_code: int | None, seconds: float) -> None:
        status_class = f"{status_code // 100}xx" if status_code else "error"
        histogram = self._attempts.get(status_class) or self.attempt_seconds.labels(status_class)
        histogram.observe(seconds)


class QueueCollector(Collector):
    """Reads the queue when scraped (in the scraper's thread, never on the event loop)."""

    def __init__(
        self,
        stats: Callable[[datetime], QueueStats],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._stats = stats
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._clock()
        up, stats = read_database(lambda: self._stats(now), "the delivery queue")
        yield up
        if stats is None:
            return
        depth = GaugeMetricFamily(
            "webhooks_delivery_queue_depth",
            "Deliveries waiting for an attempt (now or later), by state.",
            labels=("state",),
        )
        for state, count in stats.depth.items():
            depth.add_metric([state.value], count)
        yield depth
        age = 0.0
        if stats.oldest_due_time is not None:
            age = max(0.0, (now - stats.oldest_due_time).total_seconds())
        yield GaugeMetricFamily(
            "webhooks_delivery_oldest_due_age_seconds",
            "How long the longest-waiting due delivery has been due (0 when none is).",
            value=age,
        )
