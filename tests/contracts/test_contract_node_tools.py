"""The contracts a real dispatcher serves are read by the tools receivers use in Node: Ajv in
strict mode (with ajv-formats) compiles each and validates its examples, and
json-schema-to-typescript generates its types without resolving anything remotely
(tests/node/contracts_check.mjs)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from subscription_service.server import create_server as create_subscriptions
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.contracts.contract_samples import valid_payload
from tests.node_tools import NODE_DIR, node_executable, run_node_script
from webhook_contracts import Part, Registry, schema_id

pytestmark = pytest.mark.node

SCRIPT = NODE_DIR / "contracts_check.mjs"
NEEDED_PACKAGES = ("ajv", "ajv-formats", "json-schema-to-typescript")
NODE_TIMEOUT_SECONDS = 90
ENVELOPE_FIELDS = (
    "payload", "signature", "payloadAsString", "details", "messageId", "timestamp", "user",
    "id", "poolId", "originator", "messageType",
)  # fmt: skip


@pytest.fixture
def node() -> str:
    return node_executable(purpose="the Node.js contract tools test")


@pytest.fixture
async def dispatcher(tmp_path: Path, tokens: Tokens) -> AsyncIterator[RunningDispatcher]:
    # What is checked is the HTTP surface's contracts; SQLite is enough.
    subscriptions = await create_subscriptions(
        SubscriptionSettings(
            grpc_addr="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path / 'subscriptions.db'}",
            auth_tokens_file=tokens.file,
            shutdown_grace_seconds=1.0,
        )
    )
    token_file = tmp_path / "platform-token"
    token_file.write_text(tokens.platform)
    running = await create_dispatcher(
        DispatcherSettings(
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path / 'dispatcher.db'}",
            auth_tokens_file=tokens.file,
            subscriptions_addr=f"127.0.0.1:{subscriptions.port}",
            subscriptions_token_file=token_file,
            signing_keys_dir=tmp_path / "signing-keys",
            shutdown_grace_seconds=1,
        )
    )
    yield running
    await running.stop(1)
    await subscriptions.stop(0)


def body(payload: dict[str, Any]) -> dict[str, Any]:
    return {"payload": payload, "signature": "c2ln", "payloadAsString": "{}"}


def samples(message_type: str) -> dict[str, list[dict[str, Any]]]:
    """Bodies the contract of ``message_type`` must accept, and bodies it must refuse."""
    with_user = valid_payload(message_type)
    with_user["user"] = {"id": "", "poolId": "", "originator": "ClientAPI"}
    partial_user = valid_payload(message_type)
    partial_user["user"] = {"id": "USER_ID", "originator": "ClientAPI"}
    other_type = valid_payload(message_type)
    other_type["details"]["messageType"] = "event.other.v1"
    bad_time = valid_payload(message_type)
    bad_time["timestamp"] = "2021-02-30T10:00:00.000Z"
    return {
        "valid": [body(valid_payload(message_type)), body(with_user)],
        "invalid": [body(partial_user), body(other_type), body(bad_time), {"payload": {}}],
    }


def typescript_fields(registry: Registry, message_type: str) -> Iterator[str]:
    """Field names the generated types must mention."""
    yield from ENVELOPE_FIELDS
    yield from registry.get(message_type).schema["$defs"]["details"]["properties"]


async def run_node(node: str, *args: str) -> tuple[int, dict[str, Any], str]:
    run = await run_node_script(node, SCRIPT, *args, seconds=NODE_TIMEOUT_SECONDS)
    assert run.stdout, f"contracts_check.mjs printed nothing: {run.stderr}"
    return run.returncode, json.loads(run.stdout), run.stderr


async def test_served_contracts_compile_in_ajv_strict_mode_and_generate_typescript_offline(
    node: str, dispatcher: RunningDispatcher, registry: Registry, tmp_path: Path
) -> None:
    types = sorted(registry.message_types)
    sample_file = tmp_path / "samples.json"
    sample_file.write_text(json.dumps({name: samples(name) for name in types}), encoding="utf-8")
    for name in types:  # the samples mean the same to the Python validators
        contract = registry.get(name)
        for expected, bodies in ((True, samples(name)["valid"]), (False, samples(name)["invalid"])):
            assert [contract.is_valid(b, part=Part.WEBHOOK) for b in bodies] == [expected] * len(
                bodies
            )

    base_url = f"http://127.0.0.1:{dispatcher.http_port}"
    returncode, summary, stderr = await run_node(
        node, "--base-url", base_url, "--samples", str(sample_file), *types
    )

    results = summary["contracts"]
    assert set(results) == set(types)
    assert summary["remoteLookups"] == []
    for name, result in results.items():
        assert result["id"] == schema_id(name)
        assert result["strict"], (name, result["strictError"])
        assert len(result["examples"]) == len(registry.get(name).examples)
        assert all(example["valid"] for example in result["examples"]), (name, result)
        assert [sample["valid"] for sample in result["samples"]] == [
            sample["expected"] for sample in result["samples"]
        ], (name, result["samples"])
        assert result["lookups"] == [], (name, result["lookups"])
        assert result["typescriptError"] is None, (name, result["typescriptError"])
        typescript: str = result["typescript"]
        missing = [field for field in typescript_fields(registry, name) if field not in typescript]
        assert missing == [], (name, missing)
        # Required through the allOf of the common details, whichever side TypeScript says it.
        assert re.search(rf'messageType\??: "{re.escape(name)}"', typescript), name
    assert sum(len(result["examples"]) for result in results.values()) >= 1
    assert (returncode, summary["ok"]) == (0, True), stderr
