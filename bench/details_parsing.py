"""Reading event details: the wire format's strict rule against orjson alone.

Ingestion reads every event's `details` text with `strict_json.loads`: orjson, then a walk
that bounds nesting and integers and looks for a repeated key. Over the documented examples
of the contracts (small and flat), and over a 4 KiB document of nested objects and arrays:

- raw limit: `orjson.loads`, which refuses no repeated key, reads integers beyond 64 bits as
  floats and has no nesting bound of ours;
- strict: `strict_json.loads` with the ingestion's depth bound;
- standard: `json.loads` with a hook that refuses repeated keys, the usual strict reading.

Each measurement is bounded by a count and a time, the three take turns, and the median of
the rounds is reported.

    .venv/bin/python bench/details_parsing.py [--seconds 0.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from dispatcher_service.ingest import MAX_DETAILS_DEPTH
from webhook_contracts import load_registry
from webhook_wire.strict_json import loads

MAX_PASSES = 200_000


def documented_details() -> list[str]:
    """The details of every contract's documented example, as publishers send them."""
    return [
        json.dumps(example["payload"]["details"])
        for contract in load_registry()
        for example in contract.examples
    ]


def larger_details() -> str:
    """About 4 KiB: a list of line items, each an object with nested amounts and tags."""
    items = [
        {
            "ref": f"LINE-{n}",
            "amount": {"value": 1000 + n, "currency": "EUR"},
            "tags": ["fee", "2026-01-02T03:04:05Z", n],
            "ratio": n / 7,
        }
        for n in range(30)
    ]
    return json.dumps({"messageType": "event.note.created.v1", "items": items})


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("repeated key")
    return found


READERS: dict[str, Callable[[str], object]] = {
    "orjson (raw limit)": orjson.loads,
    "strict_json": lambda text: loads(text, max_depth=MAX_DETAILS_DEPTH),
    "json with a hook": lambda text: json.loads(text, object_pairs_hook=_unique),
}


def documents_per_second(
    read: Callable[[str], object], texts: Sequence[str], *, seconds: float
) -> float:
    passes = 0
    started = time.perf_counter()
    while passes * len(texts) < MAX_PASSES and time.perf_counter() - started < seconds:
        for text in texts:
            read(text)
        passes += 1
    return passes * len(texts) / (time.perf_counter() - started)


def measure(texts: Sequence[str], *, seconds: float, rounds: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in READERS}
    for turn in range(rounds):
        names = list(READERS)
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            rates[name].append(documents_per_second(READERS[name], texts, seconds=seconds))
    return {name: statistics.median(found) for name, found in rates.items()}


def report(title: str, texts: Sequence[str], *, seconds: float, rounds: int) -> None:
    size = statistics.mean(len(text) for text in texts)
    print(f"{title}: {len(texts)} documents of {size:.0f} characters on average")
    rates = measure(texts, seconds=seconds, rounds=rounds)
    raw = rates["orjson (raw limit)"]
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:>10,.0f} /s  {1e6 / rate:6.2f} us  ratio {rate / raw:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for text in [*documented_details(), larger_details()]:  # each reads the same
        assert loads(text, max_depth=MAX_DETAILS_DEPTH) == orjson.loads(text)
    report("documented examples", documented_details(), seconds=args.seconds, rounds=args.rounds)
    report("larger details", [larger_details()], seconds=args.seconds, rounds=args.rounds)


if __name__ == "__main__":
    main()
