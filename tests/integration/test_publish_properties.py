"""Property tests of both publish routes with arbitrary and hostile JSON as an event's details.

Hypothesis writes details texts: JSON values of every kind (strings with NUL and astral
characters, integers beyond 64 bits, every finite double), and hostile text that Python's
json cannot write: numbers that overflow a double (``1e999``), keys given twice (also once
plainly and once through escapes), lone surrogate escapes, nesting deep past every parser's
limit, broken JSON, details that are no object, details past 64 KiB. Each text is published
on one route of a real dispatcher (a ``PublishEvents`` stream, ``PublishEvent``, or
``POST /v1/events``) subscribed to by a real receiver, and:

- the answer is accepted (OK, ACCEPTED, 202) or a refusal naming the details
  (INVALID_ARGUMENT, REJECTED with INVALID_ARGUMENT, 400), never anything else;
- a reference reading of the rules (`judge`, independent of the dispatcher's parser) says
  which texts must be accepted, which must be refused, and which may go either way (a NUL
  character; a size near 64 KiB, which a route may measure as sent or as re-written);
- in the stream, each text travels between two good events that must be accepted, and the
  one stream goes on from case to case;
- whatever is accepted arrives signed at the receiver, with details equal to the published
  ones as JSON values (1 is not 1.0 nor true), and ``payload`` the signed text byte for byte.

Hypothesis runs in a worker thread while the test's event loop serves the calls (as in
test_grpc_fuzz); it is derandomized, without an example database, so every run tries the
same cases. A failing case shows its kind and its text, which is all it takes to replay it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import grpc
import pytest
from google.protobuf import timestamp_pb2

from dispatcher_service.server import RunningDispatcher
from tests.conftest import Tokens, report_cases
from tests.integration.conftest import auth, explore, field_violations, routed
from tests.integration.test_dispatcher import subscribe
from tests.receiver import ReceivedRequest, Receiver
from webhook_contracts import dotted, load_registry
from webhook_receiver import WebhookRejected, first_difference, verify_webhook
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub

from tests.hostile_details import (
    BYTE_EXACT_SIZES,
    GOOD_DETAILS,
    GRPC_RULES,
    HTTP_RULES,
    ISSUE_EXAMPLE,
    NOTE,
    RULE_EXAMPLES,
    TIMESTAMP,
    TYPE_MEMBER,
    Case,
    RouteRules,
    Verdict,
    case_kinds,
    judge,
    shown,
    sized,
    typed,
)

Result = pb.PublishResult
SQLITE = pytest.mark.parametrize("backend", ["sqlite"])
RECEIVER_PATH = "/notes"
PROBLEM = "application/problem+json"
ROUTES = ("stream", "unary", "http")
# Generated cases of each kind, per route (plus the explicit ones of RULE_EXAMPLES).
EXAMPLES_PER_KIND = 8
CALL_TIMEOUT = 10.0
# One case: its call, plus a slow CI machine's hiccup.
CASE_TIMEOUT = 3 * CALL_TIMEOUT
DELIVERY_TIMEOUT = 60.0

# --- the routes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    accepted: bool
    # The fields a refusal names.
    fields: tuple[str, ...]
    said: str


class Route(Protocol):
    name: str
    rules: RouteRules
    # Good events sent alongside the cases, by message id: the details they must arrive with.
    companions: dict[str, dict[str, Any]]

    async def publish(self, message_id: str, details: str) -> Answer:
        """Accepted or refused; any other answer fails."""

    async def finish(self) -> list[str]:
        """What went wrong with the route itself (a stream that did not go on)."""


def _published_at() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(TIMESTAMP.replace("Z", "+00:00")).astimezone(UTC))
    return stamp


def _event(message_id: str, details: str) -> pb.Event:
    return pb.Event(
        message_id=message_id, message_type=NOTE, details=details, timestamp=_published_at()
    )


StreamCall = grpc.aio.StreamStreamCall[pb.PublishEventsRequest, pb.PublishEventsResponse]


async def _ending(call: StreamCall) -> str:
    try:
        async with asyncio.timeout(2):
            code = await call.code()
            details = await call.details()
    except TimeoutError:
        call.cancel()
        return "no status within 2 s"
    return f"{code.name}: {(details or '')[:300]}"


class StreamRoute:
    """One PublishEvents stream for every case; each case travels in a batch between two
    good events. A stream that ended fails the case, and the next case opens another."""

    name = "stream"
    rules = GRPC_RULES

    def __init__(self, stub: DispatcherStub, token: str) -> None:
        self._stub = stub
        self._token = token
        self._call: StreamCall | None = None
        self.companions: dict[str, dict[str, Any]] = {}
        self.endings: list[str] = []

    async def publish(self, message_id: str, details: str) -> Answer:
        if self._call is None:
            self._call = self._stub.PublishEvents(None, metadata=auth(self._token))
        call = self._call
        before, after = f"{message_id}.before", f"{message_id}.after"
        good = json.dumps(GOOD_DETAILS)
        events = [_event(before, good), _event(message_id, details), _event(after, good)]
        response: object
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await call.write(pb.PublishEventsRequest(events=events))
                response = await call.read()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError) as error:
            response = error
        if not isinstance(response, pb.PublishEventsResponse):
            self._call = None
            ending = await _ending(call)
            self.endings.append(f"{message_id}: {ending}")
            raise AssertionError(f"the stream ended on this case's batch ({ending})")
        results = list(response.results)
        assert [r.message_id for r in results] == [before, message_id, after], results
        for companion in (results[0], results[2]):
            assert (companion.outcome, companion.deliveries) == (Result.OUTCOME_ACCEPTED, 1), (
                f"a good event beside the case was not accepted: {companion}"
            )
            self.companions[companion.message_id] = GOOD_DETAILS
        result = results[1]
        if (result.outcome, result.deliveries) == (Result.OUTCOME_ACCEPTED, 1):
            return Answer(True, (), "ACCEPTED")
        if result.outcome == Result.OUTCOME_REJECTED and result.error.code == "INVALID_ARGUMENT":
            fields = tuple(v.field for v in result.error.field_violations)
            return Answer(False, fields, f"REJECTED: {result.error.message[:200]}")
        raise AssertionError(f"the case was answered {result}")

    async def finish(self) -> list[str]:
        problems = [f"the stream ended at {ending}" for ending in self.endings]
        call, self._call = self._call, None
        if call is not None:
            await call.done_writing()
            left = await asyncio.wait_for(call.read(), CALL_TIMEOUT)
            if isinstance(left, pb.PublishEventsResponse):
                problems.append(f"an answer nobody asked for: {left}")
            if (code := await call.code()) != grpc.StatusCode.OK:
                problems.append(f"the stream ended {code.name}: {await call.details()}")
        return problems

    def cancel(self) -> None:
        """Ends a stream that a failed test left open."""
        if self._call is not None:
            self._call.cancel()


class UnaryRoute:
    name = "unary"
    rules = GRPC_RULES

    def __init__(self, stub: DispatcherStub, token: str) -> None:
        self._stub = stub
        self._token = token
        self.companions: dict[str, dict[str, Any]] = {}

    async def publish(self, message_id: str, details: str) -> Answer:
        request = pb.PublishEventRequest(event=_event(message_id, details))
        try:
            response = await self._stub.PublishEvent(
                request, metadata=auth(self._token), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            said = f"{error.code().name}: {(error.details() or '')[:200]}"
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise AssertionError(f"PublishEvent answered {said}") from None
            return Answer(False, tuple(field_violations(error)), said)
        result = response.result
        assert (result.outcome, result.deliveries) == (Result.OUTCOME_ACCEPTED, 1), result
        return Answer(True, (), "OK")

    async def finish(self) -> list[str]:
        return []


class HttpRoute:
    """POST /v1/events, the body written around the details text as it is."""

    name = "http"
    rules = HTTP_RULES

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str) -> None:
        self._session = session
        self._url = f"http://127.0.0.1:{port}/v1/events"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.companions: dict[str, dict[str, Any]] = {}

    async def publish(self, message_id: str, details: str) -> Answer:
        # The details first: text that is no JSON value cannot turn the body into an event.
        body = f'{{"details":{details},"messageId":"{message_id}","timestamp":"{TIMESTAMP}"}}'
        async with self._session.post(
            self._url, data=body.encode(), headers=self._headers
        ) as response:
            status, content_type, raw = (
                response.status,
                response.content_type,
                await response.read(),
            )
        if status == 202:
            answer = json.loads(raw)
            assert answer == {"messageId": message_id, "outcome": "accepted", "deliveries": 1}, (
                answer
            )
            return Answer(True, (), "202")
        if status == 400 and content_type == PROBLEM:
            problem = json.loads(raw)
            fields = tuple(str(error["field"]) for error in problem.get("errors", ()))
            return Answer(False, fields, f"400: {str(problem.get('detail'))[:200]}")
        raise AssertionError(f"POST /v1/events answered {status} {content_type}: {raw[:300]!r}")

    async def finish(self) -> list[str]:
        return []


_DETAILS_FIELD = re.compile(r"(?:event\.)?details(?:[.\[].*)?", re.DOTALL)


def names_details(rules: RouteRules, field: str) -> bool:
    return bool(_DETAILS_FIELD.fullmatch(field)) or (rules.may_name_body and field == "body")


@pytest.fixture
async def routes(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> AsyncIterator[dict[str, Route]]:
    """The three ways to publish to one dispatcher, whose receiver subscribes to NOTE."""
    await subscribe(stub, tokens.acme, receiver.url(RECEIVER_PATH), NOTE)
    await routed(dispatcher, "acme", NOTE, 1)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session:
        stream = StreamRoute(dispatcher_stub, tokens.acme_publisher)
        yield {
            "stream": stream,
            "unary": UnaryRoute(dispatcher_stub, tokens.acme_publisher),
            "http": HttpRoute(session, dispatcher.http_port, tokens.acme_publisher),
        }
        stream.cancel()


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest, routes: dict[str, Route]) -> Route:
    return routes[str(request.param)]


# --- what was published, and what must arrive ------------------------------------------


@dataclass
class Ledger:
    """Publishes cases, checks each answer against the rules, and then the deliveries."""

    # Message ids the dispatcher accepted, with the details receivers must get (None when
    # the rules say it should have been refused: that case has failed already).
    accepted: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    tally: Counter[str] = field(default_factory=Counter)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    async def publish(self, route: Route, case: Case) -> Answer:
        message_id = f"{route.name}-{next(self._numbers)}"
        judgement = judge(case.text, route.rules)
        try:
            answer = await route.publish(message_id, case.text)
        except Exception as error:
            error.add_note(f"publishing {message_id}: {case!r}")
            raise
        finally:
            self.accepted.update(route.companions)
        outcome = "accepted" if answer.accepted else "refused"
        family = case.kind.split("/")[0]
        self.tally[f"{family} {outcome}"] += 1
        where = f"{route.name} {case!r}, which {judgement.verdict.value}: {judgement.why}"
        if answer.accepted:
            self.accepted[message_id] = judgement.details
            assert judgement.verdict is not Verdict.REFUSE, f"accepted: {where}"
        else:
            assert judgement.verdict is not Verdict.ACCEPT, f"refused ({answer.said}): {where}"
            named = [f for f in answer.fields if not names_details(route.rules, f)]
            assert answer.fields, f"the refusal names no field ({answer.said}): {where}"
            assert not named, f"the refusal names {named}, not the details: {where}"
        return answer

    async def check_deliveries(self, receiver: Receiver, keys: Mapping[str, str]) -> int:
        """Waits for every accepted event; checks every delivery. Returns how many."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while missing := self.accepted.keys() - {
            r.headers["webhook-id"] for r in receiver.requests
        }:
            assert time.monotonic() < deadline, (
                f"{len(missing)} accepted events never arrived: {sorted(missing)[:5]}"
            )
            await asyncio.sleep(0.05)
        problems = []
        delivered = list(receiver.requests)
        for request in delivered:
            message_id = request.headers["webhook-id"]
            if message_id not in self.accepted:
                problems.append(f"{message_id} was delivered, but was never accepted")
            elif (details := self.accepted[message_id]) is not None:
                problems += _delivery_problems(request, message_id, details, keys)
        assert not problems, f"{len(problems)} of {len(delivered)} deliveries: {problems[:5]}"
        return len(delivered)


