"""`python -m webhook_receiver.demo`: a receiver that checks every delivery with this kit.

``POST /webhooks`` takes deliveries. Each one's signature is checked with the public key its
``webhook-key-id`` header names, from the dispatcher's ``GET /.well-known/jwks.json`` through
the kit's ``AsyncKeySet`` (kept for the answer's max-age, fetched again for a key id it does
not know, at most once per interval); then ``payloadAsString`` against ``payload``, the
contract of its messageType, and its messageId against those already seen.
The answer:

- 204: verified and handled, or a repeat of a messageId already handled;
- 400: rejected (no or unknown key id, bad signature, payload mismatch, contract violation,
  unknown messageType, not a webhook): a retry would not help;
- 409: the same messageId is being handled right now;
- 503: the key could not be fetched from the dispatcher: the platform retries later.

``GET /received`` lists the last accepted events (messageId, messageType, keyId, ...),
oldest first; ``GET /healthz`` answers 200. Every delivery is logged as one JSON line with
its messageId, messageType and verdict, never its details.

Settings come from the environment:

- ``DEMO_RECEIVER_ADDR`` (``127.0.0.1:8090``): host:port to listen on; port 0 picks a free
  port, which the ``listening`` log line names;
- ``DEMO_RECEIVER_DISPATCHER_URL`` (``http://127.0.0.1:8080``): the dispatcher's HTTP surface;
- ``DEMO_RECEIVER_DISPATCHER_CA_FILE`` (none): PEM CA certificate(s) that an ``https://``
  dispatcher URL is checked against, instead of the system's;
- ``DEMO_RECEIVER_KEEP_RECEIVED`` (``100``): how many accepted events ``GET /received`` keeps;
- ``DEMO_RECEIVER_LOG_LEVEL`` (``INFO``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

import webhook_contracts

from .dedup import Claim, Deduplicator
from .errors import (
    ContractViolation,
    KeySetUnavailable,
    PayloadMismatch,
    UnknownSigningKey,
    WebhookRejected,
)
from .keyset import AsyncKeySet
from .verify import verify_webhook

__all__ = ["DemoReceiver", "DemoReceiverSettings", "create_app", "jwks_url", "main", "serve"]

log = logging.getLogger("webhook_receiver.demo")

WEBHOOK_PATH = "/webhooks"


class DemoReceiverSettings(BaseSettings):
    """Settings of the demo receiver, read from ``DEMO_RECEIVER_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DEMO_RECEIVER_", extra="ignore")

    # host:port to listen on; port 0 picks a free port (logged in the `listening` line).
    addr: str = "127.0.0.1:8090"
    # The dispatcher's HTTP surface, where the public signing keys are fetched.
    dispatcher_url: str = "http://127.0.0.1:8080"
    # PEM CA that the dispatcher's certificate is checked against (https:// URLs); none:
    # the system's CAs.
    dispatcher_ca_file: Path | None = None
    # Accepted events that `GET /received` lists, the newest ones.
    keep_received: int = Field(default=100, ge=1, le=10_000)
    log_level: str = "INFO"

    @field_validator("addr")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        split_address(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @field_validator("dispatcher_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")


def jwks_url(dispatcher_url: str) -> str:
    """Where the dispatcher at ``dispatcher_url`` publishes its public keys."""
    return str(URL(dispatcher_url.rstrip("/")) / ".well-known" / "jwks.json")


def split_address(addr: str) -> tuple[str | None, int]:
    """``host:port`` (``[v6]:port``; an empty host listens everywhere) as (host, port)."""
    host, colon, port_text = addr.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("must be host:port with a port from 0 to 65535")
    host = host.removeprefix("[").removesuffix("]")
    return host or None, int(port_text)


@dataclass(frozen=True)
class Verdict:
    """What became of one delivery: the HTTP status and what the log line says."""

    status: int
    verdict: str
    reason: str | None = None


class DemoReceiver:
    """Checks deliveries and remembers the last accepted ones."""

    def __init__(self, keys: AsyncKeySet, *, keep_received: int = 100) -> None:
        self._keys = keys
        self._registry = webhook_contracts.load_registry()
        self._deduplicator = Deduplicator(max_entries=100_000)
        self.received: deque[dict[str, Any]] = deque(maxlen=keep_received)

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        kid = request.headers.get("webhook-key-id", "")
        fields: dict[str, Any] = {
            "event": "delivery",
            # The header is unsigned: logged as a hint, the messageId comes from the signed text.
            "webhookId": request.headers.get("webhook-id", "")[:200],
            "keyId": kid[:200],
        }
        verdict = await self._check(body, kid, fields)
        log.info(json.dumps({**fields, "verdict": verdict.verdict, "reason": verdict.reason}))
        if verdict.status == 204:
            return web.Response(status=204)
        answer = {"verdict": verdict.verdict, "reason": verdict.reason}
        headers = {"Retry-After": "5"} if verdict.status in (409, 503) else None
        return web.json_response(answer, status=verdict.status, headers=headers)

    async def _check(self, body: bytes, kid: str, fields: dict[str, Any]) -> Verdict:
        if not kid:
            return Verdict(400, "rejected", "no webhook-key-id header")
        try:
            key = await self._keys.get(kid)
        except UnknownSigningKey as error:
            return Verdict(400, "rejected", f"unknown key: {error}")
        except KeySetUnavailable as error:
            return Verdict(503, "unavailable", str(error))
        try:
            webhook = verify_webhook(body, key, registry=self._registry)
        except WebhookRejected as error:
            return Verdict(400, "rejected", _why(error))
        fields["messageId"] = webhook.message_id
        fields["messageType"] = webhook.message_type
        with self._deduplicator.process(webhook.message_id) as claim:
            if claim is Claim.IN_PROGRESS:
                return Verdict(409, "in_progress")
            if claim is Claim.DUPLICATE:
                return Verdict(204, "duplicate")
            # Handling an event: here, remembering it for GET /received.
            self.received.append(
                {
                    "messageId": webhook.message_id,
                    "messageType": webhook.message_type,
                    "keyId": kid,
                    "timestamp": webhook.timestamp,
                    "verified": True,
                    "contractChecked": webhook.contract_checked,
                    "receivedAt": time.time(),
                }
            )
        return Verdict(204, "accepted")

    async def list_received(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.received))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def _why(error: WebhookRejected) -> str:
    # Names the check and the field, never a value: a contract message may quote the details.
    kind = type(error).__name__
    if isinstance(error, ContractViolation):
        return f"{kind} at {error.path or '(root)'} ({error.keyword})"
    if isinstance(error, PayloadMismatch):
        return str(error)
    return kind


