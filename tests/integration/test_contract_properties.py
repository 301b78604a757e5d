"""Property tests through gRPC: details generated from every contract (hypothesis-jsonschema)
are accepted by a real dispatcher, stored, signed and delivered to a real receiver exactly
as the canonical serialiser writes them; mutated events are refused one by one, naming the
field, and are never stored nor delivered.

The services are async fixtures and hypothesis drives sync functions, so the cases are
generated first (a module fixture runs one ``@given`` function per messageType that only
records what it is given; generation only, derandomized, no example database) and then
published in one ``PublishEvents`` stream by the async test. A failing case is reported
with its messageType, its kind and its JSON text, which is all it takes to replay it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pytest
import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dispatcher_service.ingest import MAX_DETAILS_BYTES
from dispatcher_service.server import RunningDispatcher
from tests.conftest import Tokens, report_cases
from tests.integration.conftest import auth, publish
from tests.receiver import ReceivedRequest, Receiver
from webhook_contracts import Part, Registry, load_registry
from webhook_contracts.formats import FORMAT_CHECKS
from webhook_contracts.testing import dereferenced, details, timestamps
from webhook_receiver import payload_as_string, same_json, verify_signature, verify_webhook
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub

T = TypeVar("T")
Result = pb.PublishResult
Details = dict[str, Any]

REGISTRY: Registry = load_registry()
MESSAGE_TYPES = sorted(REGISTRY.message_types)
# Generated valid details per messageType, and rounds of mutations (each round mutates one
# generated example of the type in every applicable way).
EXAMPLES_PER_TYPE = 4
MUTATION_ROUNDS = 2
# Formats the contracts assert, and how their values are generated: hypothesis-jsonschema's
# own strategy for `date`, `webhook_contracts.testing.timestamps()` for `date-time` (the
# contracts want exactly one shape: UTC, milliseconds, `Z`).
GENERATED_FORMATS = frozenset({"date", "date-time"})
GENERATION = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
# Two subscriptions receive every type: one by prefix patterns (ECDSA), one listing every
# exact type (RSA), so each valid event is delivered twice and both algorithms are verified.
PATTERNS_PATH = "/patterns"
EXACT_PATH = "/exact"
PATHS = (PATTERNS_PATH, EXACT_PATH)
BATCH_EVENTS = 100
BATCH_BYTES = 1_500_000
PADDING_FIELD = "padding"
PADDING_CHARACTERS = ("x", "é", "€", "😀")  # 1 to 4 UTF-8 bytes each
USER = pb.EventUser(id="USER_ID", pool_id="POOL_ID", originator="ClientAPI")

# How a publisher may write the same details; the signed text must not depend on it.
ENCODINGS: dict[str, Callable[[object], str]] = {
    "json": json.dumps,
    "json-unicode-indented": lambda value: json.dumps(value, ensure_ascii=False, indent=2),
    "json-sorted-compact": lambda value: json.dumps(value, sort_keys=True, separators=(",", ":")),
    "orjson": lambda value: orjson.dumps(value).decode(),
}


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _drop_last(text: str) -> str:
    return text[:-1]


def _trailing_brace(text: str) -> str:
    return text + "}"


def _trailing_comma(text: str) -> str:
    return text[:-1] + ",}"


def _nan_value(text: str) -> str:
    return text[:-1] + ',"broken":NaN}'


def _infinite_number(text: str) -> str:
    return text[:-1] + ',"broken":1e400}'


def _lone_surrogate(text: str) -> str:
    return text[:-1] + ',"broken":"\\ud800"}'


def _single_quotes(text: str) -> str:
    return text.replace('"', "'")


def _as_array(text: str) -> str:
    return f"[{text}]"


def _as_string(text: str) -> str:
    return json.dumps(text)


def _empty(text: str) -> str:
    return ""


# Ways to break the JSON text of valid details (or make it something else than an object).
BREAKERS: dict[str, Callable[[str], str]] = {
    "truncated": _drop_last,
    "trailing-brace": _trailing_brace,
    "trailing-comma": _trailing_comma,
    "nan": _nan_value,
    "infinite-number": _infinite_number,
    "lone-surrogate": _lone_surrogate,
    "single-quotes": _single_quotes,
    "array": _as_array,
    "string": _as_string,
    "empty": _empty,
}
# Breakers whose text is JSON with one value it cannot carry: the refusal names that value.
VALUE_BREAKERS = {"nan", "infinite-number", "lone-surrogate"}

# JSON values by kind, for giving a field a value of a kind its schema forbids. Numbers are
# non-integral only: 3.0 is an integer to JSON Schema.
JSON_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=8),
    "integer": st.integers(-(10**9), 10**9),
    "number": st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda number: not number.is_integer()
    ),
    "boolean": st.booleans(),
    "null": st.none(),
    "array": st.lists(st.integers(0, 9), max_size=2),
    "object": st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
}


@dataclass(frozen=True)
class Valid:
    """Valid details of one type, how they are published, and what the payload must be."""

    kind: str
    message_type: str
    details: Details
    text: str
    timestamp: str | None
    user: Mapping[str, str] | None

    def event(self, message_id: str) -> pb.Event:
        event = pb.Event(message_id=message_id, message_type=self.message_type, details=self.text)
        if self.timestamp is not None:
            moment = datetime.fromisoformat(self.timestamp.replace("Z", "+00:00"))
            event.timestamp.CopyFrom(_proto_timestamp(moment))
        if self.user is not None:
            event.user.CopyFrom(
                pb.EventUser(
                    id=self.user["id"],
                    pool_id=self.user["poolId"],
                    originator=self.user["originator"],
                )
            )
        return event

    def payload(self, message_id: str, timestamp: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "details": self.details,
            "messageId": message_id,
            "timestamp": self.timestamp or timestamp,
        }
        if self.user is not None:
            payload["user"] = dict(self.user)
        return payload


@dataclass(frozen=True)
class Mutated:
    """An invalid event and the field its refusal must name."""

    kind: str
    message_type: str
    text: str
    field: str
    # Whether the error must name that field only (the rest of the event being valid).
    only: bool = True

    def event(self, message_id: str) -> pb.Event:
        return pb.Event(
            message_id=message_id, message_type=self.message_type, details=self.text, user=USER
        )

    def describe(self) -> str:
        shown = self.text if len(self.text) < 300 else f"{self.text[:300]}... ({len(self.text)})"
        return f"{self.kind} of {self.message_type}: {shown}"


@dataclass(frozen=True)
class Cases:
    valid: tuple[Valid, ...]
    mutated: tuple[Mutated, ...]


def _proto_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _collect(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` values of `strategy`, the same ones on every run."""
    found: list[T] = []

    @settings(GENERATION, max_examples=count)
    @given(strategy)
    def record(value: T) -> None:
        found.append(value)

    record()
    return found


