"""The `webhooks` command as a user runs it: a child process against real services on loopback.

The services run in the test's event loop, so the command runs as a subprocess of that loop
(`asyncio.create_subprocess_exec`) and the loop keeps serving while it runs. Each start costs
about half a second, so each test is a scenario of several steps, with independent commands
run side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.integration.conftest import auth, routed
from tests.integration.test_dispatcher import claim_details
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub

CLAIM_CREATED = "event.claim.created.v1"
NOTE_CREATED = "event.note.created.v1"
ACCOUNT_FEES = "event.accountAmountTotalFees.updated.v1"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CATALOG = Path(__file__).parents[1] / "contracts" / "published_catalog.json"
# Bounds each command: a hung command fails the test instead of holding the suite.
COMMAND_TIMEOUT = 30


@dataclass(frozen=True)
class Ran:
    """What one run of the command did."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def expect(self, code: int) -> Ran:
        assert self.code == code, f"webhooks {' '.join(self.args)} -> {self.code}\n{self.stderr}"
        assert "Traceback" not in self.stderr
        return self


@dataclass
class Cli:
    """Runs `python -m webhooks_cli` with the addresses of the test's services."""

    subscriptions_addr: str
    dispatcher_addr: str
    token: str
    base_env: dict[str, str] = field(default_factory=dict)

    async def __call__(
        self,
        *args: str,
        token: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Ran:
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")},
            "WEBHOOKS_SUBSCRIPTIONS_ADDR": self.subscriptions_addr,
            "WEBHOOKS_DISPATCHER_ADDR": self.dispatcher_addr,
            "WEBHOOKS_TOKEN": self.token if token is None else token,
            "COLUMNS": "250",
            **(env or {}),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "webhooks_cli",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(stdin.encode() if stdin is not None else b""),
                COMMAND_TIMEOUT,
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return Ran(args, process.returncode, out.decode(), err.decode())


@pytest.fixture
def sub_cli(subscription_server: RunningServer, tokens: Tokens) -> Cli:
    """The command with the subscription service only (the dispatcher's address is closed)."""
    return Cli(f"127.0.0.1:{subscription_server.port}", f"127.0.0.1:{closed_port()}", tokens.acme)


@pytest.fixture
def cli(subscription_server: RunningServer, dispatcher: RunningDispatcher, tokens: Tokens) -> Cli:
    return Cli(f"127.0.0.1:{subscription_server.port}", f"127.0.0.1:{dispatcher.port}", tokens.acme)


def closed_port() -> int:
    """A loopback port nothing listens on (it was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def claim_payload(message_id: str | None = None, **details: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "details": {**claim_details(), **details},
        "timestamp": "2026-01-02T03:04:05.678Z",
        "user": {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"},
    }
    if message_id is not None:
        payload["messageId"] = message_id
    return payload


def shown_fields(stdout: str) -> dict[str, str]:
    """The `name  value` lines of a `show` as a dict (first lines of multi-line values)."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        if not line.startswith(" "):
            name, _, value = line.partition("  ")
            found[name] = value.strip()
    return found


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each body row of the tables printed (headers have other lines)."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in stdout.splitlines()
        if "│" in line
    ]


