"""The peer of `peers.py`: the Celery worker a Python team would write instead of ours.

One task per delivery: build the payload's canonical JSON, sign it as the dispatcher does
by default (ECDSA P-256 over SHA-256 of the UTF-8 `payloadAsString`, base64 DER in the
body, base64 `r||s` in `webhook-signature-p1363`), POST the body the dispatcher sends with
its headers through a module-level `httpx.Client` (keep-alive), and record the attempt in
Redis. A failed attempt is retried with backoff, as such a team would configure it.

Configured by `peers.py` through the environment: PEERS_BROKER (a Redis URL with its own
db number), PEERS_KEY_FILE (the PKCS#8 PEM of the signing key), PEERS_KEY_ID and
PEERS_CONNECTIONS (the keep-alive pool, the worker's concurrency). Started as

    celery -A peers_celery_app worker --pool threads --concurrency 64
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery  # type: ignore[import-untyped]
from celery.signals import worker_ready  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TASK = "peers_celery_app.deliver"
READY_KEY = "peers:ready"
ATTEMPTS_KEY = "peers:attempts"
BROKER = os.environ.get("PEERS_BROKER", "redis://127.0.0.1:6379/15")
_CONNECTIONS = int(os.environ.get("PEERS_CONNECTIONS", "64"))

app = Celery("peers", broker=BROKER)
app.conf.update(
    task_acks_late=True,  # at least once, as the dispatcher: a crash redelivers the task
    task_ignore_result=True,  # the attempt is recorded below
    broker_connection_retry_on_startup=True,
)
client = httpx.Client(
    timeout=httpx.Timeout(30.0, connect=5.0),
    limits=httpx.Limits(max_connections=_CONNECTIONS, max_keepalive_connections=_CONNECTIONS),
)
store = redis.Redis.from_url(BROKER)
_ECDSA = ec.ECDSA(hashes.SHA256())


def _load_key() -> tuple[ec.EllipticCurvePrivateKey | None, str]:
    path = os.environ.get("PEERS_KEY_FILE")
    if path is None:  # imported to publish only
        return None, ""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, os.environ["PEERS_KEY_ID"]


KEY, KEY_ID = _load_key()


def canonical(payload: dict[str, Any]) -> str:
    """Compact JSON, keys sorted, UTF-8 as is: the text that is signed."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sign(text: str) -> tuple[str, str]:
    """Base64 DER signature of `text`, and the same as base64 P1363 `r||s`."""
    assert KEY is not None
    der = KEY.sign(text.encode(), _ECDSA)
    r, s = decode_dss_signature(der)
    p1363 = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return base64.b64encode(der).decode(), base64.b64encode(p1363).decode()


def body_and_headers(message_id: str, text: str) -> tuple[bytes, dict[str, str]]:
    der, p1363 = sign(text)
    body = (
        f'{{"payload":{text},"signature":{json.dumps(der)},'
        f'"payloadAsString":{json.dumps(text, ensure_ascii=False)}}}'
    ).encode()
    headers = {
        "content-type": "application/json",
        "user-agent": "peers-celery/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(time.time())),
        "webhook-key-id": KEY_ID,
        "webhook-signature-algorithm": "ES256",
        "webhook-signature-p1363": p1363,
    }
    return body, headers


def deliver(url: str, message_id: str, message_type: str, details: str, timestamp: str) -> int:
    """Signs and POSTs one event to `url`; a non-2xx answer raises, so Celery retries."""
    payload = {
        "details": {**json.loads(details), "messageType": message_type},
        "messageId": message_id,
        "timestamp": timestamp,
    }
    body, headers = body_and_headers(message_id, canonical(payload))
    response = client.post(url, content=body, headers=headers)
    store.hset(ATTEMPTS_KEY, message_id, response.status_code)
    response.raise_for_status()
    return response.status_code


# The decorator form, without its untyped decorator: celery ships no type hints.
deliver_task = app.task(
    name=TASK,
    autoretry_for=(httpx.HTTPError,),
    retry_backoff=True,
    max_retries=8,
)(deliver)


def _ready(**_: object) -> None:
    """Tells `peers.py` that the worker consumes."""
    store.set(READY_KEY, "1")


worker_ready.connect(_ready, weak=False)
