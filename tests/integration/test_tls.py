"""TLS and mutual TLS on every listening port, and in every client of the platform.

Real servers on loopback, started from their settings; certificates are made per module by
`tests.certificates.Pki`, with a second CA whose certificates nobody here trusts.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
import pytest

from dispatcher_service.server import RunningDispatcher
from dispatcher_service.server import create_server as create_dispatcher
from dispatcher_service.settings import DispatcherSettings
from service_common.tls import TlsConfigError
from subscription_service.server import RunningServer, create_server
from subscription_service.settings import SubscriptionSettings
from tests.certificates import Issued, Pki
from tests.conftest import Tokens
from tests.integration.conftest import auth, publish, routed
from tests.integration.test_cli import Cli, closed_port
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_event, subscribe
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

Result = pb.PublishResult


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"), name="trusted")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA: its certificates are trusted by nobody here."""
    return Pki.make(tmp_path_factory.mktemp("other-pki"), name="other")


StartSubscriptions = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_subscriptions(
    tmp_path: Path, tokens: Tokens, pki: Pki
) -> AsyncIterator[StartSubscriptions]:
    """Starts subscription services serving TLS (mutual TLS with `mutual=True`)."""
    started: list[RunningServer] = []

    async def start(*, mutual: bool = False) -> RunningServer:
        settings = SubscriptionSettings(
            grpc_addr="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path / f'subscriptions-{len(started)}.db'}",
            auth_tokens_file=tokens.file,
            metrics_addr="127.0.0.1:0",
            shutdown_grace_seconds=1.0,
            tls_cert_file=pki.server.cert_file,
            tls_key_file=pki.server.key_file,
            tls_client_ca_file=pki.ca_file if mutual else None,
        )
        running = await create_server(settings)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0)


