"""Every refused target class in every spelling a URL host can take, through
`resolve_checked`: literals are judged without a DNS query, names on every answer.

test_ssrf.py checks the classes one address at a time and the loopback spellings; this
matrix crosses the classes with the spellings (decimal, octal, hex, short forms, trailing
dots, IPv4-mapped/compatible IPv6, NAT64 and 6to4), and names that resolve to each class,
with or without a trailing dot.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import pytest

from dispatcher_service.ssrf import (
    AddressClass,
    IPAddress,
    TargetPolicy,
    TargetRefused,
    resolve_checked,
)

STRICT = TargetPolicy()
PUBLIC = "93.184.215.14"

# One address per class, and its spellings as a URL host.
SPELLINGS: dict[AddressClass, list[str]] = {
    AddressClass.LOOPBACK: [
        "127.0.0.1",
        "127.000.000.001",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0X7F.0.0.1",
        "017700000001",
        "0177.0.0.01",
        "127.0.0.1.",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::127.0.0.1]",
        "[2002:7f00:1::]",
    ],
    AddressClass.PRIVATE: [
        "10.0.0.1",
        "167772161",
        "0xa000001",
        "012.0.0.1",
        "10.1",
        "0xc0.0xa8.1.1",
        "3232235777",
        "0300.0250.1.1",
        "172.16.0.1",
        "2886729729",
        "192.168.1.1.",
        "[::ffff:10.0.0.1]",
        "[::ffff:c0a8:101]",
        "[::10.0.0.1]",
        "[64:ff9b::a00:1]",
        "[2002:c0a8:101::1]",
        "[fd12:3456::1]",
        "[fc00::1]",
    ],
    AddressClass.SHARED: [
        "100.64.0.1",
        "1681915905",
        "0x64.0x40.0.1",
        "0144.0100.0.1",
        "100.64.1",
        "[::ffff:100.64.0.1]",
        "[64:ff9b::6440:1]",
        "[2002:6440:1::]",
    ],
    AddressClass.LINK_LOCAL: [
        "169.254.0.1",
        "2851995649",
        "0xa9fe0001",
        "[fe80::1]",
        "[::ffff:169.254.0.1]",
        "[64:ff9b::a9fe:1]",
    ],
    AddressClass.METADATA: [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "0xa9.0xfe.0xa9.0xfe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "169.16689662",
        "169.254.169.254.",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[::169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:a9fe:a9fe::]",
        "[fd00:ec2::254]",
        "[FD00:EC2:0:0:0:0:0:254]",
    ],
    AddressClass.UNSPECIFIED: ["0.0.0.0", "0", "0x0", "[::]", "[::ffff:0.0.0.0]"],  # noqa: S104
}
CASES = [(host, kind) for kind, hosts in SPELLINGS.items() for host in hosts]


class Resolver:
    """Answers every name with `answer`; records the names it was asked."""

    def __init__(self, *answer: str) -> None:
        self.answer = [ipaddress.ip_address(a) for a in answer]
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.asked.append(host)
        return self.answer


@pytest.mark.parametrize(("host", "kind"), CASES, ids=[host for host, _ in CASES])
async def test_every_spelling_of_every_class_is_refused_without_dns(
    host: str, kind: AddressClass
) -> None:
    resolver = Resolver(PUBLIC)  # would let the host through if it were asked
    with pytest.raises(TargetRefused, match=re.escape(f"({kind.value})")):
        await resolve_checked(host, 443, STRICT, resolver=resolver)
    assert resolver.asked == []


NAMES = ["hooks.example.com", "hooks.example.com.", "a.b.c.example.", "xn--bcher-kva.example"]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("::1", AddressClass.LOOPBACK),
        ("10.1.2.3", AddressClass.PRIVATE),
        ("172.20.0.1", AddressClass.PRIVATE),
        ("192.168.0.10", AddressClass.PRIVATE),
        ("fd00::10", AddressClass.PRIVATE),
        ("100.100.100.100", AddressClass.SHARED),
        ("169.254.10.10", AddressClass.LINK_LOCAL),
        ("fe80::abcd", AddressClass.LINK_LOCAL),
        ("169.254.169.254", AddressClass.METADATA),
        ("fd00:ec2::254", AddressClass.METADATA),
        ("::ffff:169.254.169.254", AddressClass.METADATA),
        ("64:ff9b::a00:1", AddressClass.PRIVATE),
        ("2002:a9fe:a9fe::1", AddressClass.METADATA),
    ],
)
@pytest.mark.parametrize("name", NAMES)
async def test_a_name_resolving_to_any_refused_class_is_refused(
    name: str, address: str, kind: AddressClass
) -> None:
    resolver = Resolver(PUBLIC, address)  # one bad answer among good ones is enough
    with pytest.raises(TargetRefused, match=re.escape(f"({kind.value})")) as refused:
        await resolve_checked(name, 443, STRICT, resolver=resolver)
    assert refused.value.host == name
    assert resolver.asked == [name]


async def test_a_rebinding_name_is_refused_as_soon_as_it_answers_private() -> None:
    """Public for one attempt, then the metadata address: the later attempt is refused."""
    answers = iter([[PUBLIC], ["169.254.169.254"], [PUBLIC]])

    async def rebinding(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address(a) for a in next(answers)]

    first = await resolve_checked("rebind.example.", 80, STRICT, resolver=rebinding)
    assert first == (ipaddress.ip_address(PUBLIC),)
    with pytest.raises(TargetRefused, match="cloud metadata"):
        await resolve_checked("rebind.example.", 80, STRICT, resolver=rebinding)


@pytest.mark.parametrize("host", ["localhost", "localhost.", "LOCALHOST", "ip6-localhost"])
async def test_the_system_resolver_refuses_local_names_with_or_without_a_trailing_dot(
    host: str,
) -> None:
    # An OSError is a name this host's resolver does not know (e.g. "localhost." on some
    # systems): no connection either way.
    with pytest.raises((TargetRefused, OSError)) as refused:
        await resolve_checked(host, 80, STRICT)
    if isinstance(refused.value, TargetRefused):
        assert "loopback" in refused.value.reason


@pytest.mark.parametrize("host", ["8.8.8.8", "134744072", "0x8080808", "[2606:4700::1111]"])
async def test_public_spellings_are_allowed(host: str) -> None:
    assert await resolve_checked(host, 443, STRICT, resolver=Resolver()) != ()
