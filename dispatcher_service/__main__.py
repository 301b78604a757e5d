"""`python -m dispatcher_service`: runs the dispatcher with settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from dispatcher_service.server import serve
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.signing import KeyRingError
from service_common.auth import TokensFileError


def main() -> int:
    try:
        settings = DispatcherSettings()
    except ValidationError as exc:
        print(f"invalid DISPATCHER_* settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(serve(settings))
    except (TokensFileError, KeyRingError, OSError, ValueError) as exc:
        print(f"dispatcher cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
