"""What `python -m <service>.migrate` does for either service: migrate, say what changed.

Exit status 0 on success, 1 when the database cannot be migrated, 2 for invalid
settings; errors are one line on stderr, with any password in the URL hidden.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.util import CommandError
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from service_common.settings import settings_problems

__all__ = ["run_migrate_command"]


def run_migrate_command(
    argv: Sequence[str] | None,
    *,
    description: str,
    database: str,
    settings: Callable[[], BaseSettings],
    prefix: str,
    create_engine: Callable[[str], sa.Engine],
    migrate: Callable[[sa.Engine], None],
) -> int:
    """Migrates the database `settings().database_url` names; `database` names it in messages."""
    argparse.ArgumentParser(description=description).parse_args(argv)
    try:
        loaded = settings()
    except ValidationError as exc:
        print(f"invalid {prefix}* settings: {settings_problems(exc, prefix)}", file=sys.stderr)
        return 2
    url: str = getattr(loaded, "database_url")  # noqa: B009 - both services' settings have it
    try:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        engine = create_engine(url)
    except (sa.exc.ArgumentError, ValueError, OSError) as exc:
        print(f"invalid {prefix}DATABASE_URL: {_first_line(exc)}", file=sys.stderr)
        return 2
    try:
        before = _revision(engine)
        migrate(engine)
        after = _revision(engine)
    except (sa.exc.SQLAlchemyError, CommandError, OSError) as exc:
        print(f"cannot migrate the {database} database {shown}: {_reason(exc)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if before == after:
        print(f"{database} database {shown}: already at revision {after}, nothing to do")
    else:
        print(f"{database} database {shown}: migrated from {before or 'empty'} to {after}")
    return 0


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _reason(exc: BaseException) -> str:
    # SQLAlchemy's own text adds the statement and a link; the driver's first line says it.
    original = getattr(exc, "orig", None)
    return _first_line(original if original is not None else exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
