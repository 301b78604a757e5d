"""Settings of the console, read from `CONSOLE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, HttpUrl
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ConsoleSettings"]


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")

    # host:port the console serves on; port 0 picks a free port (tests).
    http_addr: str = "127.0.0.1:8081"
    # The services, as host:port of their gRPC servers.
    subscriptions_addr: str = "127.0.0.1:50051"
    dispatcher_addr: str = "127.0.0.1:50052"
    # Seconds a call to a service may take before the page says the service is not answering.
    call_timeout_seconds: float = Field(default=5.0, gt=0)
    # A file holding the key that encrypts the session cookie; written (readable by the
    # owner only) when missing. Without one, a key is made at start-up and every operator
    # signs in again after a restart; replicas behind one name need the same file.
    session_key_file: Path | None = None
    # Hours a sign-in lasts.
    session_hours: float = Field(default=8.0, gt=0)
    # PEM certificate chain and private key: with both, the console serves HTTPS only and
    # its cookie is marked Secure.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The URL operators open, when a proxy in front serves the console (often terminating
    # TLS): forms must come from its origin, and the cookie is Secure when it is https.
    public_url: HttpUrl | None = None
    # The CA that signed the services' certificates: with it the console calls them over
    # TLS; with a certificate and key too, it shows them a client certificate (mutual TLS).
    grpc_ca_file: Path | None = None
    grpc_cert_file: Path | None = None
    grpc_key_file: Path | None = None
    log_level: str = "INFO"
    # json: one JSON object per line (for log collectors); text: for a terminal.
    log_format: Literal["json", "text"] = "json"
