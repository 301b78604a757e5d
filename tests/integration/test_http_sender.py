"""Both senders (libcurl's `CurlSender` and aiohttp's `HttpSender`) against real HTTP
receivers on loopback ports: every test runs on each, as each promises the same.

Each receiver is an aiohttp.web server that answers per path with what the test asks
for, and counts the TCP connections it accepts, so "no connection was made" is observed
at the receiver rather than assumed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dispatcher_service.curl_sender import CurlSender
from dispatcher_service.http_sender import HttpSender
from dispatcher_service.retry import AttemptOutcome, classify, parse_retry_after
from dispatcher_service.sending import AttemptResult, Timeouts
from dispatcher_service.ssrf import IPAddress, Resolver, TargetPolicy

LOOPBACK = TargetPolicy.parse("127.0.0.0/8")
STRICT = TargetPolicy()
BODY = b'{"payload": {"messageId": "09feeb6f"}, "signature": "c2ln"}'
HEADERS = {"content-type": "application/json", "webhook-id": "msg_1"}
HUGE_BYTES = 32 * 1024 * 1024
# Long enough that no test below can pass by waiting for it.
PATIENT = Timeouts(connect=5.0, total=30.0)


@dataclass(frozen=True)
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver on `host`, answering per path (see `_routes`)."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.server_names: list[str | None] = []
        self.connections = 0
        self.hits: Counter[str] = Counter()
        self.captured: list[Captured] = []
        self.hanging = 0
        self.huge_written = 0
        self.huge_done = asyncio.Event()
        self.release = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    def url(self, path: str, *, host: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(self._routes())
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        handler = self._runner.server
        assert handler is not None

        def count_connection() -> asyncio.Protocol:
            self.connections += 1
            return handler()

        if self.tls is not None:
            self.tls.sni_callback = self._record_server_name
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            count_connection, self.host, self.port, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.release.set()
        assert self._server is not None
        assert self._runner is not None
        self._server.close()
        await self._runner.cleanup()
        await self._server.wait_closed()

    def _record_server_name(
        self, _socket: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        self.server_names.append(server_name)

    async def wait_hanging(self, count: int) -> None:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: self.hanging >= count)

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/status/{code}", self._status),
            web.post("/redirect", self._redirect),
            web.route("*", "/landed", self._status),
            web.post("/huge", self._huge),
            web.post("/hang", self._hang),
            web.post("/slow-body", self._slow_body),
            web.post("/cookie", self._cookie),
        ]

    async def _capture(self, request: web.Request) -> None:
        self.hits[request.path] += 1
        body = await request.read()
        self.captured.append(Captured(request.path, dict(request.headers), body))

    async def _status(self, request: web.Request) -> web.Response:
        await self._capture(request)
        code = int(request.match_info.get("code", "200"))
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=code, text=f"answered {code}", headers=headers)

    async def _redirect(self, request: web.Request) -> web.Response:
        await self._capture(request)
        return web.Response(status=302, headers={"Location": self.url("/landed")})

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        await self._capture(request)
        response = web.StreamResponse()
        response.content_length = HUGE_BYTES
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            while self.huge_written < HUGE_BYTES:
                await response.write(chunk)
                self.huge_written += len(chunk)
        except ConnectionError:
            pass
        finally:
            self.huge_done.set()
        return response

    async def _hang(self, request: web.Request) -> web.Response:
        await self._capture(request)
        async with self._changed:
            self.hanging += 1
            self._changed.notify_all()
        await self.release.wait()
        return web.Response(text="released")

    async def _slow_body(self, request: web.Request) -> web.StreamResponse:
        await self._capture(request)
        response = web.StreamResponse(status=200)
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"partial ")
        await self.release.wait()
        return response

    async def _cookie(self, request: web.Request) -> web.Response:
        await self._capture(request)
        response = web.Response(text="cookie set")
        response.set_cookie("session", "tenant-a-secret")
        return response


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = Receiver()
    await running.start()
    yield running
    await running.stop()


Sender = CurlSender | HttpSender


class MakeSender(Protocol):
    def __call__(
        self,
        *,
        policy: TargetPolicy = ...,
        timeouts: Timeouts = ...,
        resolver: Resolver = ...,
        ca_pem: bytes | None = ...,
        per_host_limit: int = ...,
        total_limit: int = ...,
        max_response_bytes: int = ...,
    ) -> Sender: ...


@pytest.fixture(params=["curl", "aiohttp"])
def make_sender(request: pytest.FixtureRequest) -> MakeSender:
    """Builds the sender under test; a trusted CA is given to each as it takes one."""

    def make(
        *, policy: TargetPolicy = LOOPBACK, ca_pem: bytes | None = None, **options: Any
    ) -> Sender:
        options.setdefault("timeouts", PATIENT)
        if request.param == "curl":
            return CurlSender(policy=policy, ca_pem=ca_pem, **options)
        context = None if ca_pem is None else ssl.create_default_context(cadata=ca_pem.decode())
        return HttpSender(policy=policy, ssl_context=context, **options)

    return make


@pytest.fixture
async def sender(make_sender: MakeSender) -> AsyncIterator[Sender]:
    async with make_sender(max_response_bytes=1024) as running:
        yield running


async def post(sender: Sender, url: str) -> AttemptResult:
    return await sender.send(url, body=BODY, headers=HEADERS)


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- what the receiver answers -------------------------------------------------------------


async def test_2xx_is_delivered_with_body_headers_and_user_agent(
    receiver: Receiver, sender: Sender
) -> None:
    result = await post(sender, receiver.url("/status/200"))

    assert result.status_code == 200
    assert result.error is None
    assert result.response_snippet == "answered 200"
    assert result.latency > 0
    assert classify(result.status_code, result.error) is AttemptOutcome.SUCCESS
    [request] = receiver.captured
    assert request.body == BODY
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["User-Agent"].startswith("webhooks-dispatcher/")
    assert request.headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["Accept-Encoding"] == "identity"


async def test_500_is_a_failed_attempt_with_status_and_snippet(
    receiver: Receiver, sender: Sender
) -> None:
    result = await post(sender, receiver.url("/status/500"))

    assert (result.status_code, result.error) == (500, None)
    assert result.response_snippet == "answered 500"
    assert classify(result.status_code, result.error) is AttemptOutcome.RETRY


async def test_410_gone_asks_to_disable_the_endpoint(receiver: Receiver, sender: Sender) -> None:
    result = await post(sender, receiver.url("/status/410"))

    assert result.status_code == 410
    assert classify(result.status_code, result.error) is AttemptOutcome.DISABLE


async def test_429_carries_its_retry_after(receiver: Receiver, sender: Sender) -> None:
    result = await post(sender, receiver.url("/status/429?retry_after=120"))

    assert result.status_code == 429
    assert result.retry_after == "120"
    assert parse_retry_after(result.retry_after, now=datetime.now(UTC)) == 120.0
    assert classify(result.status_code, result.error) is AttemptOutcome.RETRY


async def test_a_long_retry_after_is_cut(receiver: Receiver, sender: Sender) -> None:
    result = await post(sender, receiver.url(f"/status/503?retry_after={'9' * 500}"))
    assert result.retry_after == "9" * 64


async def test_no_retry_after_header_is_reported_as_none(
    receiver: Receiver, sender: Sender
) -> None:
    result = await post(sender, receiver.url("/status/503"))
    assert result.retry_after is None


async def test_redirects_are_not_followed(receiver: Receiver, sender: Sender) -> None:
    result = await post(sender, receiver.url("/redirect"))

    assert result.status_code == 302
    assert result.error is not None
    assert result.error.startswith("redirect not followed: 302 to ")
    assert receiver.url("/landed") in result.error
    assert receiver.hits["/landed"] == 0
    assert classify(result.status_code, result.error) is AttemptOutcome.RETRY


async def test_only_the_bounded_part_of_a_huge_body_is_read(
    receiver: Receiver, sender: Sender
) -> None:
    result = await post(sender, receiver.url("/huge"))

    assert result.status_code == 200
    assert result.error is None
    assert result.response_snippet == "x" * 1024
    # The sender hung up; the receiver's writes fail long before the whole body is out.
    async with asyncio.timeout(10):
        await receiver.huge_done.wait()
    assert receiver.huge_written < HUGE_BYTES


async def test_a_hanging_receiver_hits_the_total_timeout(
    receiver: Receiver, make_sender: MakeSender
) -> None:
    async with make_sender(timeouts=Timeouts(connect=1.0, total=0.3)) as quick:
        result = await post(quick, receiver.url("/hang"))

    assert result.status_code is None
    assert result.error == "timeout: no response within 0.3s"
    assert result.latency >= 0.3
    assert classify(result.status_code, result.error) is AttemptOutcome.RETRY


async def test_a_body_that_never_ends_keeps_the_status_it_came_with(
    receiver: Receiver, make_sender: MakeSender
) -> None:
    async with make_sender(timeouts=Timeouts(connect=1.0, total=0.3)) as quick:
        result = await post(quick, receiver.url("/slow-body"))

    assert result.status_code == 200
    assert result.error is not None
    assert result.error.startswith("reading the response: timeout")
    assert classify(result.status_code, result.error) is AttemptOutcome.SUCCESS


async def test_connection_refused_is_a_connection_error(sender: Sender) -> None:
    result = await post(sender, f"http://127.0.0.1:{free_port()}/status/200")

    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("connection error: ")
    assert classify(result.status_code, result.error) is AttemptOutcome.RETRY


async def test_an_unknown_name_is_a_dns_error(sender: Sender) -> None:
    result = await post(sender, "http://no-such-host.invalid/status/200")

    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("DNS error: ")


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x", "/status/200", "http:///status/200", "http://user:pw@127.0.0.1/x"],
)
async def test_urls_that_cannot_be_posted_to_are_invalid(sender: Sender, url: str) -> None:
    result = await post(sender, url)

    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("invalid URL: ")


async def test_cookies_a_receiver_sets_are_never_sent_back(
    receiver: Receiver, sender: Sender
) -> None:
    await post(sender, receiver.url("/cookie"))
    await post(sender, receiver.url("/cookie"))

    assert [c.headers.get("Cookie") for c in receiver.captured] == [None, None]


# --- the SSRF guard at delivery time ---------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "[::ffff:7f00:1]",
        # Trailing dots, the other IPv4 forms, and loopback embedded in IPv6.
        "127.0.0.1.",
        "0x7f000001",
        "017700000001",
        "127.000.000.001",
        "[::ffff:127.0.0.1]",
        "[::127.0.0.1]",
    ],
)
async def test_loopback_is_refused_without_the_allow_list_and_never_connected(
    receiver: Receiver, host: str, make_sender: MakeSender
) -> None:
    async with make_sender(policy=STRICT) as strict:
        result = await post(strict, receiver.url("/status/200", host=host))

    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("target refused: ")
    assert "loopback" in result.error
    assert receiver.connections == 0


async def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    receiver: Receiver, make_sender: MakeSender
) -> None:
    async def to_loopback(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    async with make_sender(policy=STRICT, resolver=to_loopback) as strict:
        result = await post(strict, receiver.url("/status/200", host="hooks.example.com"))

    assert result.error == (
        "target refused: hooks.example.com: 127.0.0.1 is not allowed (loopback)"
    )
    assert receiver.connections == 0


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
    ],
)
async def test_a_name_resolving_to_an_internal_address_is_refused_and_never_connected(
    receiver: Receiver, address: str, kind: str, make_sender: MakeSender
) -> None:
    async def internal(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address(address)]

    async with make_sender(policy=STRICT, resolver=internal) as strict:
        result = await post(strict, receiver.url("/status/200", host="hooks.example.com."))

    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("target refused: hooks.example.com.: ")
    assert kind in result.error
    assert receiver.connections == 0


async def test_the_connection_goes_to_the_checked_address_not_a_rebound_one(
    make_sender: MakeSender,
) -> None:
    """A rebinding resolver answers 127.0.0.2 (allowed) once, then 127.0.0.1 (refused).

    A canary listens on 127.0.0.1 at the same port: a client that looked the name up
    again to connect would reach it.
    """
    allowed_only = TargetPolicy.parse("127.0.0.2/32")
    target, canary = await _receivers_on_one_port(("127.0.0.2", "127.0.0.1"))
    answers = ["127.0.0.2", "127.0.0.1"]
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> Sequence[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(answers[min(len(calls), len(answers)) - 1])]

    try:
        async with make_sender(policy=allowed_only, resolver=rebinding) as s:
            results = [await post(s, target.url("/status/200", host="rebind.test")) for _ in "abc"]
    finally:
        await target.stop()
        await canary.stop()

    assert [r.status_code for r in results] == [200, 200, 200]
    assert target.hits["/status/200"] == 3
    assert canary.connections == 0
    assert calls == ["rebind.test"]


async def _receivers_on_one_port(hosts: tuple[str, str]) -> tuple[Receiver, Receiver]:
    for _ in range(20):
        first = Receiver(host=hosts[0])
        await first.start()
        second = Receiver(host=hosts[1], port=first.port)
        try:
            await second.start()
        except OSError:
            await first.stop()
            continue
        return first, second
    raise AssertionError("no port free on both loopback addresses")


def self_signed(name: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context with a certificate for `name`, and the certificate (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_file.write_bytes(pem)
        key_file.write_bytes(key_pem)
        server.load_cert_chain(cert_file, key_file)
    return server, pem


async def test_tls_verifies_the_certificate_and_sends_sni_for_the_name_not_the_ip(
    make_sender: MakeSender,
) -> None:
    server_tls, certificate = self_signed("hooks.test")
    receiver = Receiver(tls=server_tls)
    await receiver.start()

    async def to_loopback(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    try:
        async with make_sender(resolver=to_loopback, ca_pem=certificate) as sender:
            named = await post(sender, receiver.url("/status/200", host="hooks.test"))
            by_ip = await post(sender, receiver.url("/status/200"))
    finally:
        await receiver.stop()

    assert (named.status_code, named.error) == (200, None)
    assert receiver.captured[0].headers["Host"] == f"hooks.test:{receiver.port}"
    assert receiver.server_names[0] == "hooks.test"
    # The same server reached by its IP has no certificate for that IP: verification holds.
    assert by_ip.status_code is None
    assert by_ip.error is not None
    assert by_ip.error.startswith("TLS error: ")
    assert "certificate" in by_ip.error.lower()


# --- concurrency: one slow endpoint holds only its own connections --------------------


async def test_a_hanging_endpoint_does_not_hold_up_another(
    receiver: Receiver, make_sender: MakeSender
) -> None:
    other = Receiver()
    await other.start()
    try:
        async with make_sender(per_host_limit=5, total_limit=8) as limited:
            # The worker sends no more than the endpoint's limit; all 5 hang there.
            stuck = [asyncio.create_task(post(limited, receiver.url("/hang"))) for _ in range(5)]
            await receiver.wait_hanging(5)
            async with asyncio.timeout(PATIENT.total / 2):
                others = await asyncio.gather(
                    *(post(limited, other.url("/status/200")) for _ in range(50))
                )
            still_stuck = sum(not task.done() for task in stuck)
            receiver.release.set()
            released = await asyncio.gather(*stuck)
    finally:
        await other.stop()

    assert [(r.status_code, r.error) for r in others] == [(200, None)] * 50
    assert still_stuck == 5
    assert [r.status_code for r in released] == [200] * 5


async def test_connections_to_an_endpoint_are_capped(
    receiver: Receiver, make_sender: MakeSender
) -> None:
    # The delivery worker admits no more than the limits itself; the sender's own cap is
    # a second fence, so the excess waits rather than failing.
    async with make_sender(per_host_limit=3) as limited:
        tasks = [asyncio.create_task(post(limited, receiver.url("/hang"))) for _ in range(9)]
        await receiver.wait_hanging(3)
        await asyncio.sleep(0.3)
        in_flight = receiver.hanging
        receiver.release.set()
        results = await asyncio.gather(*tasks)

    assert in_flight == 3
    assert [(r.status_code, r.error) for r in results] == [(200, None)] * 9


async def test_a_proxy_in_the_environment_is_never_used(
    receiver: Receiver, make_sender: MakeSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would resolve the name itself, past the SSRF check.
    proxy = Receiver()
    await proxy.start()
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, proxy.url(""))
    try:
        async with make_sender() as sender:
            result = await post(sender, receiver.url("/status/200"))
    finally:
        await proxy.stop()

    assert (result.status_code, result.error) == (200, None)
    assert proxy.connections == 0


# --- the libcurl sender's own thread --------------------------------------------------------


async def test_closing_the_curl_sender_ends_what_is_in_flight(receiver: Receiver) -> None:
    sender = CurlSender(policy=LOOPBACK, timeouts=PATIENT)
    hanging = asyncio.create_task(post(sender, receiver.url("/hang")))
    await receiver.wait_hanging(1)
    async with asyncio.timeout(5):
        await sender.aclose()
        result = await hanging

    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("connection error: the sender closed")


async def test_a_cancelled_curl_attempt_leaves_its_handle_to_curl_until_it_ends(
    receiver: Receiver,
) -> None:
    async with CurlSender(policy=LOOPBACK, timeouts=PATIENT) as sender:
        hanging = asyncio.create_task(post(sender, receiver.url("/hang")))
        await receiver.wait_hanging(1)
        hanging.cancel()
        # Meanwhile other attempts run on other handles and are not mixed up with it.
        results = await asyncio.gather(
            *(post(sender, receiver.url(f"/status/{c}")) for c in (201, 500))
        )
        receiver.release.set()
        after = [await post(sender, receiver.url("/status/202")) for _ in range(3)]

    assert hanging.cancelled()
    assert [(r.status_code, r.response_snippet) for r in results] == [
        (201, "answered 201"),
        (500, "answered 500"),
    ]
    assert [(r.status_code, r.response_snippet) for r in after] == [(202, "answered 202")] * 3
