"""Validations per second: compiled contract validators against ``jsonschema``.

On the documented examples of the contracts, three ways to validate the same value:

- raw limit: a hand-written function checking the same fields with ``isinstance``, the
  fastest any Python validator of this shape can be;
- compiled: ``Contract.is_valid``, the ``fastjsonschema`` validators of ``webhook_contracts``;
- jsonschema: ``Draft202012Validator.is_valid`` over the same documents and format checks.

The raw limit checks a payload; the webhook rows also check the body around it.

Each measurement is bounded by a count and a time, and repeated; the median is reported.

    .venv/bin/python bench/contracts_validation.py [--seconds 0.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from webhook_contracts import Part, load_registry
from webhook_contracts.explain import Explainer
from webhook_contracts.formats import is_date_time

MAX_CALLS = 1_000_000


def rate(check: Callable[[Any], object], value: Any, *, seconds: float) -> float:
    """Calls per second of ``check(value)``, bounded by ``seconds`` and ``MAX_CALLS``."""
    calls, batch = 0, 200
    started = time.perf_counter()
    deadline = started + seconds
    while calls < MAX_CALLS and time.perf_counter() < deadline:
        for _ in range(batch):
            check(value)
        calls += batch
    return calls / (time.perf_counter() - started)


def median_rate(
    check: Callable[[Any], object], value: Any, *, seconds: float, repeat: int
) -> float:
    return statistics.median(rate(check, value, seconds=seconds) for _ in range(repeat))


def hand_written(message_type: str) -> Callable[[Any], None]:
    """The raw limit: the checks of the documented example's contract, written by hand."""
    envelope = {"details", "messageId", "timestamp", "user"}
    money = ("amount", "totalFees", "totalAmount")

    def check(payload: Any) -> None:
        if not isinstance(payload, dict) or payload.keys() - envelope:
            raise ValueError("payload")
        message_id, timestamp = payload.get("messageId"), payload.get("timestamp")
        if not isinstance(message_id, str) or not message_id:
            raise ValueError("messageId")
        if not isinstance(timestamp, str) or len(timestamp) != 24 or not is_date_time(timestamp):
            raise ValueError("timestamp")
        details = payload.get("details")
        if not isinstance(details, dict) or details.get("messageType") != message_type:
            raise ValueError("details")
        if any(key in details and type(details[key]) is not int for key in money):
            raise ValueError("money")
        user = payload.get("user", {})
        if not isinstance(user, dict) or not all(isinstance(v, str) for v in user.values()):
            raise ValueError("user")

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    registry = load_registry()
    registry.compile_all()
    explainer = Explainer(registry.documents.by_id())
    measure = {"seconds": arguments.seconds, "repeat": arguments.repeat}
    print(f"{'contract / part':60} {'raw/s':>10} {'compiled/s':>11} {'jsonschema/s':>13} ratio")
    for contract in registry:
        for example in contract.examples:
            raw = median_rate(hand_written(contract.message_type), example["payload"], **measure)
            for part, value in ((Part.PAYLOAD, example["payload"]), (Part.WEBHOOK, example)):
                reference = explainer.validator(contract.schema_uri(part))
                fast = median_rate(partial(contract.is_valid, part=part), value, **measure)
                slow = median_rate(reference.is_valid, value, **measure)
                label = f"{contract.message_type} / {part}"
                print(f"{label:60} {raw:10,.0f} {fast:11,.0f} {slow:13,.0f} {fast / slow:5.1f}x")
                print(f"{'':60} compiled reaches {fast / raw:.0%} of the raw limit")


if __name__ == "__main__":
    main()
