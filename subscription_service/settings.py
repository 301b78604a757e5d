"""Settings of the subscription service, read from `SUBSCRIPTIONS_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service_common.settings import ServiceSettings

__all__ = ["SubscriptionSettings"]


class SubscriptionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SUBSCRIPTIONS_", extra="ignore")

    # host:port to listen on; port 0 picks a free port (tests).
    grpc_addr: str = "127.0.0.1:50051"
    # SQLite file by default; `postgresql+psycopg://user@host/db` for PostgreSQL.
    database_url: str = "sqlite:///var/subscriptions.db"
    # Changes a slow watcher may fall behind by before its stream is ended (it re-syncs).
    watch_queue_size: int = Field(default=10_000, ge=1)
    # Seconds between reads of the change log for changes made through other replicas
    # (changes made through this one are read at once).
    change_poll_seconds: float = Field(default=0.25, gt=0)
    # Hours a change stays in the change log: a watch that disconnected resumes after it
    # for this long, and re-reads the whole snapshot after that.
    change_log_retention_hours: float = Field(default=168, gt=0)
    metrics_addr: str = "127.0.0.1:9101"