REGISTRY = load_registry()


def _delivery_problems(
    request: ReceivedRequest, message_id: str, details: dict[str, Any], keys: Mapping[str, str]
) -> list[str]:
    try:
        webhook = verify_webhook(
            request.body, keys[request.headers["webhook-key-id"]], registry=REGISTRY
        )
    except WebhookRejected as rejected:
        return [f"{message_id}: the receiver kit refuses it: {rejected!r}"]
    expected = {"details": details, "messageId": message_id, "timestamp": TIMESTAMP}
    if (where := first_difference(webhook.payload, expected)) is not None:
        text = shown(webhook.payload_as_string, 200)
        return [f"{message_id}: delivered otherwise at {dotted(where) or 'the root'}: {text}"]
    signed = webhook.payload_as_string.encode()
    if not request.body.startswith(b'{"payload":' + signed + b","):
        return [f"{message_id}: payload is not payloadAsString byte for byte"]
    return []


async def signing_keys(dispatcher_stub: DispatcherStub, token: str) -> dict[str, str]:
    listed = await dispatcher_stub.ListSigningKeys(
        pb.ListSigningKeysRequest(), metadata=auth(token)
    )
    return {key.key_id: key.public_key_pem for key in listed.keys}


def _flat(failure: BaseException) -> list[BaseException]:
    if isinstance(failure, BaseExceptionGroup):
        return [found for inner in failure.exceptions for found in _flat(inner)]
    return [failure]


