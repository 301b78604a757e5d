"""`python -m webhook_receiver.demo` against a real dispatcher and subscription service.

The receiver runs as a child process on a free loopback port; it fetches the dispatcher's
public keys over HTTP like any receiver would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from dispatcher_service.keyring import KeyRing
from dispatcher_service.server import RunningDispatcher
from dispatcher_service.signing import SignatureAlgorithm
from tests.conftest import Tokens
from tests.integration.conftest import publish, routed
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_details, claim_event, subscribe
from webhook_receiver import (
    AsyncKeySet,
    PrivateKey,
    generate_ecdsa_key,
    key_id,
    payload_as_string,
    public_jwk,
    sign_payload,
)
from webhook_receiver.demo import DemoReceiver, create_app, jwks_url, main
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

KEEP_RECEIVED = 3


@pytest.fixture
def backend() -> str:
    """The receiver does not care where the platform stores its data: SQLite only."""
    return "sqlite"


@dataclass
class DemoProcess:
    process: asyncio.subprocess.Process
    port: int
    log: list[dict[str, Any]] = field(default_factory=list)
    raw_log: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def deliveries(self) -> list[dict[str, Any]]:
        return [line for line in self.log if line.get("event") == "delivery"]


async def _listening_port(stream: asyncio.StreamReader, seen: list[str]) -> int:
    deadline = time.monotonic() + 30
    while (remaining := deadline - time.monotonic()) > 0:
        line = await asyncio.wait_for(stream.readline(), remaining)
        if not line:
            break
        seen.append(line.decode())
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "listening":
                return int(entry["port"])
    raise AssertionError(f"the demo receiver did not report its port: {seen}")


@pytest.fixture
async def demo(dispatcher: RunningDispatcher) -> AsyncIterator[DemoProcess]:
    """The demo receiver, pointed at the dispatcher's HTTP surface."""
    env = {
        **os.environ,
        "DEMO_RECEIVER_ADDR": "127.0.0.1:0",
        "DEMO_RECEIVER_DISPATCHER_URL": f"http://127.0.0.1:{dispatcher.http_port}",
        "DEMO_RECEIVER_KEEP_RECEIVED": str(KEEP_RECEIVED),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webhook_receiver.demo", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = process.stderr
    try:
        raw: list[str] = []
        running = DemoProcess(process, await _listening_port(stderr, raw), raw_log=raw)

        async def drain() -> None:
            # Keeps reading so a full pipe never blocks it; EOF comes when it exits.
            async for line in stderr:
                running.raw_log.append(line.decode())
                with contextlib.suppress(ValueError):
                    running.log.append(json.loads(line))

        draining = asyncio.create_task(drain())
        yield running
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        await asyncio.wait_for(draining, 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def claim_payload(message_id: str, **details: Any) -> dict[str, Any]:
    return {
        "details": {**claim_details(), **details},
        "messageId": message_id,
        "timestamp": "2026-01-02T03:04:05.678Z",
        "user": {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"},
    }


def signed(
    keys: KeyRing,
    payload: Mapping[str, Any],
    algorithm: SignatureAlgorithm = SignatureAlgorithm.ECDSA_P256_SHA256,
) -> tuple[dict[str, Any], str]:
    """A delivery body signed by the dispatcher's own key, and that key's id."""
    text = payload_as_string(payload)
    signature = keys.sign(text, algorithm)
    body = {"payload": payload, "signature": signature.value_b64, "payloadAsString": text}
    return body, signature.key_id


async def post(
    session: aiohttp.ClientSession, url: str, body: Mapping[str, Any], kid: str | None
) -> tuple[int, dict[str, Any] | None]:
    headers = {"webhook-key-id": kid} if kid is not None else {}
    async with session.post(url, data=json.dumps(body), headers=headers) as response:
        answer = await response.json() if response.status != 204 else None
        return response.status, answer


async def received(session: aiohttp.ClientSession, demo: DemoProcess) -> list[dict[str, Any]]:
    async with session.get(demo.url("/received")) as response:
        assert response.status == 200
        listed: list[dict[str, Any]] = await response.json()
        return listed


async def test_an_event_published_to_the_platform_is_received_verified(
    demo: DemoProcess,
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    tokens: Tokens,
) -> None:
    await subscribe(stub, tokens.acme, demo.url("/webhooks"), CLAIM_CREATED)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    [[result]] = await publish(
        dispatcher_stub, tokens.acme_publisher, [claim_event("demo-1", claimRef="PRIVATE-REF")]
    )
    assert result.outcome == pb.PublishResult.OUTCOME_ACCEPTED
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 10
        while not (listed := await received(session, demo)):
            assert time.monotonic() < deadline, "the event did not reach the demo receiver"
            await asyncio.sleep(0.05)
        async with session.get(demo.url("/healthz")) as health:
            assert health.status == 200
    [event] = listed
    assert event["messageId"] == "demo-1"
    assert event["messageType"] == CLAIM_CREATED
    assert event["keyId"] == dispatcher.keys.active_key_id()
    assert event["verified"] is True
    assert event["contractChecked"] is True
    # The dispatcher recorded the receiver's 204 as a success.
    deliveries = await dispatcher_stub.ListDeliveries(
        pb.ListDeliveriesRequest(), metadata=(("authorization", f"Bearer {tokens.platform}"),)
    )
    assert [d.message_id for d in deliveries.deliveries] == ["demo-1"]
    [line] = demo.deliveries()
    assert (line["messageId"], line["messageType"], line["verdict"]) == (
        "demo-1",
        CLAIM_CREATED,
        "accepted",
    )
    assert not any("PRIVATE-REF" in text for text in demo.raw_log)


async def test_tampered_deliveries_are_refused_and_a_repeat_is_accepted_once(
    demo: DemoProcess, dispatcher: RunningDispatcher
) -> None:
    keys = dispatcher.keys
    url = demo.url("/webhooks")
    body, kid = signed(keys, claim_payload("direct-1", claimRef="PRIVATE-REF"))
    stranger = generate_ecdsa_key()
    stranger_signature = sign_payload(body["payloadAsString"], stranger)
    violating, violating_kid = signed(keys, claim_payload("direct-2", amount="PRIVATE-AMOUNT"))
    refused: dict[str, tuple[dict[str, Any], str | None]] = {
        "changed payloadAsString": (
            {**body, "payloadAsString": body["payloadAsString"].replace("1000", "1001")},
            kid,
        ),
        "changed payload": ({**body, "payload": claim_payload("direct-1", amount=1001)}, kid),
        "signature of another key": ({**body, "signature": stranger_signature}, kid),
        "unknown key id": ({**body, "signature": stranger_signature}, key_id(stranger)),
        "no key id": (body, None),
        "not a key id": (body, "../../openapi.json"),
        "contract violation": (violating, violating_kid),
        "not a webhook": ({"payload": "nothing signed"}, kid),
    }
    async with aiohttp.ClientSession() as session:
        for case, (bad, bad_kid) in refused.items():
            status, answer = await post(session, url, bad, bad_kid)
            assert status == 400, case
            assert answer is not None
            assert answer["verdict"] == "rejected", case
        assert (await post(session, url, body, kid))[0] == 204
        assert (await post(session, url, body, kid))[0] == 204
        # A key of the other algorithm: fetched by its id like the first.
        rsa_body, rsa_kid = signed(
            keys, claim_payload("direct-rsa"), SignatureAlgorithm.RSA_PKCS1_SHA256
        )
        assert rsa_kid != kid
        assert (await post(session, url, rsa_body, rsa_kid))[0] == 204
        assert [e["messageId"] for e in await received(session, demo)] == ["direct-1", "direct-rsa"]
        # The list keeps only the newest events.
        for number in range(KEEP_RECEIVED + 1):
            more, more_kid = signed(keys, claim_payload(f"more-{number}"))
            assert (await post(session, url, more, more_kid))[0] == 204
        listed = [e["messageId"] for e in await received(session, demo)]
        assert listed == [f"more-{n}" for n in range(1, KEEP_RECEIVED + 1)]

    verdicts = [(line.get("messageId"), line["verdict"]) for line in demo.deliveries()]
    assert verdicts[: len(refused)] == [(None, "rejected")] * len(refused)
    assert verdicts[len(refused) : len(refused) + 2] == [
        ("direct-1", "accepted"),
        ("direct-1", "duplicate"),
    ]
    contract_line = demo.deliveries()[list(refused).index("contract violation")]
    assert "payload.details.amount" in contract_line["reason"]
    assert not any("PRIVATE" in text for text in demo.raw_log)


@dataclass
class KeyServer:
    """Serves one public key in a JWKS as the dispatcher does, counting the requests."""

    key: PrivateKey
    requests: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response({"keys": [public_jwk(self.key)]})


async def test_keys_are_cached_by_id_and_an_unreachable_dispatcher_answers_503() -> None:
    key = generate_ecdsa_key()
    server = KeyServer(key)
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    keys_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            for base in (keys_url, "http://127.0.0.1:1"):
                async with AsyncKeySet(jwks_url(base)) as keys:
                    receiver = web.AppRunner(create_app(DemoReceiver(keys)))
                    await receiver.setup()
                    await web.TCPSite(receiver, "127.0.0.1", 0).start()
                    url = f"http://127.0.0.1:{receiver.addresses[0][1]}/webhooks"
                    try:
                        text = payload_as_string(claim_payload("cached-1"))
                        body = {
                            "payload": json.loads(text),
                            "signature": sign_payload(text, key),
                            "payloadAsString": text,
                        }
                        statuses = [
                            (await post(session, url, body, key_id(key)))[0] for _ in range(3)
                        ]
                    finally:
                        await receiver.cleanup()
                if base == keys_url:
                    assert statuses == [204, 204, 204]
                else:
                    assert statuses == [503, 503, 503]
    finally:
        await runner.cleanup()
    assert server.requests == ["/.well-known/jwks.json"]


def test_a_refused_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEMO_RECEIVER_LOG_LEVEL", "LOUD")
    assert main([]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("invalid DEMO_RECEIVER_* settings: DEMO_RECEIVER_LOG_LEVEL: ")
    assert "Value error" not in line
