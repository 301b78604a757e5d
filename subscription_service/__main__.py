"""`python -m subscription_service`: runs the service with settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from service_common.auth import TokensFileError
from subscription_service.server import serve
from subscription_service.settings import SubscriptionSettings


def main() -> int:
    try:
        settings = SubscriptionSettings()
    except ValidationError as exc:
        print(f"invalid SUBSCRIPTIONS_* settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(serve(settings))
    except TokensFileError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
