"""The subscription service's own metric: how many subscriptions are enabled or disabled,
read from the database when scraped (per-RPC metrics come from `service_common.metrics`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service_common.errors import StoreUnavailable

__all__ = ["SubscriptionCollector"]

log = logging.getLogger(__name__)


class SubscriptionCollector(Collector):
    def __init__(self, count_by_enabled: Callable[[], dict[bool, int]]) -> None:
        self._count_by_enabled = count_by_enabled

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "webhooks_database_up", "1 when the last scrape could read the subscriptions."
        )
        try:
            counts = self._count_by_enabled()
        except Exception as error:
            # A scrape must answer even then: with the database marked down.
            if not isinstance(error, StoreUnavailable):
                log.exception("could not read the database for metrics")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        subscriptions = GaugeMetricFamily(
            "webhooks_subscriptions",
            "Subscriptions of every tenant, by whether they are enabled.",
            labels=("enabled",),
        )
        for enabled, count in counts.items():
            subscriptions.add_metric(["true" if enabled else "false"], count)
        yield subscriptions
