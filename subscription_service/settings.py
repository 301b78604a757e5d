"""Settings of the subscription service, read from `SUBSCRIPTIONS_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SubscriptionSettings"]


class SubscriptionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUBSCRIPTIONS_", extra="ignore")

    # host:port to listen on; port 0 picks a free port (tests).
    grpc_addr: str = "127.0.0.1:50051"
    # SQLite file by default; `postgresql+psycopg://user@host/db` for PostgreSQL.
    database_url: str = "sqlite:///var/subscriptions.db"
    # JSON file of accepted tokens (see the README). Without one every call is refused.
    auth_tokens_file: Path | None = None
    # Seconds that calls in flight get to finish on shutdown.
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # Changes a slow watcher may fall behind by before its stream is ended (it re-syncs).
    watch_queue_size: int = Field(default=10_000, ge=1)
    log_level: str = "INFO"
