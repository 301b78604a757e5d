"""The README's walk-through, run as written against real services and the demo receiver."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from service_common.dev_tokens import ensure_dev_tokens
from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.integration.conftest import auth
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub

ROOT = Path(__file__).resolve().parents[2]
FIRST_EVENT = "3b1f6c52-6a2e-4c1e-9a57-5d2f0c8e1a01"
README_RECEIVER = "127.0.0.1:8090"


def walkthrough() -> str:
    """The first shell block under the README's "Walk-through" heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Walk-through\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the walk-through has a shell block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def backend() -> str:
    return "sqlite"  # what `make run` uses


@pytest.fixture
async def services(
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningServer, RunningDispatcher]]:
    ensure_dev_tokens(tmp_path / "var")  # var/dev-token, var/platform-token, var/tokens.json
    subscriptions = await create_server(
        SubscriptionSettings(
            grpc_addr="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path / 'var' / 'subscriptions.db'}",
            auth_tokens_file=tmp_path / "var" / "tokens.json",
        )
    )
    dispatcher = await create_dispatcher(
        DispatcherSettings(
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path / 'var' / 'dispatcher.db'}",
            auth_tokens_file=tmp_path / "var" / "tokens.json",
            subscriptions_addr=f"127.0.0.1:{subscriptions.port}",
            subscriptions_token_file=tmp_path / "var" / "platform-token",
            allowed_target_networks="127.0.0.0/8",
            signing_keys_dir=tmp_path / "var" / "signing-keys",
            # The receiver starts in the background: an attempt before it listens is
            # retried soon rather than in the default five seconds.
            retry_schedule="0s,0.5s,1s,2s",
            poll_interval_seconds=0.05,
        )
    )
    yield subscriptions, dispatcher
    await dispatcher.stop(1)
    await subscriptions.stop(0)


async def test_the_walkthrough_runs_as_written(
    services: tuple[RunningServer, RunningDispatcher], tmp_path: Path
) -> None:
    subscriptions, dispatcher = services
    # The block runs from a clone: the same venv and examples, its own var/.
    (tmp_path / ".venv").symlink_to(sys.prefix)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    receiver = f"127.0.0.1:{free_port()}"
    script = walkthrough().replace(README_RECEIVER, receiver)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WEBHOOKS_SUBSCRIPTIONS_ADDR": f"127.0.0.1:{subscriptions.port}",
        "WEBHOOKS_DISPATCHER_ADDR": f"127.0.0.1:{dispatcher.port}",
        "DEMO_RECEIVER_ADDR": receiver,
        "DEMO_RECEIVER_DISPATCHER_URL": f"http://127.0.0.1:{dispatcher.http_port}",
    }
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "set -euo pipefail\n" + script,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 90)
    out, err = out_bytes.decode(), err_bytes.decode()
    assert process.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"

    assert f"http://{receiver}/webhooks" in out  # the subscription, created and listed
    assert f"accepted {FIRST_EVENT} (1 delivery)" in out
    assert "accepted 3, duplicate 0, rejected 1" in out  # the JSON-lines file's summary...
    assert "details.amount" in out  # ...names the invalid event's field
    assert "exit code 1" in out
    assert re.search(rf"{FIRST_EVENT}.*succeeded", out)  # `deliveries list`
    # The demo receiver verified the first event's signature and contract.
    received = json.loads(next(line for line in out.splitlines() if line.startswith("[{")))
    [first] = [r for r in received if r["messageId"] == FIRST_EVENT]
    assert first["verified"] is True
    assert first["contractChecked"] is True
    assert "scheduled 1 delivery again" in out  # `redeliver`
    assert "ES256" in out  # `keys list`

    # `redeliver` sent the first event a second time.
    dev_token = (tmp_path / "var" / "dev-token").read_text().strip()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dispatcher.port}") as channel:
        stub = DispatcherStub(channel)
        deadline = time.monotonic() + 10
        while True:
            page = await stub.ListDeliveries(
                pb.ListDeliveriesRequest(message_id=FIRST_EVENT), metadata=auth(dev_token)
            )
            [delivery] = page.deliveries
            if delivery.attempt_count == 2 and delivery.state == pb.DELIVERY_STATE_SUCCEEDED:
                break
            assert time.monotonic() < deadline, delivery
            await asyncio.sleep(0.1)
