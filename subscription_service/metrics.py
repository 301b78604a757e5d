"""The subscription service's own metric: how many subscriptions are enabled or disabled,
read from the database when scraped (per-RPC metrics come from `service_common.metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service_common.metrics import read_database

__all__ = ["SubscriptionCollector"]


class SubscriptionCollector(Collector):
    def __init__(self, count_by_enabled: Callable[[], dict[bool, int]]) -> None:
        self._count_by_enabled = count_by_enabled

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up, counts = read_database(self._count_by_enabled, "the subscriptions")
        yield up
        if counts is None:
            return
        subscriptions = GaugeMetricFamily(
            "webhooks_subscriptions",
            "Subscriptions of every tenant, by whether they are enabled.",
            labels=("enabled",),
        )
        for enabled, count in counts.items():
            subscriptions.add_metric(["true" if enabled else "false"], count)
        yield subscriptions