def _message(failure: BaseException) -> str:
    """An assertion's message, without pytest's explanation of the expression after it."""
    return str(failure).split("\nassert ", 1)[0]


def _raise_together(where: str, failures: Sequence[BaseException]) -> None:
    """One AssertionError listing every failure, each with its falsifying example (pytest
    shows only the first exception of an ExceptionGroup); anything but a failed assertion
    is its cause, for its traceback."""
    flat = [found for failure in failures for found in _flat(failure)]
    described = [
        "\n".join(
            [
                f"{type(failure).__name__}: {_message(failure)}",
                *getattr(failure, "__notes__", ()),
            ]
        )
        for failure in flat
    ]
    unexpected = next((f for f in flat if not isinstance(f, AssertionError)), None)
    raise AssertionError(
        f"{len(flat)} failures on {where}:\n\n" + "\n\n".join(described)
    ) from unexpected


# --- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize("rules", [GRPC_RULES, HTTP_RULES], ids=["grpc", "http"])
def test_the_reference_rules_decide_the_documented_examples(rules: RouteRules) -> None:
    wrong = {
        name: judge(text, rules)
        for name, (text, verdict) in RULE_EXAMPLES.items()
        if judge(text, rules).verdict is not verdict
    }
    assert not wrong, wrong
    # gRPC adds the messageType that HTTP requires.
    expected = None if rules.requires_type else {"messageType": NOTE}
    assert judge("{}", rules).details == expected
    # Values compare as JSON: the reference keeps 1.0 a float and 2**63 - 1 an integer.
    assert judge(typed('"n":1.0', '"i":9223372036854775807'), rules).details == {
        "messageType": NOTE,
        "n": 1.0,
        "i": 2**63 - 1,
    }
    # gRPC's limit is the text as sent, to the byte; HTTP's is certain only well clear of it.
    limits = [judge(sized(size), rules).verdict for size in BYTE_EXACT_SIZES]
    if rules.sized_as_sent:
        assert limits == [Verdict.ACCEPT, Verdict.REFUSE]
    else:
        assert limits == [Verdict.EITHER, Verdict.EITHER]


