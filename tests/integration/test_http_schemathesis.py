"""Schemathesis against the dispatcher's HTTP surface, on a running dispatcher.

Both services, a real receiver and the dispatcher run on loopback ports in a thread with its
own event loop (module scope): schemathesis' pytest integration calls the API synchronously.
The OpenAPI document is the one `/openapi.json` serves (the first test checks they are
equal); every call goes to the running server.

Per operation the examples, coverage and fuzzing phases run, with positive and negative
data; then the stateful phase follows the document's links (publish -> the contract of the
event, publish -> the same event again). Besides schemathesis' own checks, every publish is
checked against an oracle built from the document with `jsonschema`: a request the document
allows is answered 202 and its event later arrives at the receiver exactly as sent, signed;
any other is refused with the 4xx the document names, and nothing else ever arrives. No
answer may be a 5xx, and every call has a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import grpc
import hypothesis
import jsonschema
import pytest
import schemathesis
from referencing import Registry as ReferenceRegistry
from referencing.jsonschema import DRAFT202012

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from service_common.auth import hash_token
from subscription_service.server import RunningServer
from subscription_service.server import create_server as create_subscriptions
from subscription_service.settings import SubscriptionSettings
from tests.conftest import report_cases
from tests.receiver import Receiver
from webhook_contracts import build_openapi, load_registry
from webhook_contracts.explain import format_checker
from webhook_contracts.openapi_http import MAX_MESSAGE_ID_LENGTH, TENANT_PATTERN
from webhook_receiver import MalformedWebhook, parse_json, same_json, verify_webhook
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.subscription_service_pb2_grpc import (
        SubscriptionServiceAsyncStub as SubscriptionStub,
    )
else:
    from webhooks.v1.subscription_service_pb2_grpc import (
        SubscriptionServiceStub as SubscriptionStub,
    )

T = TypeVar("T")
Case = schemathesis.Case[Any]

TENANT = "acme"
PUBLISHER = "http-publisher-token"
WRITER = "http-writer-token"
PLATFORM = "http-platform-token"
SEED = 20260101
# Per operation: fuzzing draws this many cases (examples and coverage add their own).
FUZZ_EXAMPLES = 100
STATEFUL_SCENARIOS = 25
STATEFUL_STEPS = 6
# Runs of the state machine until it has done its scenarios (see the stateful test).
STATEFUL_RUNS = 4
CALL_TIMEOUT = 10.0
OPENAPI_URI = "urn:webhooks:openapi"
COMPONENTS = "#/components/schemas/"
BODY_POINTER = "/paths/~1v1~1events/post/requestBody/content/application~1json/schema"
PROBLEM = "application/problem+json"
# Patterns that together match every messageType (event.*, webhook.*).
EVERY_TYPE = sorted({f"{name.split('.')[0]}.*" for name in load_registry().message_types})
# Below these the run would not mean much (the seed is fixed, so these are stable).
MIN_CASES = {"examples": 1, "coverage": 100, "fuzzing": 100, "stateful": 20}
MIN_ACCEPTED = 30
MIN_REFUSED = 50


class Services:
    """Both services, a receiver subscribed to every event type of the tenant, in a thread."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.subscriptions: RunningServer | None = None
        self.dispatcher: RunningDispatcher | None = None
        self.receiver: Receiver | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def base_url(self) -> str:
        assert self.dispatcher is not None
        return f"http://127.0.0.1:{self.dispatcher.http_port}"

    async def start(self) -> None:
        tokens = self._directory / "tokens.json"
        tokens.write_text(
            json.dumps(
                {
                    "tokens": [
                        {"sha256": hash_token(PUBLISHER), "tenant": TENANT, "scopes": ["publish"]},
                        {
                            "sha256": hash_token(WRITER),
                            "tenant": TENANT,
                            "scopes": ["subscriptions:write", "deliveries:read"],
                        },
                        {"sha256": hash_token(PLATFORM), "tenant": "*", "scopes": ["admin"]},
                    ]
                }
            )
        )
        platform_token = self._directory / "platform-token"
        platform_token.write_text(PLATFORM)
        self.subscriptions = await create_subscriptions(
            SubscriptionSettings(
                grpc_addr="127.0.0.1:0",
                database_url=f"sqlite:///{self._directory / 'subscriptions.db'}",
                auth_tokens_file=tokens,
                shutdown_grace_seconds=1,
            )
        )
        self.receiver = Receiver()
        await self.receiver.start()
        self.dispatcher = await create_dispatcher(
            DispatcherSettings(
                grpc_addr="127.0.0.1:0",
                http_addr="127.0.0.1:0",
                database_url=f"sqlite:///{self._directory / 'dispatcher.db'}",
                auth_tokens_file=tokens,
                subscriptions_addr=f"127.0.0.1:{self.subscriptions.port}",
                subscriptions_token_file=platform_token,
                allowed_target_networks="127.0.0.0/8",
                signing_keys_dir=self._directory / "signing-keys",
                retry_schedule="0s,0.2s,0.2s,0.2s",
                connect_timeout_seconds=1,
                attempt_timeout_seconds=2,
                poll_interval_seconds=0.05,
                shutdown_grace_seconds=1,
            )
        )
        await asyncio.wait_for(self.dispatcher.follower.ready.wait(), 10)
        await self._subscribe_receiver_to_everything()

    async def _subscribe_receiver_to_everything(self) -> None:
        assert self.subscriptions is not None
        assert self.receiver is not None
        assert self.dispatcher is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.subscriptions.port}") as channel:
            await SubscriptionStub(channel).CreateSubscription(
                sub_pb.CreateSubscriptionRequest(
                    subscription=sub_pb.Subscription(
                        url=self.receiver.url("/all"), message_types=EVERY_TYPE
                    )
                ),
                metadata=(("authorization", f"Bearer {WRITER}"),),
            )
        deadline = time.monotonic() + 10
        while not self.dispatcher.follower.routes_for(TENANT, "event.claim.created.v1"):
            assert time.monotonic() < deadline, "the routing table did not catch up"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop(0)
        if self.receiver is not None:
            await self.receiver.stop()
        if self.subscriptions is not None:
            await self.subscriptions.stop(0)

    def close(self) -> None:
        try:
            self.run(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


@dataclass
class Ledger:
    """What the API answered, to check against what the receiver got."""

    # messageId -> the body of the publish that stored it (outcome accepted).
    accepted: dict[str, Any] = field(default_factory=dict)
    duplicates: int = 0
    refused: int = 0
    cases: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)
    serial: int = 0

    def make_unique(self, case: Case) -> None:
        """Gives a publishable body a messageId of its own, so that each accepted case is an
        event to look for at the receiver (generated ids repeat: "0", "!", ...). Duplicates
        still happen on purpose: the stateful phase publishes the same body again."""
        body = case.body
        if case.operation.label != "POST /v1/events" or not PUBLISH_BODY.is_valid(body):
            return
        assert isinstance(body, dict)
        message_id = str(body["messageId"])
        self.serial += 1
        suffix = f"~{self.serial}"
        # Explicit examples are the same case object each run: replace an earlier suffix.
        given = re.sub(r"~[0-9]+$", "", message_id) or message_id
        body["messageId"] = given[: MAX_MESSAGE_ID_LENGTH - len(suffix)] + suffix

    def record(self, case: Case, response: schemathesis.Response) -> None:
        """Counts the case, and checks the answer against what the document says it must be."""
        assert case.meta is not None
        self.cases[case.meta.phase.name.value] += 1
        self.statuses[response.status_code] += 1
        assert response.status_code < 500, _explain(response)
        if case.operation.label == "POST /v1/events":
            self._check_publish(response)

    def _check_publish(self, response: schemathesis.Response) -> None:
        expected, body = _expected_publish(response.request)
        if expected != {202}:
            assert response.status_code in expected, _explain(response)
            assert response.headers["content-type"] == [PROBLEM], _explain(response)
            self.refused += 1
            return
        assert response.status_code == 202, _explain(response)
        answer = json.loads(response.content)
        assert isinstance(body, dict)
        message_id = body["messageId"]
        assert answer["messageId"] == message_id
        if answer["outcome"] == "accepted":
            assert message_id not in self.accepted, "accepted twice"
            assert answer["deliveries"] == 1, _explain(response)  # the receiver's subscription
            self.accepted[message_id] = body
        else:
            assert answer == {"messageId": message_id, "outcome": "duplicate", "deliveries": 0}
            assert message_id in self.accepted, "a duplicate of nothing stored"
            self.duplicates += 1


