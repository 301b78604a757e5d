"""`python -m dispatcher_service.prune [--dry-run]`: retention run by hand.

Prunes finished events past `DISPATCHER_RETENTION_DAYS` and expunges payloads past
`DISPATCHER_PAYLOAD_RETENTION_DAYS` once, fully, as a running dispatcher does every
`DISPATCHER_PRUNE_INTERVAL_SECONDS`, and says what it did; with `--dry-run` it says what
that would be now and changes nothing. Settings come from the environment; exit status 0
on success, 1 when the database cannot be read or changed, 2 for invalid settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from pydantic import ValidationError

from dispatcher_service.database import create_engine
from dispatcher_service.pruner import Pruner
from dispatcher_service.pruning import EventPruner, Preview
from dispatcher_service.retention import RetentionPolicy, run_summary
from dispatcher_service.settings import DispatcherSettings
from service_common.errors import StoreUnavailable
from service_common.settings import settings_problems

__all__ = ["main"]

PREFIX = "DISPATCHER_"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prunes old finished events and expunges old payloads of the dispatcher "
        "database, once, under the DISPATCHER_* retention settings."
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be done now; change nothing"
    )
    dry_run: bool = parser.parse_args(argv).dry_run
    try:
        settings = DispatcherSettings()
    except ValidationError as exc:
        print(f"invalid {PREFIX}* settings: {settings_problems(exc, PREFIX)}", file=sys.stderr)
        return 2
    policy = RetentionPolicy.of(settings)
    if not policy.active:
        print(f"{PREFIX}RETENTION_DAYS is 0 and payloads are kept: nothing is ever removed")
        return 0
    try:
        shown = sa.make_url(settings.database_url).render_as_string(hide_password=True)
        engine = create_engine(settings.database_url)
    except (sa.exc.ArgumentError, ValueError, OSError) as exc:
        print(f"invalid {PREFIX}DATABASE_URL: {_first_line(exc)}", file=sys.stderr)
        return 2
    try:
        said = _preview(engine, policy) if dry_run else _run(engine, policy, settings)
    except (StoreUnavailable, sa.exc.SQLAlchemyError, OSError) as exc:
        print(f"cannot prune the dispatcher database {shown}: {_reason(exc)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"dispatcher database {shown}: {said}")
    return 0


def _run(engine: sa.Engine, policy: RetentionPolicy, settings: DispatcherSettings) -> str:
    pruner = Pruner(
        pruner=EventPruner(engine),
        policy=policy,
        interval=settings.prune_interval_seconds,
        batch_size=settings.prune_batch_size,
    )
    done = asyncio.run(pruner.run_once())
    if done is None:
        return "another dispatcher is pruning it now; nothing done"
    return run_summary(done.pruned, done.expunged, policy=policy, seconds=done.seconds)


def _preview(engine: sa.Engine, policy: RetentionPolicy) -> str:
    now = datetime.now(UTC)
    prune_cutoff, expunge_cutoff = policy.prune_cutoff(now), policy.expunge_cutoff(now)
    preview = EventPruner(engine).preview(prune_cutoff, expunge_cutoff)
    return (
        "; ".join(_would(preview, policy, prune_cutoff, expunge_cutoff))
        + " (dry run: nothing changed)"
    )


def _would(
    preview: Preview,
    policy: RetentionPolicy,
    prune_cutoff: datetime | None,
    expunge_cutoff: datetime | None,
) -> list[str]:
    said = []
    if prune_cutoff is not None:
        pruned = preview.pruned
        oldest = "" if preview.oldest is None else f", the oldest created {_when(preview.oldest)}"
        said.append(
            f"would prune {pruned.events} events, {pruned.deliveries} deliveries, "
            f"{pruned.attempts} attempts finished before {_when(prune_cutoff)} "
            f"({policy.days:g} days){oldest}"
        )
    if expunge_cutoff is not None:
        said.append(
            f"would expunge {preview.expunged} payloads of events finished before "
            f"{_when(expunge_cutoff)} ({policy.payload_days:g} days)"
        )
    return said


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _reason(exc: BaseException) -> str:
    # SQLAlchemy's own text adds the statement and a link; the driver's first line says it.
    cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
    original = getattr(cause, "orig", None)
    return _first_line(original if original is not None else cause or exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