def credentials(ca: Pki, client: Issued | None = None) -> grpc.ChannelCredentials:
    """Trusts `ca`; shows `client`'s certificate when given."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.ca_file.read_bytes(),
        private_key=client.key_file.read_bytes() if client else None,
        certificate_chain=client.cert_file.read_bytes() if client else None,
    )


async def list_subscriptions(
    target: str, creds: grpc.ChannelCredentials | None, token: str
) -> grpc.StatusCode:
    """The status of one ListSubscriptions call over a new channel."""
    channel = (
        grpc.aio.insecure_channel(target)
        if creds is None
        else grpc.aio.secure_channel(target, creds)
    )
    async with channel:
        try:
            await Stub(channel).ListSubscriptions(
                sub_pb.ListSubscriptionsRequest(), metadata=auth(token), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def gathered(*calls: Awaitable[grpc.StatusCode]) -> list[grpc.StatusCode]:
    return list(await asyncio.gather(*calls))


def client_context(ca: Pki, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


async def https_get(url: str, context: ssl.SSLContext | bool) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        return response.status, await response.text()


async def refused_over_http(url: str, context: ssl.SSLContext | bool) -> bool:
    """True when the server ends the connection instead of answering."""
    try:
        await https_get(url, context)
    except (aiohttp.ClientError, ConnectionError):
        return True
    return False


async def test_the_subscription_service_serves_tls_only(
    start_subscriptions: StartSubscriptions, pki: Pki, other_pki: Pki, tokens: Tokens
) -> None:
    server = await start_subscriptions()
    target = f"127.0.0.1:{server.port}"
    statuses = await gathered(
        list_subscriptions(target, credentials(pki), tokens.acme),
        # The certificate names localhost as well as 127.0.0.1.
        list_subscriptions(f"localhost:{server.port}", credentials(pki), tokens.acme),
        list_subscriptions(target, None, tokens.acme),
        list_subscriptions(target, credentials(other_pki), tokens.acme),
    )
    assert statuses == [
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAVAILABLE,  # plaintext
        grpc.StatusCode.UNAVAILABLE,  # a client that trusts another CA
    ]
    # Metrics over TLS too, and only over TLS; a connection that never says hello holds up
    # nobody else's scrape.
    metrics = f"https://127.0.0.1:{server.metrics_port}/metrics"
    _, silent = await asyncio.open_connection("127.0.0.1", server.metrics_port)
    try:
        status, text = await asyncio.wait_for(https_get(metrics, client_context(pki)), 5)
    finally:
        silent.close()
        await silent.wait_closed()
    assert status == 200
    assert "grpc_server_handled_total" in text
    assert await refused_over_http(f"http://127.0.0.1:{server.metrics_port}/metrics", False)
    assert await refused_over_http(metrics, client_context(other_pki))


async def test_under_mutual_tls_only_a_client_certificate_of_the_ca_gets_in(
    start_subscriptions: StartSubscriptions, pki: Pki, other_pki: Pki, tokens: Tokens
) -> None:
    server = await start_subscriptions(mutual=True)
    target = f"127.0.0.1:{server.port}"
    statuses = await gathered(
        list_subscriptions(target, credentials(pki, pki.client), tokens.acme),
        list_subscriptions(target, credentials(pki), tokens.acme),
        list_subscriptions(target, credentials(pki, other_pki.client), tokens.acme),
        list_subscriptions(target, None, tokens.acme),
    )
    assert statuses == [
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAVAILABLE,  # no client certificate
        grpc.StatusCode.UNAVAILABLE,  # a certificate of another CA
        grpc.StatusCode.UNAVAILABLE,  # plaintext
    ]
    # The certificate opens the connection; the token still decides what a call may do.
    assert (
        await list_subscriptions(target, credentials(pki, pki.client), "unknown-token")
        == grpc.StatusCode.UNAUTHENTICATED
    )
    metrics = f"https://127.0.0.1:{server.metrics_port}/metrics"
    status, _ = await https_get(metrics, client_context(pki, pki.client))
    assert status == 200
    assert await refused_over_http(metrics, client_context(pki))


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_the_dispatcher_follows_a_tls_subscription_service_and_delivers(
    start_subscriptions: StartSubscriptions,
    pki: Pki,
    other_pki: Pki,
    tokens: Tokens,
    receiver: Receiver,
    tmp_path: Path,
    mutual: bool,
) -> None:
    subscriptions = await start_subscriptions(mutual=mutual)
    token_file = tmp_path / "platform-token"
    token_file.write_text(tokens.platform)
    client = pki.client if mutual else None
    dispatcher = await create_dispatcher(
        DispatcherSettings(
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            metrics_addr="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path / 'dispatcher.db'}",
            auth_tokens_file=tokens.file,
            subscriptions_addr=f"127.0.0.1:{subscriptions.port}",
            subscriptions_token_file=token_file,
            subscriptions_tls_ca_file=pki.ca_file,
            subscriptions_tls_cert_file=client.cert_file if client else None,
            subscriptions_tls_key_file=client.key_file if client else None,
            allowed_target_networks="127.0.0.0/8",
            signing_keys_dir=tmp_path / "signing-keys",
            poll_interval_seconds=0.05,
            shutdown_grace_seconds=1,
            tls_cert_file=pki.server.cert_file,
            tls_key_file=pki.server.key_file,
            tls_client_ca_file=pki.ca_file if mutual else None,
        )
    )
    try:
        await asyncio.wait_for(dispatcher.follower.ready.wait(), 10)
        await delivers_over_tls(
            subscriptions, dispatcher, credentials(pki, client), tokens, receiver
        )
        await http_surface_and_metrics_over_tls(dispatcher, pki, other_pki, mutual=mutual)
    finally:
        await dispatcher.stop(1)


async def delivers_over_tls(
    subscriptions: RunningServer,
    dispatcher: RunningDispatcher,
    creds: grpc.ChannelCredentials,
    tokens: Tokens,
    receiver: Receiver,
) -> None:
    async with (
        grpc.aio.secure_channel(f"127.0.0.1:{subscriptions.port}", creds) as sub_channel,
        grpc.aio.secure_channel(f"127.0.0.1:{dispatcher.port}", creds) as channel,
    ):
        await subscribe(Stub(sub_channel), tokens.acme, receiver.url("/tls"), CLAIM_CREATED)
        # The subscription reaches the dispatcher through its TLS watch.
        await routed(dispatcher, "acme", CLAIM_CREATED, 1)
        [[result]] = await publish(
            DispatcherStub(channel), tokens.acme_publisher, [claim_event("m-tls")]
        )
    assert (result.outcome, result.deliveries) == (Result.OUTCOME_ACCEPTED, 1)
    [delivered] = await receiver.wait_for(1)
    assert delivered.path == "/tls"
    assert delivered.headers["webhook-id"] == "m-tls"


async def http_surface_and_metrics_over_tls(
    dispatcher: RunningDispatcher, pki: Pki, other_pki: Pki, *, mutual: bool
) -> None:
    jwks = f"https://127.0.0.1:{dispatcher.http_port}/.well-known/jwks.json"
    trusted = client_context(pki, pki.client if mutual else None)
    status, text = await https_get(jwks, trusted)
    assert status == 200
    assert '"keys"' in text
    assert await refused_over_http(jwks, client_context(other_pki))
    assert await refused_over_http(
        f"http://127.0.0.1:{dispatcher.http_port}/.well-known/jwks.json", False
    )
    if mutual:
        assert await refused_over_http(jwks, client_context(pki))  # no client certificate
        assert await refused_over_http(jwks, client_context(pki, other_pki.client))
    status, text = await https_get(f"https://127.0.0.1:{dispatcher.metrics_port}/metrics", trusted)
    assert status == 200
    assert "grpc_server_handled_total" in text


async def test_the_cli_speaks_tls_and_mutual_tls_and_names_a_failed_handshake(
    start_subscriptions: StartSubscriptions, pki: Pki, other_pki: Pki, tokens: Tokens
) -> None:
    tls_server = await start_subscriptions()
    mutual_server = await start_subscriptions(mutual=True)
    async with grpc.aio.secure_channel(f"127.0.0.1:{tls_server.port}", credentials(pki)) as channel:
        created = await subscribe(
            Stub(channel), tokens.acme, "https://receiver.example.com/hook", CLAIM_CREATED
        )
    dispatcher_addr = f"127.0.0.1:{closed_port()}"
    tls_cli = Cli(f"127.0.0.1:{tls_server.port}", dispatcher_addr, tokens.acme)
    mutual_cli = Cli(f"127.0.0.1:{mutual_server.port}", dispatcher_addr, tokens.acme)
    ca = str(pki.ca_file)
    client = ("--cert-file", str(pki.client.cert_file), "--key-file", str(pki.client.key_file))

    listed, from_env, mutual, untrusted, no_certificate, plaintext, half = await asyncio.gather(
        tls_cli("--ca-file", ca, "-o", "json", "subscriptions", "list"),
        tls_cli("-o", "json", "subscriptions", "list", env={"WEBHOOKS_TLS_CA_FILE": ca}),
        mutual_cli(
            "-o",
            "json",
            "subscriptions",
            "list",
            env={
                "WEBHOOKS_TLS_CA_FILE": ca,
                "WEBHOOKS_TLS_CERT_FILE": str(pki.client.cert_file),
                "WEBHOOKS_TLS_KEY_FILE": str(pki.client.key_file),
            },
        ),
        tls_cli("--ca-file", str(other_pki.ca_file), "subscriptions", "list"),
        mutual_cli("--ca-file", ca, "subscriptions", "list"),
        tls_cli("subscriptions", "list"),
        mutual_cli("--ca-file", ca, client[0], client[1], "subscriptions", "list"),
    )
    assert [s["id"] for s in listed.expect(0).json()] == [created.id]
    assert [s["id"] for s in from_env.expect(0).json()] == [created.id]
    assert mutual.expect(0).json() == []

    port = tls_server.port
    assert one_line(untrusted.expect(6).stderr).startswith(
        f"error: TLS handshake with 127.0.0.1:{port} failed: its certificate is not signed by "
        "the CA of --ca-file"
    )
    assert "may require a client certificate" in one_line(no_certificate.expect(6).stderr)
    assert one_line(plaintext.expect(6).stderr).startswith(f"error: cannot reach 127.0.0.1:{port}")
    assert one_line(half.expect(2).stderr) == (
        "error: --cert-file is set without --key-file: a client certificate needs both"
    )


def one_line(stderr: str) -> str:
    """The one line the command wrote on stderr (gRPC's own log lines are kept off it)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


async def test_a_half_or_broken_tls_configuration_stops_the_start_with_one_line(
    pki: Pki, tokens: Tokens, tmp_path: Path
) -> None:
    base = SubscriptionSettings(
        grpc_addr="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'never.db'}",
        auth_tokens_file=tokens.file,
    )
    with pytest.raises(TlsConfigError) as raised:
        await create_server(base.model_copy(update={"tls_cert_file": pki.server.cert_file}))
    assert str(raised.value) == (
        "SUBSCRIPTIONS_TLS_CERT_FILE is set without SUBSCRIPTIONS_TLS_KEY_FILE: TLS needs both"
    )
    missing = tmp_path / "missing-key.pem"
    with pytest.raises(TlsConfigError, match="SUBSCRIPTIONS_TLS_KEY_FILE: cannot read"):
        await create_server(
            base.model_copy(update={"tls_cert_file": pki.server.cert_file, "tls_key_file": missing})
        )
    # Nothing was created: the check comes before the database.
    assert not (tmp_path / "never.db").exists()

    # The dispatcher as an operator starts it: exit code 2 and one line on stderr.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher_service",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            "DISPATCHER_TLS_CERT_FILE": str(pki.server.cert_file),
            "DISPATCHER_TLS_KEY_FILE": str(missing),
            "DISPATCHER_DATABASE_URL": f"sqlite:///{tmp_path / 'never-dispatcher.db'}",
            "DISPATCHER_LOG_FORMAT": "text",
        },
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert err.decode().strip() == (
        f"dispatcher cannot start: DISPATCHER_TLS_KEY_FILE: cannot read {missing}: "
        "No such file or directory"
    )

    # The client side of the dispatcher is checked as early.
    with pytest.raises(
        TlsConfigError,
        match="DISPATCHER_SUBSCRIPTIONS_TLS_CERT_FILE is set without "
        "DISPATCHER_SUBSCRIPTIONS_TLS_CA_FILE",
    ):
        await create_dispatcher(
            DispatcherSettings(
                database_url=f"sqlite:///{tmp_path / 'never-dispatcher.db'}",
                subscriptions_tls_cert_file=pki.client.cert_file,
                subscriptions_tls_key_file=pki.client.key_file,
            )
        )