def _details_schema(message_type: str) -> dict[str, Any]:
    return dereferenced(REGISTRY, Part.DETAILS.schema_uri(message_type))


def _walk(node: Any) -> Iterable[Mapping[str, Any]]:
    """`node` and the schemas it is the conjunction of."""
    if isinstance(node, Mapping):
        yield node
        for part in node.get("allOf", ()):
            yield from _walk(part)


def _kinds(schema: Any) -> set[str]:
    kinds: set[str] = set()
    for node in _walk(schema):
        kind = node.get("type")
        kinds.update([kind] if isinstance(kind, str) else kind or ())
    return kinds


def documented_fields(message_type: str) -> dict[str, str]:
    """The JSON kind of every documented detail field (its own or a common identifier)."""
    kinds: dict[str, set[str]] = {}
    for node in _walk(_details_schema(message_type)):
        for name, schema in node.get("properties", {}).items():
            kinds.setdefault(name, set()).update(_kinds(schema))
    return {
        name: next(iter(found))
        for name, found in sorted(kinds.items())
        if name != "messageType" and len(found) == 1
    }


def required_fields(message_type: str) -> list[str]:
    """The detail fields the contract requires, messageType aside (ingestion fills it in)."""
    required: list[str] = []
    for node in _walk(_details_schema(message_type)):
        required += [name for name in node.get("required", ()) if name not in required]
    return [name for name in required if name != "messageType"]


def wrong_values(kind: str) -> st.SearchStrategy[Any]:
    allowed = {kind, "integer"} if kind == "number" else {kind}
    return st.one_of([strategy for name, strategy in JSON_KINDS.items() if name not in allowed])


