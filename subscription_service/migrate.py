"""`python -m subscription_service.migrate`: brings the database to the newest schema.

For deployments that migrate in a step of their own and start the service with
`SUBSCRIPTIONS_MIGRATE_ON_START=false`. On a migrated database it changes nothing. Settings
come from the environment (`SUBSCRIPTIONS_DATABASE_URL`); exit status 0 on success, 1 when
the database cannot be migrated, 2 for invalid settings.
"""

from __future__ import annotations

import sys

from service_common.migrate_command import run_migrate_command
from subscription_service.database import create_engine, migrate
from subscription_service.settings import SubscriptionSettings


def main(argv: list[str] | None = None) -> int:
    return run_migrate_command(
        argv,
        description="Brings the subscriptions database to the newest schema.",
        database="subscriptions",
        settings=SubscriptionSettings,
        prefix="SUBSCRIPTIONS_",
        create_engine=create_engine,
        migrate=migrate,
    )


if __name__ == "__main__":
    sys.exit(main())