def _expected_publish(request: Any) -> tuple[set[int], object]:
    """The statuses the document allows for a publish request as it was sent, and its body.

    A request with several faults may be refused for any of them (the document does not say
    which is checked first), except that a caller who is not authenticated learns only that.
    """
    if request.method != "POST":
        return {405}, None
    if request.headers.get("Authorization") != f"Bearer {PUBLISHER}":
        return {401}, None
    faults: set[int] = set()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query, keep_blank_values=True)
    tenants = query.get("tenant", [TENANT])
    if len(tenants) != 1 or not re.fullmatch(TENANT_PATTERN, tenants[0]):
        faults.add(400)
    elif tenants[0] != TENANT:
        faults.add(403)
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        faults.add(415)
    body: object = None
    try:
        body = parse_json(request.body or b"", what="the body")
    except MalformedWebhook:
        faults.add(400)
    else:
        if not PUBLISH_BODY.is_valid(body):
            faults.add(400)
    return faults or {202}, body


class DocumentedBody:
    """Whether a publish body is one the document allows, checked with `jsonschema`.

    The same answer as the document's `oneOf` of one variant per messageType, faster: every
    variant pins `details.messageType` to its own name, so only that variant can match.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        resources: ReferenceRegistry[Any] = ReferenceRegistry().with_resource(
            OPENAPI_URI, DRAFT202012.create_resource(document)
        )

        def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
            return jsonschema.Draft202012Validator(
                schema, registry=resources, format_checker=format_checker()
            )

        publish = document["paths"]["/v1/events"]["post"]["requestBody"]
        schema = publish["content"]["application/json"]["schema"]
        # What applies to every variant (inline, without references), then each variant as
        # the document has it (its reference and what the document adds beside it).
        self._limits = validator({key: value for key, value in schema.items() if key != "oneOf"})
        self._variants = {
            variant["$ref"].removeprefix(COMPONENTS).removesuffix(".payload"): validator(
                {"$ref": f"{OPENAPI_URI}#{BODY_POINTER}/oneOf/{index}"}
            )
            for index, variant in enumerate(schema["oneOf"])
        }

    def is_valid(self, body: object) -> bool:
        if not isinstance(body, dict) or not isinstance(body.get("details"), dict):
            return False
        message_type = body["details"].get("messageType")
        variant = self._variants.get(message_type) if isinstance(message_type, str) else None
        return variant is not None and self._limits.is_valid(body) and variant.is_valid(body)


PUBLISH_BODY = DocumentedBody(build_openapi())


def _explain(response: schemathesis.Response) -> str:
    request = response.request
    return (
        f"{request.method} {request.url} {request.body!r:.600}\n"
        f"-> {response.status_code} {response.content[:600]!r}"
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    running = Services(tmp_path_factory.mktemp("http-schemathesis"))
    try:
        running.run(running.start())
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": CALL_TIMEOUT,
            "generation": {
                "mode": "all",
                "max-examples": FUZZ_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # A failure is reported as found: replaying it against a server whose state
                # has moved on would not shrink it reliably anyway.
                "no-shrink": True,
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": STATEFUL_STEPS},
            },
            "auth": {"openapi": {"bearerAuth": {"bearer": PUBLISHER}}},
            # The token's own tenant: events for others are refused (403, test_http_api
            # covers that), which would leave few bodies to reach the contract checks.
            "parameters": {"query.tenant": TENANT},
        }
    )


# Loaded at collection, before any server runs: schemathesis' loader for a schema that a
# fixture provides (`schemathesis.pytest.from_fixture`) fails under pytest 9.2 (it sets
# `Node._nodeid`, which pytest 9.2 no longer has). So the document is built in-process, the
# first test checks the running server serves exactly it, and each call names the server.
schema = schemathesis.openapi.from_dict(build_openapi(), config=_config())


def test_the_running_server_serves_the_document_under_test(services: Services) -> None:
    async def served() -> tuple[int, object]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session,
            session.get(f"{services.base_url}/openapi.json") as response,
        ):
            return response.status, await response.json()

    assert services.run(served()) == (200, schema.raw_schema)


@schema.parametrize()
def test_every_operation_answers_as_its_document_says(
    case: Case, services: Services, ledger: Ledger
) -> None:
    ledger.make_unique(case)
    response = case.call(base_url=services.base_url, timeout=CALL_TIMEOUT)
    ledger.record(case, response)
    case.validate_response(response)


def test_stateful_scenarios_along_the_documents_links(services: Services, ledger: Ledger) -> None:
    failures: list[BaseException] = []
    scenarios = [0]

    class Scenarios(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": services.base_url, "timeout": CALL_TIMEOUT}

        def validate_response(
            self, response: schemathesis.Response, case: Case, **kwargs: Any
        ) -> None:
            try:
                ledger.record(case, response)
                super().validate_response(response, case, **kwargs)
            except Exception as failure:
                failures.append(failure)
                raise

        def teardown(self) -> None:
            scenarios[0] += 1

    for _ in range(STATEFUL_RUNS):
        try:
            Scenarios.run(settings=_stateful_settings(STATEFUL_SCENARIOS - scenarios[0]))
        except hypothesis.errors.FlakyStrategyDefinition:
            # Schemathesis decides whether to use each value a link provides with a random
            # source outside Hypothesis, so Hypothesis may find that the same choices drew
            # differently and stop the run (the schemathesis CLI carries on the same way).
            # A failure found before that is still a failure.
            if failures:
                raise failures[0] from None
            continue
        break
    assert not failures


def _stateful_settings(scenarios: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=max(scenarios, 1),
        stateful_step_count=STATEFUL_STEPS,
        derandomize=True,
        database=None,
        deadline=None,
        # A failure is reported as found: replaying it against a server whose state has
        # moved on would not shrink it reliably anyway.
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )


def test_accepted_events_arrive_exactly_as_sent_and_nothing_else_does(
    services: Services, ledger: Ledger
) -> None:
    assert len(ledger.accepted) >= MIN_ACCEPTED, "run the whole module: too few events accepted"
    receiver = services.receiver
    assert receiver is not None
    assert services.dispatcher is not None
    services.run(receiver.wait_for(len(ledger.accepted), within=30), timeout=40)
    time.sleep(0.5)  # anything that should not arrive has had its chance too
    arrived = list(receiver.requests)
    delivered: collections.Counter[str] = collections.Counter()
    for request in arrived:
        key = services.dispatcher.keys.public_key(request.headers["webhook-key-id"])
        assert key is not None
        webhook = verify_webhook(request.body, key.public_key_pem)
        delivered[webhook.message_id] += 1
        sent = ledger.accepted.get(webhook.message_id)
        assert sent is not None, f"delivered but never accepted: {webhook.message_id!r}"
        assert same_json(dict(webhook.payload), sent), webhook.message_id
    assert set(delivered) == set(ledger.accepted)
    assert max(delivered.values()) == 1, "an event arrived twice"


def test_the_run_was_big_enough_to_mean_something(ledger: Ledger) -> None:
    seconds = time.monotonic() - ledger.started
    report_cases(
        f"schemathesis: {dict(ledger.cases)} cases in {seconds:.1f}s; "
        f"statuses {dict(sorted(ledger.statuses.items()))}; "
        f"{len(ledger.accepted)} events accepted and delivered, "
        f"{ledger.duplicates} duplicates, {ledger.refused} publishes refused"
    )
    for phase, minimum in MIN_CASES.items():
        assert ledger.cases[phase] >= minimum, (phase, dict(ledger.cases))
    assert ledger.refused >= MIN_REFUSED
    assert ledger.duplicates >= 1