@SQLITE
async def test_arbitrary_details_are_refused_cleanly_or_delivered_unchanged(
    route: Route, receiver: Receiver, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    ledger = Ledger()

    async def check(case: Case) -> None:
        await ledger.publish(route, case)

    explicit = [Case(f"rule/{name}", text) for name, (text, _) in RULE_EXAMPLES.items()]
    explicit += [Case(f"rule/{size} bytes", sized(size)) for size in BYTE_EXACT_SIZES]
    # Every case and kind is tried, and every delivery checked, even after a failure: the
    # failures are reported together.
    failures: list[Exception] = []
    for case in explicit:
        try:
            await check(case)
        except AssertionError as failure:
            failures.append(failure)
    ran = len(explicit)
    for strategy in case_kinds(with_type=route.rules.requires_type).values():
        try:
            ran += await explore(
                strategy, check, examples=EXAMPLES_PER_KIND, case_timeout=CASE_TIMEOUT
            )
        except Exception as failure:
            failures.append(failure)
    failures += [AssertionError(problem) for problem in await route.finish()]
    delivered = 0
    try:
        delivered = await ledger.check_deliveries(
            receiver, await signing_keys(dispatcher_stub, tokens.acme)
        )
    except AssertionError as failure:
        failures.append(failure)
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(ledger.tally.items()))
    report_cases(
        f"publish properties [{route.name}]: {ran} details texts ({counts}); "
        f"{delivered} deliveries verified"
    )
    if failures:
        _raise_together(route.name, failures)