def users() -> st.SearchStrategy[dict[str, str] | None]:
    text = st.text(max_size=12)
    return st.none() | st.fixed_dictionaries({"id": text, "poolId": text, "originator": text})


def valid_cases(message_type: str) -> list[Valid]:
    generated = st.tuples(
        details(message_type, registry=REGISTRY),
        st.none() | timestamps(),
        users(),
        st.sampled_from(sorted(ENCODINGS)),
    )
    return [
        Valid(f"generated/{encoding}", message_type, value, ENCODINGS[encoding](value), at, user)
        for value, at, user, encoding in _collect(generated, EXAMPLES_PER_TYPE)
    ]


def padded(details: Details, *, size: int, character: str) -> str:
    """The compact text of `details` plus a padding field, `size` UTF-8 bytes in all."""
    empty = _compact({**details, PADDING_FIELD: ""})
    room = size - len(empty.encode())
    width = len(character.encode())
    text = _compact({**details, PADDING_FIELD: character * (room // width) + "x" * (room % width)})
    assert len(text.encode()) == size, (size, len(text.encode()))
    return text


def at_the_limit(message_type: str, base: Details, index: int) -> Valid:
    """Valid details of exactly MAX_DETAILS_BYTES bytes (fewer characters when multi-byte)."""
    character = PADDING_CHARACTERS[index % len(PADDING_CHARACTERS)]
    text = padded(base, size=MAX_DETAILS_BYTES, character=character)
    return Valid(f"at-limit/{character}", message_type, json.loads(text), text, None, None)


def without_required(message_type: str, bases: Sequence[Details]) -> list[Mutated]:
    """Each generated example without each of its type's required fields, in turn."""
    return [
        Mutated(
            "required-removed",
            message_type,
            _compact({name: value for name, value in base.items() if name != field}),
            f"details.{field}",
        )
        for base in bases
        for field in required_fields(message_type)
    ]


def mutations(message_type: str, bases: Sequence[Details]) -> st.SearchStrategy[list[Mutated]]:
    """Mutants of one generated example of `message_type`: each documented field given a
    value of a wrong kind; the example under an unknown type and under another known type;
    padded beyond MAX_DETAILS_BYTES; its JSON text broken."""
    fields = documented_fields(message_type)
    others = [name for name in MESSAGE_TYPES if name != message_type]
    family = message_type.rsplit(".", 1)[0]

    @st.composite
    def mutate(draw: st.DrawFn) -> list[Mutated]:
        base = draw(st.sampled_from(bases))
        found: list[Mutated] = []
        for field, kind in sorted(fields.items()):
            wrong = _compact({**base, field: draw(wrong_values(kind))})
            found.append(Mutated(f"wrong-type/{kind}", message_type, wrong, f"details.{field}"))
        unknown = draw(
            st.integers(2, 999).map(lambda n: f"{family}.v{n}").filter(lambda n: n not in REGISTRY)
        )
        named = {**base, "messageType": unknown} if draw(st.booleans()) else base
        found.append(Mutated("unknown-type", unknown, _compact(named), "message_type"))
        other = draw(st.sampled_from(others))
        found.append(
            Mutated("mismatched-type", other, _compact(base), "details.messageType", only=False)
        )
        size = MAX_DETAILS_BYTES + draw(st.integers(1, 4096))
        character = draw(st.sampled_from(PADDING_CHARACTERS))
        text = padded(base, size=size, character=character)
        found.append(Mutated(f"oversize/{character}", message_type, text, "details"))
        breaker = draw(st.sampled_from(sorted(BREAKERS)))
        broken = BREAKERS[breaker](ENCODINGS[draw(st.sampled_from(sorted(ENCODINGS)))](base))
        field = "details.broken" if breaker in VALUE_BREAKERS else "details"
        found.append(Mutated(f"broken-json/{breaker}", message_type, broken, field))
        return found

    return mutate()


def _check_locally(mutated: Mutated) -> None:
    """A removed or wrongly typed field is what the contract itself refuses, and only it."""
    if not mutated.kind.startswith(("required-removed", "wrong-type")):
        return
    payload = {
        "details": json.loads(mutated.text),
        "messageId": "local",
        "timestamp": "2021-10-14T15:33:16.848Z",
    }
    paths = {v.path for v in REGISTRY.get(mutated.message_type).violations(payload)}
    assert paths == {f"payload.{mutated.field}"}, mutated.describe()


@pytest.fixture(scope="module")
def cases() -> Cases:
    valid: list[Valid] = []
    mutated: list[Mutated] = []
    for index, message_type in enumerate(MESSAGE_TYPES):
        generated = valid_cases(message_type)
        assert generated, f"nothing generated for {message_type}"
        for case in generated:
            payload = case.payload("generated", "2021-10-14T15:33:16.848Z")
            assert not REGISTRY.get(message_type).violations(payload), case
        valid += generated
        valid.append(at_the_limit(message_type, generated[0].details, index))
        bases = [case.details for case in generated]
        mutated += without_required(message_type, bases)
        for round_ in _collect(mutations(message_type, bases), MUTATION_ROUNDS):
            mutated += round_
    for mutant in mutated:
        _check_locally(mutant)
    return Cases(tuple(valid), tuple(mutated))


def _formats(node: object) -> set[str]:
    if isinstance(node, Mapping):
        own = {node["format"]} if isinstance(node.get("format"), str) else set()
        return own.union(*(_formats(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_formats(value) for value in node))
    return set()


def test_every_format_the_contracts_assert_has_a_generator() -> None:
    used = _formats(dict(REGISTRY.documents.by_id()))
    assert used <= GENERATED_FORMATS, f"no generator for {sorted(used - GENERATED_FORMATS)}"
    assert set(FORMAT_CHECKS) <= GENERATED_FORMATS


def test_every_contract_leaves_room_for_padding_and_documents_fields() -> None:
    for message_type in MESSAGE_TYPES:
        fields = documented_fields(message_type)
        assert fields, f"{message_type} documents no field to mistype"
        assert PADDING_FIELD not in fields
        schema = _details_schema(message_type)
        assert all(node.get("additionalProperties") in (None, True) for node in _walk(schema))


async def _subscribe(stub: Stub, token: str, url: str, types: Sequence[str], **more: Any) -> None:
    await stub.CreateSubscription(
        sub_pb.CreateSubscriptionRequest(
            subscription=sub_pb.Subscription(url=url, message_types=list(types), **more)
        ),
        metadata=auth(token),
    )


async def _routed(dispatcher: RunningDispatcher, count: int) -> None:
    deadline = time.monotonic() + 10
    while any(len(dispatcher.follower.routes_for("acme", t)) != count for t in MESSAGE_TYPES):
        assert time.monotonic() < deadline, "the routing table did not catch up"
        await asyncio.sleep(0.02)


def _batches(events: Sequence[pb.Event]) -> list[list[pb.Event]]:
    batches: list[list[pb.Event]] = [[]]
    size = 0
    for event in events:
        weight = event.ByteSize()
        if batches[-1] and (len(batches[-1]) == BATCH_EVENTS or size + weight > BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(event)
        size += weight
    return batches


async def _arrived(receiver: Receiver, expected: set[tuple[str, str]], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        seen = {(r.path, r.headers["webhook-id"]) for r in receiver.requests}
        if expected <= seen:
            return
        missing = sorted(expected - seen)
        assert time.monotonic() < deadline, f"{len(missing)} deliveries missing: {missing[:5]}"
        await asyncio.sleep(0.05)


async def _all_deliveries(dispatcher_stub: DispatcherStub, token: str) -> list[pb.Delivery]:
    found: list[pb.Delivery] = []
    page = ""
    while True:
        listed = await dispatcher_stub.ListDeliveries(
            pb.ListDeliveriesRequest(page_size=1000, page_token=page), metadata=auth(token)
        )
        found += listed.deliveries
        if not (page := listed.next_page_token):
            return found


def _stored_payloads(dispatcher: RunningDispatcher) -> dict[str, str]:
    # The events table keeps, per event, the exact text that is signed and delivered.
    with dispatcher.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT message_id, payload FROM events")).all()
    return {str(message_id): str(payload) for message_id, payload in rows}


def _iso_millis(moment: float) -> str:
    at = datetime.fromtimestamp(moment, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _check_delivery(
    request: ReceivedRequest,
    case: Valid,
    *,
    keys: Mapping[str, str],
    stored: str,
    published: tuple[str, str],
) -> None:
    message_id = request.headers["webhook-id"]
    where = f"{case.kind} {case.message_type} {message_id} at {request.path}: {case.text[:300]}"
    pem = keys[request.headers["webhook-key-id"]]
    body = json.loads(request.body)
    # The type's contract (the webhook envelope included) on the whole body.
    REGISTRY.get(case.message_type).validate_webhook(body)
    # Signature, payloadAsString against payload, contract: the receiver kit's own checks.
    webhook = verify_webhook(request.body, pem, registry=REGISTRY)
    verify_signature(body["payloadAsString"], body["signature"], pem)
    signed = webhook.payload_as_string
    assert webhook.contract_checked, where
    assert signed == stored, f"delivered text differs from the stored one: {where}"
    assert same_json(body["payload"], json.loads(signed)), where
    assert request.body.startswith(b'{"payload":' + signed.encode() + b","), where
    assert webhook.message_id == message_id, where
    assert webhook.message_type == case.message_type, where
    timestamp = webhook.timestamp
    if case.timestamp is None:
        assert published[0] <= timestamp <= published[1], where
    # Byte for byte what the ingest's canonical serialiser makes of what was published.
    assert signed == payload_as_string(case.payload(message_id, timestamp)), where
    assert same_json(webhook.details, case.details), where


async def test_generated_events_of_every_type_are_delivered_signed_and_mutants_never_are(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
    cases: Cases,
) -> None:
    prefixes = sorted({name.split(".", 1)[0] + ".*" for name in MESSAGE_TYPES})
    await _subscribe(stub, tokens.acme, receiver.url(PATTERNS_PATH), prefixes)
    await _subscribe(
        stub,
        tokens.acme,
        receiver.url(EXACT_PATH),
        MESSAGE_TYPES,
        signature_algorithm=sub_pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
    )
    await _routed(dispatcher, len(PATHS))

    valid = {f"valid-{i}": case for i, case in enumerate(cases.valid)}
    mutated = {f"mutated-{i}": case for i, case in enumerate(cases.mutated)}
    events = [case.event(message_id) for message_id, case in valid.items()]
    events += [case.event(message_id) for message_id, case in mutated.items()]
    # Valid and mutated events mixed in every batch, the same way on every run.
    events.sort(key=lambda event: hashlib.sha256(event.message_id.encode()).digest())
    batches = _batches(events)
    kinds = Counter(case.kind.split("/")[0] for case in mutated.values())
    counts = (
        f"{len(valid)} valid events of {len(MESSAGE_TYPES)} types, {len(mutated)} mutated "
        f"ones ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}), "
        f"in {len(batches)} batches"
    )

    before = _iso_millis(time.time() - 0.001)
    answers = await publish(dispatcher_stub, tokens.acme_publisher, *batches)
    after = _iso_millis(time.time() + 0.001)
    assert [[r.message_id for r in answer] for answer in answers] == [
        [e.message_id for e in batch] for batch in batches
    ], counts
    results = {r.message_id: r for answer in answers for r in answer}

    refused = [
        f"{message_id} ({case.kind} {case.message_type}): {results[message_id]}"
        for message_id, case in valid.items()
        if (results[message_id].outcome, results[message_id].deliveries)
        != (Result.OUTCOME_ACCEPTED, len(PATHS))
    ]
    assert not refused, f"{len(refused)} valid events refused ({counts}): {refused[:5]}"
    wrongly_answered = []
    for message_id, case in mutated.items():
        result = results[message_id]
        fields = [v.field for v in result.error.field_violations]
        if (
            result.outcome != Result.OUTCOME_REJECTED
            or result.error.code != "INVALID_ARGUMENT"
            or result.deliveries != 0
            or case.field not in fields
            or (case.only and set(fields) != {case.field})
        ):
            wrongly_answered.append(f"{case.describe()} -> {result}")
    assert not wrongly_answered, (
        f"{len(wrongly_answered)} mutated events wrongly answered ({counts}): "
        f"{wrongly_answered[:5]}"
    )

    expected = {(path, message_id) for message_id in valid for path in PATHS}
    await _arrived(receiver, expected, within=40)
    received = [(r, r.headers["webhook-id"]) for r in receiver.requests]
    delivered_mutants = sorted({m for _, m in received if m in mutated})
    assert not delivered_mutants, f"mutated events delivered ({counts}): {delivered_mutants[:5]}"
    assert {(r.path, m) for r, m in received} == expected, counts

    keys = {
        key.key_id: key.public_key_pem
        for key in (
            await dispatcher_stub.ListSigningKeys(
                pb.ListSigningKeysRequest(), metadata=auth(tokens.acme)
            )
        ).keys
    }
    stored = await asyncio.to_thread(_stored_payloads, dispatcher)
    assert set(stored) == set(valid), f"stored events are not the valid ones ({counts})"
    for request, message_id in received:
        _check_delivery(
            request,
            valid[message_id],
            keys=keys,
            stored=stored[message_id],
            published=(before, after),
        )
    algorithms = {(r.path, r.headers["webhook-signature-algorithm"]) for r, _ in received}
    assert algorithms == {(PATTERNS_PATH, "ES256"), (EXACT_PATH, "RS256")}

    listed = await _all_deliveries(dispatcher_stub, tokens.acme_deliveries)
    assert sorted(d.message_id for d in listed) == sorted(m for _, m in expected), counts
    assert not {d.message_id for d in listed} & set(mutated), counts
    report_cases(f"contract properties over gRPC: {counts}; {len(received)} deliveries verified")


# Known defects, kept as strict expected failures so that their fix is noticed.


async def _one_subscription(
    stub: Stub, dispatcher: RunningDispatcher, receiver: Receiver, tokens: Tokens
) -> None:
    await _subscribe(stub, tokens.acme, receiver.url("/one"), ["event.note.created.v1"])
    deadline = time.monotonic() + 10
    while not dispatcher.follower.routes_for("acme", "event.note.created.v1"):
        assert time.monotonic() < deadline, "the routing table did not catch up"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_integers_beyond_64_bits_are_refused_or_delivered_unchanged(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await _one_subscription(stub, dispatcher, receiver, tokens)
    numbers = [2**64, 2**64 + 1, -(2**63) - 1, 10**30]
    events = [
        pb.Event(
            message_id=f"big-{i}",
            message_type="event.note.created.v1",
            details=json.dumps({"messageType": "event.note.created.v1", "count": number}),
        )
        for i, number in enumerate(numbers)
    ]
    [results] = await publish(dispatcher_stub, tokens.acme_publisher, events)
    accepted = {r.message_id for r in results if r.outcome == Result.OUTCOME_ACCEPTED}
    for result in results:
        if result.message_id not in accepted:
            assert result.error.code == "INVALID_ARGUMENT"
            assert [v.field for v in result.error.field_violations] in (
                ["details"],
                ["details.count"],
            )
    delivered = await receiver.wait_for(len(accepted)) if accepted else []
    for request in delivered:
        index = int(request.headers["webhook-id"].removeprefix("big-"))
        signed = json.loads(request.body)["payloadAsString"]
        assert json.loads(signed)["details"]["count"] == numbers[index], signed


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_timestamps_of_every_year_a_protobuf_timestamp_holds_are_accepted(
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
) -> None:
    await _one_subscription(stub, dispatcher, receiver, tokens)
    moments = _collect(
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)), 40
    )
    events = [
        pb.Event(
            message_id=f"at-{i}",
            message_type="event.note.created.v1",
            details="{}",
            timestamp=_proto_timestamp(moment.replace(tzinfo=UTC)),
        )
        for i, moment in enumerate(moments)
    ]
    [results] = await publish(dispatcher_stub, tokens.acme_publisher, events)
    refused = [
        f"{moments[i]}: {r.error}"
        for i, r in enumerate(results)
        if r.outcome != Result.OUTCOME_ACCEPTED
    ]
    assert not refused, f"{len(refused)} of {len(moments)} timestamps refused: {refused[:3]}"
    delivered = await receiver.wait_for(len(events))
    for request in delivered:
        moment = moments[int(request.headers["webhook-id"].removeprefix("at-"))]
        signed = json.loads(json.loads(request.body)["payloadAsString"])
        assert signed["timestamp"] == moment.isoformat(timespec="milliseconds") + "Z"
