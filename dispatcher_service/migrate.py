"""`python -m dispatcher_service.migrate`: brings the database to the newest schema.

For deployments that migrate in a step of their own and start the service with
`DISPATCHER_MIGRATE_ON_START=false`. On a migrated database it changes nothing. Settings
come from the environment (`DISPATCHER_DATABASE_URL`); exit status 0 on success, 1 when
the database cannot be migrated, 2 for invalid settings.
"""

from __future__ import annotations

import sys

from dispatcher_service.database import create_engine, migrate
from dispatcher_service.settings import DispatcherSettings
from service_common.migrate_command import run_migrate_command


def main(argv: list[str] | None = None) -> int:
    return run_migrate_command(
        argv,
        description="Brings the dispatcher database to the newest schema.",
        database="dispatcher",
        settings=DispatcherSettings,
        prefix="DISPATCHER_",
        create_engine=create_engine,
        migrate=migrate,
    )


if __name__ == "__main__":
    sys.exit(main())