def delivered_payload(body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(json.loads(body)["payloadAsString"])
    return parsed


async def settled(
    stub: DispatcherStub, token: str, message_id: str, state: pb.DeliveryState.ValueType
) -> None:
    """Waits until every delivery of the event is in `state`."""
    deadline = time.monotonic() + 10
    while True:
        page = await stub.ListDeliveries(
            pb.ListDeliveriesRequest(message_id=message_id), metadata=auth(token)
        )
        if page.deliveries and all(d.state == state for d in page.deliveries):
            return
        assert time.monotonic() < deadline, f"the deliveries of {message_id} did not settle"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_subscription_lifecycle(sub_cli: Cli, backend: str) -> None:
    created, second_table = await asyncio.gather(
        sub_cli(
            "--output", "json", "subscriptions", "create",
            "--url", "https://receiver.example.com/claims",
            "--type", CLAIM_CREATED, "--type", "event.note.*",
            "--description", "claims and notes", "--algorithm", "RS256",
            env={"WEBHOOKS_SUBSCRIPTION_SECRET": SECRET},
        ),
        sub_cli(
            "subscriptions", "create", "--url", "https://receiver.example.com/notes",
            "--type", NOTE_CREATED, "--disabled",
        ),
    )  # fmt: skip
    first = created.expect(0).json()
    assert first["messageTypes"] == [CLAIM_CREATED, "event.note.*"]
    assert first["signatureAlgorithm"] == "SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256"
    assert first["hasSecret"] is True
    assert "secret" not in first
    assert SECRET not in created.stdout + created.stderr
    second = shown_fields(second_table.expect(0).stdout)
    assert second["enabled"] == "no"
    ids = {first["id"], second["id"]}

    table, disabled, notes, paged, shown = await asyncio.gather(
        sub_cli("subscriptions", "list"),
        sub_cli("-o", "json", "subscriptions", "list", "--disabled"),
        sub_cli("-o", "json", "subscriptions", "list", "--type", NOTE_CREATED),
        # One per page: the listing follows the page tokens.
        sub_cli("-o", "json", "subscriptions", "list", "--page-size", "1"),
        sub_cli("subscriptions", "show", first["id"]),
    )
    rows = {row[0]: row for row in table_rows(table.expect(0).stdout)}
    assert rows.keys() == ids
    assert rows[first["id"]][1:5] == [
        "https://receiver.example.com/claims",
        f"{CLAIM_CREATED}, event.note.*",
        "yes",
        "claims and notes",
    ]
    assert {s["id"] for s in paged.expect(0).json()} == ids
    assert [s["id"] for s in disabled.expect(0).json()] == [second["id"]]
    assert {s["id"] for s in notes.expect(0).json()} == ids  # the pattern matches too
    details = shown_fields(shown.expect(0).stdout)
    assert details["url"] == "https://receiver.example.com/claims"
    assert details["signature"] == "RS256"
    assert details["secret"] == "yes"

    updated = (
        await sub_cli(
            "-o", "json", "subscriptions", "update", first["id"], "--type", CLAIM_CREATED,
            "--description", "claims only", "--etag", first["etag"],
        )
    ).expect(0)  # fmt: skip
    changed = updated.json()
    assert changed["messageTypes"] == [CLAIM_CREATED]
    assert changed["description"] == "claims only"
    assert changed["url"] == first["url"]  # not in the mask: unchanged
    assert changed["hasSecret"] is True

    stale_update, stale_delete, disabled_one = await asyncio.gather(
        sub_cli("subscriptions", "update", first["id"], "--url", "https://x.example.com/",
                "--etag", first["etag"]),
        sub_cli("subscriptions", "delete", first["id"], "--etag", first["etag"]),
        sub_cli("-o", "json", "subscriptions", "disable", first["id"], "--reason", "maintenance"),
    )  # fmt: skip
    for stale in (stale_update, stale_delete):
        assert "FAILED_PRECONDITION" in stale.expect(7).stderr
        assert len(stale.stderr.splitlines()) == 1
    assert disabled_one.expect(0).json()["enabled"] is False
    assert disabled_one.json()["disabledReason"] == "maintenance"

    enabled_again, deleted = await asyncio.gather(
        sub_cli("-o", "json", "subscriptions", "enable", first["id"]),
        sub_cli("subscriptions", "delete", second["id"], "--etag", second["etag"]),
    )
    assert enabled_again.expect(0).json()["enabled"] is True
    assert enabled_again.json()["disabledReason"] == ""
    assert deleted.expect(0).stdout == f"deleted {second['id']}\n"
    gone = (await sub_cli("subscriptions", "show", second["id"])).expect(3)
    assert "NOT_FOUND" in gone.stderr


async def test_round_trip(
    cli: Cli,
    tokens: Tokens,
    receiver: Receiver,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    backend: str,
) -> None:
    """Subscribe, publish from stdin, see it at the receiver and in the delivery log."""
    created = await cli(
        "-o",
        "json",
        "subscriptions",
        "create",
        "--url",
        receiver.url("/rt"),
        "--type",
        NOTE_CREATED,
    )
    subscription = created.expect(0).json()
    await routed(dispatcher, "acme", NOTE_CREATED, 1)
    note = {"details": {"messageType": NOTE_CREATED}, "timestamp": "2026-01-02T03:04:05.678Z"}
    published = await cli(
        "-o", "json", "events", "publish", token=tokens.acme_publisher, stdin=json.dumps(note)
    )
    answer = published.expect(0).json()
    assert answer["outcome"] == "accepted"
    assert answer["deliveries"] == 1
    uuid.UUID(answer["messageId"])  # generated
    (arrived,) = await receiver.wait_for(1, path="/rt")
    assert delivered_payload(arrived.body) == {**note, "messageId": answer["messageId"]}
    await settled(
        dispatcher_stub, tokens.acme_deliveries, answer["messageId"], pb.DELIVERY_STATE_SUCCEEDED
    )
    listed = await cli(
        "-o", "json", "deliveries", "list", "--message-id", answer["messageId"],
        token=tokens.acme_deliveries,
    )  # fmt: skip
    (delivery,) = listed.expect(0).json()
    assert delivery["subscriptionId"] == subscription["id"]
    assert delivery["state"] == "DELIVERY_STATE_SUCCEEDED"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_publish_deliver_and_redeliver(
    cli: Cli,
    tokens: Tokens,
    receiver: Receiver,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    tmp_path: Path,
    backend: str,
) -> None:
    receiver.script("/fail", 500)
    good, failing = await asyncio.gather(
        cli("-o", "json", "subscriptions", "create", "--url", receiver.url("/ok"),
            "--type", CLAIM_CREATED, "--type", ACCOUNT_FEES),
        cli("-o", "json", "subscriptions", "create", "--url", receiver.url("/fail"),
            "--type", NOTE_CREATED),
    )  # fmt: skip
    good_id, failing_id = good.expect(0).json()["id"], failing.expect(0).json()["id"]
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    await routed(dispatcher, "acme", NOTE_CREATED, 1)

    claim_id = str(uuid.uuid4())
    claim_file = tmp_path / "claim.json"
    claim_file.write_text(json.dumps(claim_payload(claim_id), indent=2))
    # The documented example as published: {"payload": ..., "signature": ...}.
    (example,) = [
        t["documentedExample"]
        for t in json.loads(CATALOG.read_text())["eventTypes"]
        if t["messageType"] == ACCOUNT_FEES
    ]
    example_file = tmp_path / "example.json"
    example_file.write_text(json.dumps(example))
    note: dict[str, Any] = {
        "messageId": str(uuid.uuid4()),
        "details": {"messageType": NOTE_CREATED},
    }
    publisher = tokens.acme_publisher
    from_file, from_example, from_operator = await asyncio.gather(
        cli("events", "publish", str(claim_file), token=publisher),
        cli("events", "publish", str(example_file), token=publisher),
        # A token of every tenant names the tenant.
        cli("--tenant", "acme", "events", "publish", "-", token=tokens.platform,
            stdin=json.dumps(note)),
    )  # fmt: skip
    assert from_file.expect(0).stdout.strip() == f"accepted {claim_id} (1 delivery)"
    assert from_example.expect(0).stdout.startswith(f"accepted {example['payload']['messageId']}")
    assert from_operator.expect(0).stdout.startswith(f"accepted {note['messageId']}")
    arrived = await receiver.wait_for(2, path="/ok")
    assert {delivered_payload(r.body)["messageId"] for r in arrived} == {
        claim_id,
        example["payload"]["messageId"],
    }
    claim_arrival = next(r for r in arrived if r.headers["webhook-id"] == claim_id)
    assert delivered_payload(claim_arrival.body) == claim_payload(claim_id)

    again = (await cli("events", "publish", str(claim_file), token=publisher)).expect(0)
    assert again.stdout.startswith(f"duplicate {claim_id}")

    reader = tokens.acme_deliveries
    await settled(dispatcher_stub, reader, claim_id, pb.DELIVERY_STATE_SUCCEEDED)
    await settled(dispatcher_stub, reader, note["messageId"], pb.DELIVERY_STATE_DEAD)
    listed, dead = await asyncio.gather(
        cli("-o", "json", "deliveries", "list", "--message-id", claim_id, token=reader),
        cli("deliveries", "list", "--state", "dead", token=reader),
    )
    (claim_delivery,) = listed.expect(0).json()
    assert claim_delivery["subscriptionId"] == good_id
    assert claim_delivery["state"] == "DELIVERY_STATE_SUCCEEDED"
    assert note["messageId"] in dead.expect(0).stdout
    assert claim_id not in dead.stdout
    (dead_row,) = [row for row in table_rows(dead.stdout) if note["messageId"] in row]
    dead_id = dead_row[0]

    shown_json, dead_shown = await asyncio.gather(
        cli("-o", "json", "deliveries", "show", claim_delivery["id"], token=reader),
        cli("deliveries", "show", dead_id, token=reader),
    )
    assert shown_fields(dead_shown.expect(0).stdout)["state"] == "dead"
    (attempt,) = shown_json.expect(0).json()["attempts"]
    assert attempt["statusCode"] == 200
    assert int(attempt["latencyMs"]) >= 0
    statuses = [row[2] for row in table_rows(dead_shown.expect(0).stdout)]
    assert statuses == ["500", "500", "500", "500"]  # four attempts, all refused

    one, failures = await asyncio.gather(
        cli("-o", "json", "redeliver", "--message-id", claim_id, token=reader),
        cli("redeliver", "--subscription", failing_id, "--since", "10m", token=reader),
    )
    assert one.expect(0).json() == {"deliveryIds": [claim_delivery["id"]]}
    assert failures.expect(0).stdout.splitlines() == [
        "scheduled 1 delivery again",
        f"  {dead_id}",
    ]
    second = await receiver.wait_for(3, path="/ok")
    assert [r.headers["webhook-id"] for r in second].count(claim_id) == 2
    await receiver.wait_for(5, path="/fail")  # four attempts, then one more

    keys, keys_json = await asyncio.gather(
        cli("keys", "list", token=reader), cli("-o", "json", "keys", "list", token=reader)
    )
    published = keys_json.expect(0).json()
    assert published
    assert all("BEGIN PUBLIC KEY" in key["publicKeyPem"] for key in published)
    rows = {row[0]: row[1:] for row in table_rows(keys.expect(0).stdout)}
    assert rows == {
        key["keyId"]: [
            "ES256" if key["algorithm"].endswith("ECDSA_P256_SHA256") else "RS256",
            "yes" if key["active"] else "no (retired)",
            key["createTime"][:19] + "Z",
        ]
        for key in published
    }


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_publish_many(
    cli: Cli, tokens: Tokens, receiver: Receiver, dispatcher: RunningDispatcher, tmp_path: Path
) -> None:
    (
        await cli(
            "subscriptions", "create", "--url", receiver.url("/many"), "--type", CLAIM_CREATED
        )
    ).expect(0)
    await routed(dispatcher, "acme", CLAIM_CREATED, 1)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    lines = [
        json.dumps(claim_payload(ids[0])),
        json.dumps(claim_payload(ids[1], amount="a lot")),  # refused by the contract
        "",
        json.dumps(claim_payload(ids[2])),
        "{not json",
        json.dumps(claim_payload(None)),  # a messageId is generated
        json.dumps(claim_payload(ids[3])),
        json.dumps({**claim_payload(ids[4]), "user": {"id": "U"}}),  # incomplete user
        json.dumps(claim_payload(ids[0])),  # the first one again
    ]
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("\n".join(lines) + "\n")

    first = await cli(
        "-o", "json", "events", "publish", "--jsonl", str(events_file), "--batch-size", "2",
        token=tokens.acme_publisher,
    )  # fmt: skip
    summary = first.expect(1).json()  # stdout is the summary alone: no progress bar
    assert (summary["accepted"], summary["duplicate"], summary["rejected"]) == (4, 1, 3)
    assert summary["complete"] is True
    rejected = {
        r["line"]: (r["messageId"], r["code"], [v["field"] for v in r["fieldViolations"]])
        for r in summary["rejections"]
    }
    assert rejected == {
        2: (ids[1], "INVALID_ARGUMENT", ["details.amount"]),
        5: ("", "INVALID_ARGUMENT", ["body"]),
        8: (ids[4], "INVALID_ARGUMENT", ["user.poolId", "user.originator"]),
    }
    arrived = await receiver.wait_for(4, path="/many")
    assert {ids[0], ids[2], ids[3]} < {r.headers["webhook-id"] for r in arrived}

    # Again, as a person reads it: everything sent before is now a duplicate.
    second = (
        await cli("events", "publish", "--jsonl", str(events_file), token=tokens.acme_publisher)
    ).expect(1)
    # The line without a messageId got a new one: accepted again.
    assert second.stdout.splitlines()[0] == "accepted 1, duplicate 4, rejected 3"
    assert "details.amount" in second.stdout
    assert "user.poolId" in second.stdout
    assert second.stderr == ""


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_exit_codes(cli: Cli, tokens: Tokens, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(tokens.acme + "\n")
    unreachable = f"127.0.0.1:{closed_port()}"
    runs = await asyncio.gather(
        cli("-o", "json", "subscriptions", "list", token="", env={
            "WEBHOOKS_TOKEN_FILE": str(token_file)}),
        cli("subscriptions", "list", token="not-a-token"),
        cli("subscriptions", "create", "--url", "https://a.example.com/", "--type", NOTE_CREATED,
            token=tokens.acme_reader),
        cli("subscriptions", "show", "sub_does_not_exist"),
        cli("subscriptions", "create", "--url", "ftp://nowhere", "--type", "event.nope.v1"),
        cli("events", "publish", token=tokens.platform,
            stdin=json.dumps({"details": {"messageType": NOTE_CREATED}})),
        cli("--subscriptions-addr", unreachable, "subscriptions", "list"),
        cli("--timeout", "0.5", "subscriptions", "list", "--no-such-flag"),
    )  # fmt: skip
    by_file, bad_token, no_scope, unknown, invalid, no_tenant, down, flag = runs
    assert by_file.expect(0).json() == []
    assert "UNAUTHENTICATED" in bad_token.expect(4).stderr
    assert "PERMISSION_DENIED" in no_scope.expect(4).stderr
    assert "NOT_FOUND" in unknown.expect(3).stderr
    violations = invalid.expect(5).stderr.splitlines()
    assert violations[0] == "error: the request was refused (INVALID_ARGUMENT)"
    assert any(line.startswith("  subscription.url: ") for line in violations)
    assert any(line.startswith("  subscription.message_types[0]: ") for line in violations)
    assert "  tenant: required for a token of every tenant" in no_tenant.expect(5).stderr
    assert f"cannot reach {unreachable}" in down.expect(6).stderr
    assert "No such option" in flag.expect(2).stderr
    for ran in runs[1:-1]:  # one line, then the wrong fields indented: no traceback
        first, *fields = ran.stderr.splitlines()
        assert first.startswith("error: ")
        assert all(line.startswith("  ") for line in fields)
    for ran in runs:
        for secret in (tokens.acme, tokens.acme_reader, tokens.platform, "not-a-token"):
            assert secret not in ran.stdout + ran.stderr


async def test_global_options_after_the_command_a_malformed_tenant_and_a_long_token(
    sub_cli: Cli,
) -> None:
    after, bad_tenant, long_token = await asyncio.gather(
        sub_cli("subscriptions", "list", "-o", "json", "--timeout", "5"),
        sub_cli("subscriptions", "list", "--tenant", "bad tenant!"),
        sub_cli("subscriptions", "list", token="t" * 5000),
    )
    assert after.expect(0).json() == []
    assert "--tenant" in bad_tenant.expect(2).stderr
    assert bad_tenant.stdout == ""
    assert long_token.expect(4).stderr == (
        "error: the bearer token is longer than 4096 characters (UNAUTHENTICATED)\n"
    )


async def test_publishing_while_routing_is_not_loaded_says_the_dispatcher_answered(
    dispatcher_settings: DispatcherSettings, tokens: Tokens
) -> None:
    # The subscription service is down: the dispatcher is up but cannot route yet.
    down = f"127.0.0.1:{closed_port()}"
    running = await create_dispatcher(
        dispatcher_settings.model_copy(update={"subscriptions_addr": down})
    )
    try:
        addr = f"127.0.0.1:{running.port}"
        cli = Cli(down, addr, tokens.acme_publisher)
        ran = await cli("events", "publish", stdin=json.dumps(claim_payload()))
    finally:
        await running.stop(0)
    assert ran.expect(6).stderr == (
        f"error: {addr} answered: routing is not loaded yet; retry shortly (UNAVAILABLE)\n"
    )
