"""`python -m dispatcher_service`: runs the dispatcher with settings from the environment."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from dispatcher_service.keyring import KeyRingError
from dispatcher_service.server import serve
from dispatcher_service.settings import DispatcherSettings
from service_common import event_loop
from service_common.auth import TokensFileError
from service_common.garbage_collection import tune_for_service
from service_common.logs import configure_logging
from service_common.settings import settings_problems, validation_problems
from service_common.tracing import configure_tracing


def main() -> int:
    try:
        settings = DispatcherSettings()
    except ValidationError as exc:
        print(
            f"invalid DISPATCHER_* settings: {settings_problems(exc, 'DISPATCHER_')}",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level, settings.log_format)
    tracing = configure_tracing(settings.tracing_exporter, service_name="dispatcher")
    tune_for_service()
    try:
        event_loop.run(serve(settings), loop=settings.event_loop)
    except TokensFileError as exc:
        print(f"dispatcher cannot start: {_tokens_file_problem(exc, settings)}", file=sys.stderr)
        return 2
    except (KeyRingError, OSError, ValueError) as exc:
        print(f"dispatcher cannot start: {exc}", file=sys.stderr)
        return 2
    finally:
        if tracing is not None:
            tracing.shutdown()
    return 0


def _tokens_file_problem(error: TokensFileError, settings: DispatcherSettings) -> str:
    if isinstance(error.__cause__, ValidationError):
        return (
            f"tokens file {settings.auth_tokens_file} (DISPATCHER_AUTH_TOKENS_FILE) is "
            f"malformed: {validation_problems(error.__cause__)}"
        )
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