def create_app(receiver: DemoReceiver) -> web.Application:
    """The routes: ``POST /webhooks``, ``GET /received``, ``GET /healthz``."""
    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, receiver.receive)
    app.router.add_get("/received", receiver.list_received, allow_head=False)
    app.router.add_get("/healthz", receiver.health)
    return app


async def serve(settings: DemoReceiverSettings) -> None:
    """Serves until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    host, port = split_address(settings.addr)
    # Made before anything listens: an unreadable or invalid CA file stops the start.
    context = (
        ssl.create_default_context(cafile=settings.dispatcher_ca_file)
        if settings.dispatcher_ca_file is not None
        else None
    )
    client = httpx.AsyncClient(verify=context or True, trust_env=False)
    async with AsyncKeySet(jwks_url(settings.dispatcher_url), client=client) as keys, client:
        receiver = DemoReceiver(keys, keep_received=settings.keep_received)
        runner = web.AppRunner(
            create_app(receiver), access_log=None, handle_signals=False, shutdown_timeout=2
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound_port = runner.addresses[0][1]
            log.info(
                json.dumps(
                    {
                        "event": "listening",
                        "host": host or "",
                        "port": bound_port,
                        "webhookPath": WEBHOOK_PATH,
                        "dispatcherUrl": settings.dispatcher_url,
                    }
                )
            )
            await stop.wait()
            log.info(json.dumps({"event": "stopping"}))
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A webhook receiver that verifies every delivery (settings: DEMO_RECEIVER_*)."
    )
    parser.parse_args(argv)
    try:
        settings = DemoReceiverSettings()
    except ValidationError as exc:
        problems = "; ".join(
            # Pydantic words a validator's own exception as "Value error, <its message>".
            f"DEMO_RECEIVER_{'_'.join(map(str, e['loc'])).upper()}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_input=False)
        )
        print(f"invalid DEMO_RECEIVER_* settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"demo receiver cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
