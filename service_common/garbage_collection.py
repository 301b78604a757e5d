"""The garbage collector's settings for a long-running service process.

CPython collects its youngest generation every 700 container objects allocated and not
yet freed. Handling a request allocates hundreds (HTTP and gRPC messages, SQL parameters,
futures), most of them freed within the same request, so at the default a busy
dispatcher spent about 13% of its CPU in collections that found little: young ones, each
also walking every object that a request in flight still held, and full ones, each
walking the whole heap of imported modules, though none of it is ever garbage.

`tune_for_service` runs once, after the imports and before serving: what exists then is
moved out of the collector's sight (`gc.freeze`) and the young generation is collected
every `YOUNG_THRESHOLD` objects instead. Reference cycles are still found, only in larger
batches; `bench/soak.py` watches that memory stays flat.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_for_service"]

YOUNG_THRESHOLD = 10_000


def tune_for_service() -> None:
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