async def _publish_then_a_good_event(
    route: Route, ledger: Ledger, cases: Mapping[str, str]
) -> dict[str, Answer]:
    """Publishes each case, then a good event that must go through as if nothing happened."""
    answers = {name: await ledger.publish(route, Case(name, text)) for name, text in cases.items()}
    after = await ledger.publish(route, Case("good", json.dumps(GOOD_DETAILS)))
    assert after.accepted, after
    return answers


@SQLITE
async def test_the_issues_deeply_nested_details_are_refused_and_publishing_goes_on(
    route: Route, receiver: Receiver, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    ledger = Ledger()
    answers = await _publish_then_a_good_event(route, ledger, {"the issue's": ISSUE_EXAMPLE})

    (answer,) = answers.values()
    assert not answer.accepted, answer
    # One stream carried both batches: the refusal did not end it.
    assert await route.finish() == []
    await ledger.check_deliveries(receiver, await signing_keys(dispatcher_stub, tokens.acme))


@SQLITE
async def test_a_number_beyond_a_double_is_refused_and_never_delivered_as_null(
    route: Route, receiver: Receiver, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    ledger = Ledger()
    cases = {
        "1e999": '{"amount": 1e999, "messageType": "event.note.created.v1"}',
        "-1e999": typed('"amount":-1e999'),
        "1E400 in an array": typed('"amounts":[1E400]'),
        "an integer of 400 digits as a float": typed('"amount":1' + "0" * 400 + ".0"),
    }
    answers = await _publish_then_a_good_event(route, ledger, cases)

    accepted = [name for name, answer in answers.items() if answer.accepted]
    assert not accepted, accepted
    if route.name == "http":
        assert all(answer.said.startswith("400") for answer in answers.values()), answers
    assert await route.finish() == []
    await ledger.check_deliveries(receiver, await signing_keys(dispatcher_stub, tokens.acme))
    assert all(b"null" not in r.body for r in receiver.requests)


REPEATED_KEYS = {
    "at the top, the same value": typed('"k":1', '"k":1'),
    "at the top, other values": typed('"k":1', '"k":"one"'),
    "in a nested object": typed('"a":{"k":[1],"k":[2]}'),
    "in an object in an array": typed('"a":[{"k":null,"k":null}]'),
    "once spelled in escapes": typed('"k":1', '"\\u006b":2'),
    "an astral key once as a surrogate pair": typed('"😀":1', '"\\ud83d\\ude00":2'),
    "an escaped NUL key": typed('"\\u0000":1', '"\\u0000":2'),
    "the messageType": "{" + TYPE_MEMBER + "," + TYPE_MEMBER + "}",
}


@SQLITE
async def test_a_repeated_key_is_refused_alike_on_every_route(
    routes: dict[str, Route], receiver: Receiver, dispatcher_stub: DispatcherStub, tokens: Tokens
) -> None:
    ledger = Ledger()
    named: dict[str, dict[str, tuple[str, ...]]] = {}
    for name, route in routes.items():
        answers = await _publish_then_a_good_event(route, ledger, REPEATED_KEYS)
        accepted = [case for case, answer in answers.items() if answer.accepted]
        assert not accepted, f"{name} accepted {accepted}"
        for case, answer in answers.items():
            named.setdefault(case, {})[name] = answer.fields

    # The same rule: each route names the same place.
    unlike = {case: fields for case, fields in named.items() if len(set(fields.values())) > 1}
    assert not unlike, unlike
    for route in routes.values():
        assert await route.finish() == [], route.name
    await ledger.check_deliveries(receiver, await signing_keys(dispatcher_stub, tokens.acme))
