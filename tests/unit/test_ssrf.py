"""The outbound address policy: every refused class, encoded literals, and DNS rebinding."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

import pytest

from dispatcher_service.ssrf import (
    AddressClass,
    IPAddress,
    TargetPolicy,
    TargetRefused,
    check_address,
    check_host_literal,
    parse_ip_literal,
    resolve_checked,
    system_resolver,
)

STRICT = TargetPolicy()
LOOPBACK_ALLOWED = TargetPolicy.parse("127.0.0.0/8")
PUBLIC_V4 = ipaddress.IPv4Address("93.184.215.14")


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def teredo(*, server: str, client: str) -> str:
    """A Teredo address (RFC 4380): the client's IPv4 is stored with every bit flipped."""
    value = (0x2001_0000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= int(ipaddress.IPv4Address(client)) ^ 0xFFFF_FFFF
    return str(ipaddress.IPv6Address(value))


class FakeResolver:
    """Answers from a script, one answer per call, and counts the calls."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self._answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append((host, port))
        answer = self._answers[min(len(self.calls), len(self._answers)) - 1]
        return [ip(a) for a in answer]


async def failing_resolver(host: str, port: int) -> Sequence[IPAddress]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


# --- check_address: every class, both families -----------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("169.254.169.254", AddressClass.METADATA),
        ("fd00:ec2::254", AddressClass.METADATA),
        ("0.0.0.0", AddressClass.UNSPECIFIED),  # noqa: S104  # checked, not bound
        ("0.1.2.3", AddressClass.UNSPECIFIED),
        ("::", AddressClass.UNSPECIFIED),
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("127.255.255.254", AddressClass.LOOPBACK),
        ("::1", AddressClass.LOOPBACK),
        ("10.0.0.1", AddressClass.PRIVATE),
        ("172.16.0.1", AddressClass.PRIVATE),
        ("172.31.255.255", AddressClass.PRIVATE),
        ("192.168.1.1", AddressClass.PRIVATE),
        ("fc00::1", AddressClass.PRIVATE),
        ("fd12:3456::1", AddressClass.PRIVATE),
        ("fec0::1", AddressClass.PRIVATE),
        ("64:ff9b:1::a00:1", AddressClass.PRIVATE),
        ("100.64.0.1", AddressClass.SHARED),
        ("100.127.255.254", AddressClass.SHARED),
        ("169.254.0.1", AddressClass.LINK_LOCAL),
        ("fe80::1", AddressClass.LINK_LOCAL),
        ("fe80::1%eth0", AddressClass.LINK_LOCAL),
        ("224.0.0.1", AddressClass.MULTICAST),
        ("239.255.255.250", AddressClass.MULTICAST),
        ("ff02::1", AddressClass.MULTICAST),
        ("ff0e::1", AddressClass.MULTICAST),
        ("240.0.0.1", AddressClass.RESERVED),
        ("255.255.255.255", AddressClass.RESERVED),
        ("192.0.0.8", AddressClass.RESERVED),
        ("192.0.2.1", AddressClass.RESERVED),
        ("198.18.0.1", AddressClass.RESERVED),
        ("203.0.113.9", AddressClass.RESERVED),
        ("2001:db8::1", AddressClass.RESERVED),
        ("100::1", AddressClass.RESERVED),
        ("::ffff:0:7f00:1", AddressClass.RESERVED),
        ("4000::1", AddressClass.RESERVED),
    ],
)
def test_non_public_addresses_are_refused_with_their_class(
    address: str, expected: AddressClass
) -> None:
    assert check_address(ip(address), STRICT) is expected


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "172.32.0.1", "100.128.0.1", "2606:4700::1111"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert check_address(ip(address), STRICT) is None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("::ffff:127.0.0.1", AddressClass.LOOPBACK),
        ("::ffff:7f00:1", AddressClass.LOOPBACK),
        ("::ffff:10.0.0.1", AddressClass.PRIVATE),
        ("::ffff:169.254.169.254", AddressClass.METADATA),
        ("::ffff:0.0.0.0", AddressClass.UNSPECIFIED),
        ("::127.0.0.1", AddressClass.LOOPBACK),
        ("::10.0.0.1", AddressClass.PRIVATE),
    ],
)
def test_ipv4_mapped_and_compatible_ipv6_is_judged_as_its_ipv4(
    address: str, expected: AddressClass
) -> None:
    assert check_address(ip(address), STRICT) is expected


def test_ipv4_mapped_public_address_is_allowed() -> None:
    assert check_address(ip("::ffff:8.8.8.8"), STRICT) is None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("64:ff9b::7f00:1", AddressClass.LOOPBACK),
        ("64:ff9b::a9fe:a9fe", AddressClass.METADATA),
        ("64:ff9b::c0a8:101", AddressClass.PRIVATE),
        ("2002:7f00:1::1", AddressClass.LOOPBACK),
        ("2002:a9fe:a9fe::", AddressClass.METADATA),
        ("2002:a00:1::", AddressClass.PRIVATE),
        (teredo(server="65.54.227.120", client="127.0.0.1"), AddressClass.LOOPBACK),
        (teredo(server="10.0.0.1", client="8.8.8.8"), AddressClass.PRIVATE),
    ],
)
def test_ipv4_embedded_by_nat64_6to4_and_teredo_is_checked(
    address: str, expected: AddressClass
) -> None:
    assert check_address(ip(address), STRICT) is expected


def test_nat64_and_6to4_of_a_public_address_are_allowed() -> None:
    assert check_address(ip("64:ff9b::808:808"), STRICT) is None
    assert check_address(ip("2002:808:808::1"), STRICT) is None


def test_teredo_is_refused_even_around_public_addresses() -> None:
    # Teredo is obsolete and tunnels through third-party relays; no receiver needs it.
    address = teredo(server="65.54.227.120", client="8.8.8.8")
    assert check_address(ip(address), STRICT) is AddressClass.RESERVED


# --- the allow-list ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.1.2.3", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"]
)
def test_allow_list_admits_its_networks_in_every_spelling(address: str) -> None:
    assert check_address(ip(address), LOOPBACK_ALLOWED) is None


@pytest.mark.parametrize("address", ["::1", "10.0.0.1", "169.254.169.254", "0.0.0.1"])
def test_allow_list_admits_nothing_else(address: str) -> None:
    assert check_address(ip(address), LOOPBACK_ALLOWED) is not None


def test_allow_list_can_open_one_private_subnet_only() -> None:
    policy = TargetPolicy.parse("10.1.0.0/16, fd00:1::/32")
    assert check_address(ip("10.1.2.3"), policy) is None
    assert check_address(ip("fd00:1::5"), policy) is None
    assert check_address(ip("10.2.0.1"), policy) is AddressClass.PRIVATE
    assert check_address(ip("fd00:2::5"), policy) is AddressClass.PRIVATE


def test_policy_parse_reads_the_settings_format() -> None:
    policy = TargetPolicy.parse("127.0.0.0/8,::1/128, ")
    assert policy.allowed_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert TargetPolicy.parse("").allowed_networks == ()


def test_policy_parse_rejects_a_malformed_network() -> None:
    with pytest.raises(ValueError, match=re.escape("10.0.0.1/8")):
        TargetPolicy.parse("10.0.0.1/8")


# --- literals in every encoding the C library accepts ------------------------------------

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.1",
    "0x7F.0.0.01",
    "127.1",
    "127.0.1",
    "0x7f000001",
    "017700000001",
    "00000000177.0.0.1",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_encoded_ipv4_literals_mean_what_libc_says(host: str) -> None:
    """The forms an attacker would use are the ones getaddrinfo quietly accepts."""
    by_libc = socket.getaddrinfo(host, 80, family=socket.AF_INET, type=socket.SOCK_STREAM)
    assert {info[4][0] for info in by_libc} == {"127.0.0.1"}
    assert parse_ip_literal(host) == ip("127.0.0.1")


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_encoded_loopback_literals_are_refused_without_dns(host: str) -> None:
    resolver = FakeResolver([str(PUBLIC_V4)])
    with pytest.raises(TargetRefused, match="loopback") as refused:
        await resolve_checked(host, 80, STRICT, resolver=resolver)
    assert refused.value.host == host
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("[::1]", AddressClass.LOOPBACK),
        ("::1", AddressClass.LOOPBACK),
        ("[::ffff:7f00:1]", AddressClass.LOOPBACK),
        ("[::ffff:127.0.0.1]", AddressClass.LOOPBACK),
        ("[0:0:0:0:0:0:0:1]", AddressClass.LOOPBACK),
        ("[fe80::1%eth0]", AddressClass.LINK_LOCAL),
        ("[::1::2]", None),
        ("[fd00:ec2::254]", AddressClass.METADATA),
        ("2852039166", AddressClass.METADATA),  # 169.254.169.254 in decimal
        ("0xa9.0xfe.0xa9.0xfe", AddressClass.METADATA),
        ("012.1", AddressClass.PRIVATE),  # 10.0.0.1 in octal
        ("0", AddressClass.UNSPECIFIED),
        ("127.0.0.1.", AddressClass.LOOPBACK),
        ("127.0.0.1..", AddressClass.LOOPBACK),
    ],
)
def test_check_host_literal_recognises_every_spelling(
    host: str, expected: AddressClass | None
) -> None:
    if expected is None:
        with pytest.raises(TargetRefused, match="not a valid IPv6 address"):
            check_host_literal(host, STRICT)
        return
    with pytest.raises(TargetRefused, match=re.escape(f"({expected.value})")):
        check_host_literal(host, STRICT)


@pytest.mark.parametrize(
    "host", ["1.2.3.256", "08.1.2.3", "1.2.3.4.5", "4294967296", "0x100.1.1.1", "example.123"]
)
async def test_hosts_that_end_in_a_number_but_are_no_address_are_refused(host: str) -> None:
    resolver = FakeResolver([str(PUBLIC_V4)])
    with pytest.raises(TargetRefused, match="not a valid IPv4 address"):
        await resolve_checked(host, 80, STRICT, resolver=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("host", ["example.com", "123.example.com", "0x7f.example", "deadbeef"])
def test_names_are_not_mistaken_for_literals(host: str) -> None:
    assert parse_ip_literal(host) is None
    assert check_host_literal(host, STRICT) is None


def test_allowed_literal_is_returned_as_its_address() -> None:
    assert check_host_literal("0x7f.1", LOOPBACK_ALLOWED) == ip("127.0.0.1")


# --- resolve_checked: one lookup, every address checked --------------------------------


async def test_public_name_resolves_to_its_checked_addresses() -> None:
    resolver = FakeResolver([str(PUBLIC_V4), "2606:4700::1111", str(PUBLIC_V4)])
    addresses = await resolve_checked("hooks.example.com", 443, STRICT, resolver=resolver)
    assert addresses == (PUBLIC_V4, ip("2606:4700::1111"))
    assert resolver.calls == [("hooks.example.com", 443)]


async def test_a_name_with_any_internal_address_is_refused_whole() -> None:
    resolver = FakeResolver([str(PUBLIC_V4), "127.0.0.1"])
    with pytest.raises(TargetRefused) as refused:
        await resolve_checked("mixed.example.com", 443, STRICT, resolver=resolver)
    assert refused.value.host == "mixed.example.com"
    assert "127.0.0.1" in refused.value.reason
    assert "loopback" in refused.value.reason
    assert "mixed.example.com" in str(refused.value)


async def test_rebinding_resolver_is_asked_once_and_its_checked_answer_is_kept() -> None:
    """A rebinding DNS answers public for the check, loopback for the connect.

    resolve_checked hands back the checked address for the connection, so the second
    (loopback) answer is never asked for within an attempt; a later attempt that does
    get it is refused.
    """
    rebinding = FakeResolver([str(PUBLIC_V4)], ["127.0.0.1"])
    first = await resolve_checked("rebind.example.com", 80, STRICT, resolver=rebinding)
    assert first == (PUBLIC_V4,)
    assert len(rebinding.calls) == 1
    with pytest.raises(TargetRefused, match="loopback"):
        await resolve_checked("rebind.example.com", 80, STRICT, resolver=rebinding)


async def test_metadata_behind_a_name_is_refused() -> None:
    resolver = FakeResolver(["169.254.169.254"])
    with pytest.raises(TargetRefused, match="cloud metadata"):
        await resolve_checked("metadata.example.com", 80, STRICT, resolver=resolver)


async def test_ipv6_answers_are_checked_too() -> None:
    resolver = FakeResolver([str(PUBLIC_V4), "::ffff:10.0.0.1"])
    with pytest.raises(TargetRefused, match="private"):
        await resolve_checked("v6.example.com", 80, STRICT, resolver=resolver)


async def test_allow_list_applies_to_resolved_names() -> None:
    resolver = FakeResolver(["127.0.0.1"])
    addresses = await resolve_checked("localhost", 80, LOOPBACK_ALLOWED, resolver=resolver)
    assert addresses == (ip("127.0.0.1"),)


async def test_resolution_failure_is_a_connection_error_not_a_refusal() -> None:
    with pytest.raises(socket.gaierror):
        await resolve_checked("nowhere.invalid", 80, STRICT, resolver=failing_resolver)


async def test_an_empty_answer_is_a_connection_error() -> None:
    with pytest.raises(OSError, match="no address") as caught:
        await resolve_checked("empty.example.com", 80, STRICT, resolver=FakeResolver([]))
    assert not isinstance(caught.value, TargetRefused)


async def test_system_resolver_refuses_localhost() -> None:
    with pytest.raises(TargetRefused, match="loopback"):
        await resolve_checked("localhost", 80, STRICT)


async def test_system_resolver_turns_an_unencodable_name_into_a_lookup_failure() -> None:
    with pytest.raises(socket.gaierror):
        await system_resolver("a..b", 80)
