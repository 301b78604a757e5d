"""Per-tenant publish rate limit: one token bucket per tenant.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; publishing
n events takes n tokens, all or nothing. A full bucket is the same as no bucket, so only
tenants that published recently have one: memory is bounded by the tenants active within
one refill time (and by `max_tenants` whatever happens).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_TENANTS", "TenantRateLimiter"]

# Past this many buckets the least recently used is dropped even if not yet full: that
# tenant starts again with a full bucket, which is lenient but keeps memory bounded.
DEFAULT_MAX_TENANTS = 100_000


@dataclass
class _Bucket:
    tokens: float
    # Clock time of `tokens`; also the last time the tenant published.
    updated: float


class TenantRateLimiter:
    """Token buckets by tenant; `clock` is monotonic seconds (injectable for tests)."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_tenants: int = DEFAULT_MAX_TENANTS,
    ) -> None:
        if rate <= 0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number of events per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_tenants < 1:
            raise ValueError("max_tenants must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_tenants = max_tenants
        # Least recently used first: the front is the first to be full again.
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, counts: Mapping[str, int]) -> float | None:
        """Takes `counts[tenant]` tokens from each tenant's bucket, or none at all.

        Returns None when granted; otherwise the seconds to wait before the same call
        can be granted (if no other call takes those tokens first).
        """
        now = self._clock()
        self._drop_full(now)
        wait = 0.0
        for tenant, count in counts.items():
            if count > 0:
                wait = max(wait, self._wait(self._tokens(tenant, now), count))
        if wait > 0:
            return wait
        for tenant, count in counts.items():
            if count > 0:
                self._take(tenant, count, now)
        return None

    def _tokens(self, tenant: str, now: float) -> float:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            return float(self.burst)
        elapsed = max(0.0, now - bucket.updated)
        return min(float(self.burst), bucket.tokens + elapsed * self.rate)

    def _wait(self, tokens: float, count: int) -> float:
        # A batch larger than the burst passes only on a full bucket and leaves it in debt,
        # so the average rate still holds; it would never pass otherwise.
        needed = min(count, self.burst)
        if tokens >= needed:
            return 0.0
        return (needed - tokens) / self.rate

    def _take(self, tenant: str, count: int, now: float) -> None:
        tokens = self._tokens(tenant, now) - count
        self._buckets[tenant] = _Bucket(tokens, now)
        self._buckets.move_to_end(tenant)
        while len(self._buckets) > self._max_tenants:
            self._buckets.popitem(last=False)

    def _drop_full(self, now: float) -> None:
        while self._buckets:
            tenant, bucket = next(iter(self._buckets.items()))
            if bucket.tokens + (now - bucket.updated) * self.rate < self.burst:
                return
            del self._buckets[tenant]
