"""`python -m console`: runs the console with settings from the environment."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from console.server import serve
from console.settings import ConsoleSettings
from service_common import event_loop
from service_common.logs import configure_logging
from service_common.settings import settings_problems


def main() -> int:
    try:
        settings = ConsoleSettings()
    except ValidationError as exc:
        print(f"invalid CONSOLE_* settings: {settings_problems(exc, 'CONSOLE_')}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        event_loop.run(serve(settings), loop="asyncio")
    except (OSError, ValueError) as exc:
        print(f"console cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
