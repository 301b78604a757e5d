"""`python -m subscription_service`: runs the service with settings from the environment."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service_common import event_loop
from service_common.auth import TokensFileError
from service_common.garbage_collection import tune_for_service
from service_common.logs import configure_logging
from service_common.settings import settings_problems, validation_problems
from service_common.tracing import configure_tracing
from subscription_service.server import serve
from subscription_service.settings import SubscriptionSettings


def main() -> int:
    try:
        settings = SubscriptionSettings()
    except ValidationError as exc:
        print(
            f"invalid SUBSCRIPTIONS_* settings: {settings_problems(exc, 'SUBSCRIPTIONS_')}",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level, settings.log_format)
    tracing = configure_tracing(settings.tracing_exporter, service_name="subscription-service")
    tune_for_service()
    try:
        event_loop.run(serve(settings), loop=settings.event_loop)
    except TokensFileError as exc:
        print(
            f"subscription service cannot start: {_tokens_file_problem(exc, settings)}",
            file=sys.stderr,
        )
        return 2
    except (OSError, ValueError) as exc:
        print(f"subscription service cannot start: {exc}", file=sys.stderr)
        return 2
    finally:
        if tracing is not None:
            tracing.shutdown()
    return 0


def _tokens_file_problem(error: TokensFileError, settings: SubscriptionSettings) -> str:
    if isinstance(error.__cause__, ValidationError):
        return (
            f"tokens file {settings.auth_tokens_file} (SUBSCRIPTIONS_AUTH_TOKENS_FILE) is "
            f"malformed: {validation_problems(error.__cause__)}"
        )
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
