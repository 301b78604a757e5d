"""Settings of the dispatcher, read from `DISPATCHER_*` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from service_common.settings import ServiceSettings

__all__ = ["DispatcherSettings"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DispatcherSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DISPATCHER_", extra="ignore")

    # host:port of the gRPC API; port 0 picks a free port (tests).
    grpc_addr: str = "127.0.0.1:50052"
    # host:port of the HTTP surface (JSON ingestion, contracts, public keys); port 0 as above.
    http_addr: str = "127.0.0.1:8080"
    # SQLite file by default; `postgresql+psycopg://user@host/db` for PostgreSQL.
    database_url: str = "sqlite:///var/dispatcher.db"
    # Where the subscription service listens, and the file holding the token the
    # dispatcher watches it with (tenant `*`, scope `admin`).
    subscriptions_addr: str = "127.0.0.1:50051"
    subscriptions_token_file: Path | None = None
    # TLS to the subscription service: the CA that signed its certificate (TLS on when
    # set), and this dispatcher's own certificate and key when it asks for mutual TLS.
    subscriptions_tls_ca_file: Path | None = None
    subscriptions_tls_cert_file: Path | None = None
    subscriptions_tls_key_file: Path | None = None
    # CIDRs deliveries may reach despite the SSRF guard, comma-separated (e.g. 127.0.0.0/8).
    allowed_target_networks: Annotated[tuple[Network, ...], NoDecode] = ()
    # Private signing keys live here (generated on first start, mode 0600).
    signing_keys_dir: Path = Path("var/signing-keys")
    # How long a retired key's public half stays published after a rotation.
    retired_key_retention_days: float = Field(default=8.0, gt=0)
    # Delay before each attempt after a failure: comma-separated durations (s, m, h).
    retry_schedule: str = "0s,5s,5m,30m,2h,5h,10h,10h"
    # A subscription is disabled after this many failed attempts in a row (0: never)
    # that also span at least this many seconds (5 days by default).
    disable_after_failures: int = Field(default=100, ge=0)
    disable_after_seconds: float = Field(default=5 * 86400.0, ge=0)
    # The HTTP client deliveries go through: libcurl (`curl`), or `aiohttp`, the slower
    # fallback; both keep the same promises (SSRF check, no redirects, bounded answers).
    http_client: Literal["curl", "aiohttp"] = "curl"
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    attempt_timeout_seconds: float = Field(default=15.0, gt=0)
    # Deliveries sent at once, overall and to one endpoint (host:port).
    max_concurrent_deliveries: int = Field(default=256, ge=1)
    max_concurrent_per_endpoint: int = Field(default=16, ge=1)
    # A worker owns a claimed delivery this long; it must exceed twice the attempt timeout
    # (a delivery may wait for one attempt to its endpoint before making its own), or a
    # delivery still waiting could be claimed and sent by another replica as well.
    lease_seconds: float = Field(default=60.0, gt=0)
    # How often idle workers look for due deliveries published by other replicas.
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    # false: this replica only ingests (other replicas on the same database deliver).
    deliver: bool = True
    # Events per second one tenant may publish, on average, and in one burst; beyond
    # that a call answers RESOURCE_EXHAUSTED (HTTP 429). 0: no limit.
    publish_rate_per_tenant: float = Field(default=0.0, ge=0)
    publish_burst_per_tenant: int = Field(default=10_000, ge=1)
    metrics_addr: str = "127.0.0.1:9102"
    # Finished events (every delivery succeeded or dead) older than this many days are
    # deleted with their deliveries and attempts; 0 keeps everything forever.
    retention_days: float = Field(default=30.0, ge=0)
    # Unset: a payload lives as long as its event. Set: finished events older than this
    # many days keep their deliveries and attempts, but their payload is emptied (and they
    # can no longer be delivered again); at most `retention_days`, unless that is 0.
    payload_retention_days: float | None = Field(default=None, gt=0)
    # Time between two pruning runs, and the events one transaction of a run deletes.
    prune_interval_seconds: float = Field(default=600.0, gt=0)
    prune_batch_size: int = Field(default=1000, ge=1)

    @field_validator("allowed_target_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _lease_outlasts_two_attempts(self) -> Self:
        if self.lease_seconds <= 2 * self.attempt_timeout_seconds:
            prefix = self.model_config.get("env_prefix", "")
            raise ValueError(
                f"{prefix}LEASE_SECONDS ({self.lease_seconds:g}) must exceed twice "
                f"{prefix}ATTEMPT_TIMEOUT_SECONDS ({self.attempt_timeout_seconds:g})"
            )
        return self

    @model_validator(mode="after")
    def _payloads_go_before_their_events(self) -> Self:
        payload_days = self.payload_retention_days
        if payload_days is None or not self.retention_days:
            return self
        if payload_days > self.retention_days:
            prefix = self.model_config.get("env_prefix", "")
            raise ValueError(
                f"{prefix}PAYLOAD_RETENTION_DAYS ({payload_days:g}) must not exceed "
                f"{prefix}RETENTION_DAYS ({self.retention_days:g}): events are deleted "
                "with their payloads"
            )
        return self
