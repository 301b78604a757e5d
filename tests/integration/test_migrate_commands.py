"""`python -m subscription_service.migrate` and `python -m dispatcher_service.migrate`.

Run as operators run them (child processes), on new SQLite and PostgreSQL databases; the
services then start with `*_MIGRATE_ON_START=false` on what they migrated.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import sqlalchemy as sa

from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from subscription_service.server import create_server as create_subscriptions
from subscription_service.settings import SubscriptionSettings
from tests.conftest import Tokens
from tests.integration.conftest import publish, routed
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_event, subscribe
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

# Each service and the prefix of its settings.
SERVICES = {"subscription_service": "SUBSCRIPTIONS_", "dispatcher_service": "DISPATCHER_"}


@dataclass(frozen=True)
class Finished:
    returncode: int | None
    stdout: str
    stderr: str


async def run_migrate(service: str, env: dict[str, str], cwd: Path) -> Finished:
    """Runs `python -m <service>.migrate` with `env` added to a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(tuple(SERVICES.values()))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"{service}.migrate",
        env={**clean, **env},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Finished(process.returncode, stdout.decode(), stderr.decode())


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def model_tables(service: str) -> set[str]:
    models = importlib.import_module(f"{service}.models")
    return set(models.metadata.tables)


async def test_the_commands_migrate_new_databases_once_and_the_services_start_on_them(
    new_database_url: Callable[[str], str],
    tokens: Tokens,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    urls = {service: new_database_url(service) for service in SERVICES}

    async def run_both() -> dict[str, Finished]:
        finished = await asyncio.gather(
            *(
                run_migrate(service, {f"{prefix}DATABASE_URL": urls[service]}, tmp_path)
                for service, prefix in SERVICES.items()
            )
        )
        return dict(zip(SERVICES, finished, strict=True))

    first = await run_both()
    for service, finished in first.items():
        assert finished.returncode == 0, finished.stderr
        assert len(finished.stdout.splitlines()) == 1, finished.stdout
        assert "migrated from empty to" in finished.stdout
        assert tables(urls[service]) == model_tables(service) | {"alembic_version"}
    second = await run_both()
    for service, finished in second.items():
        assert finished.returncode == 0, finished.stderr
        revision = first[service].stdout.split()[-1]
        assert f"already at revision {revision}, nothing to do" in finished.stdout
        assert tables(urls[service]) == model_tables(service) | {"alembic_version"}

    await _serve_without_migrating(
        urls["subscription_service"],
        urls["dispatcher_service"],
        tokens,
        receiver,
        tmp_path,
        monkeypatch,
    )


async def _serve_without_migrating(
    subscriptions_url: str,
    dispatcher_url: str,
    tokens: Tokens,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both services, started with `*_MIGRATE_ON_START=false`, subscribe, publish, deliver."""
    monkeypatch.setenv("SUBSCRIPTIONS_MIGRATE_ON_START", "false")
    monkeypatch.setenv("DISPATCHER_MIGRATE_ON_START", "false")
    subscription_settings = SubscriptionSettings(
        grpc_addr="127.0.0.1:0", database_url=subscriptions_url, auth_tokens_file=tokens.file
    )
    assert subscription_settings.migrate_on_start is False
    token_file = tmp_path / "platform-token"
    token_file.write_text(tokens.platform)
    subscriptions = await create_subscriptions(subscription_settings)
    try:
        dispatcher_settings = DispatcherSettings(
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            database_url=dispatcher_url,
            auth_tokens_file=tokens.file,
            subscriptions_addr=f"127.0.0.1:{subscriptions.port}",
            subscriptions_token_file=token_file,
            allowed_target_networks="127.0.0.0/8",
            signing_keys_dir=tmp_path / "signing-keys",
            poll_interval_seconds=0.05,
        )
        assert dispatcher_settings.migrate_on_start is False
        dispatcher = await create_dispatcher(dispatcher_settings)
        try:
            await asyncio.wait_for(dispatcher.follower.ready.wait(), 10)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{subscriptions.port}") as channel:
                await subscribe(Stub(channel), tokens.acme, receiver.url("/in"), CLAIM_CREATED)
            await routed(dispatcher, "acme", CLAIM_CREATED, 1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{dispatcher.port}") as channel:
                [[result]] = await publish(
                    DispatcherStub(channel), tokens.acme_publisher, [claim_event("migrated-1")]
                )
            assert result.outcome == pb.PublishResult.OUTCOME_ACCEPTED
            [request] = await receiver.wait_for(1, within=10)
            assert request.headers["webhook-id"] == "migrated-1"
        finally:
            await dispatcher.stop(0)
    finally:
        await subscriptions.stop(0)


async def test_a_service_told_not_to_migrate_leaves_a_new_database_alone(
    database_url: str, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUBSCRIPTIONS_MIGRATE_ON_START", "false")
    settings = SubscriptionSettings(grpc_addr="127.0.0.1:0", database_url=database_url)
    running = await create_subscriptions(settings)
    await running.stop(0)
    assert tables(database_url) == set()


async def test_an_unreachable_database_fails_with_one_line(tmp_path: Path) -> None:
    # Nothing listens on port 1 of loopback: the connection is refused at once.
    unreachable = "postgresql+psycopg://webhooks:hunter2@127.0.0.1:1/webhooks"
    results = await asyncio.gather(
        *(
            run_migrate(service, {f"{prefix}DATABASE_URL": unreachable}, tmp_path)
            for service, prefix in SERVICES.items()
        )
    )
    for finished in results:
        assert finished.returncode == 1, finished
        assert finished.stdout == ""
        assert len(finished.stderr.strip().splitlines()) == 1, finished.stderr
        assert "cannot migrate" in finished.stderr
        assert "Connection refused" in finished.stderr
        assert "hunter2" not in finished.stderr


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("subscription_service", "SUBSCRIPTIONS_WATCH_QUEUE_SIZE", "0"),
        ("subscription_service", "SUBSCRIPTIONS_DATABASE_URL", "not a url"),
        ("dispatcher_service", "DISPATCHER_LEASE_SECONDS", "-1"),
        ("dispatcher_service", "DISPATCHER_LEASE_SECONDS", "30"),
        ("dispatcher_service", "DISPATCHER_DATABASE_URL", "nosuchdriver://x/y"),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(
    service: str,
    variable: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # In this process: what is checked is the message, not the start of a child process.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    command = importlib.import_module(f"{service}.migrate")
    assert command.main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert variable in err
    assert list(tmp_path.iterdir()) == []  # nothing was created
