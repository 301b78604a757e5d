"""Which addresses a delivery may connect to: the outbound (SSRF) address policy.

A subscription URL is chosen by a tenant, so without this guard a webhook could be
pointed at the dispatcher's own loopback, the private network behind it, or a cloud
metadata service. The policy is checked on the *resolved* address at delivery time, and
the connection is then made to exactly the checked address: a DNS answer that changes
between the check and the connect (DNS rebinding) cannot slip through a second lookup.

    resolve_checked(host, port, policy)
     ├── host is an IP literal, in any form libc accepts   -> check it, no DNS query
     ├── host looks numeric but is no valid address        -> TargetRefused
     └── host is a name -> resolve once -> check EVERY address -> the addresses to use
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from service_common.errors import WebhooksError

__all__ = [
    "AddressClass",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "TargetPolicy",
    "TargetRefused",
    "check_address",
    "check_host_literal",
    "parse_ip_literal",
    "resolve_checked",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


class AddressClass(enum.StrEnum):
    """Why an address is refused; the value reads well in an error message."""

    METADATA = "cloud metadata"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    SHARED = "shared (carrier-grade NAT)"
    LINK_LOCAL = "link-local"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    RESERVED = "reserved"


class TargetRefused(WebhooksError):
    """The policy forbids connecting to this host; no connection was attempted."""

    def __init__(self, *, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"{host}: {reason}")


@dataclass(frozen=True, kw_only=True)
class TargetPolicy:
    """Networks that deliveries may reach although they are not public (e.g. 127.0.0.0/8)."""

    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TargetPolicy:
        """A policy from comma-separated CIDRs, as in `DISPATCHER_ALLOWED_TARGET_NETWORKS`."""
        parts = (part.strip() for part in text.split(","))
        return cls(allowed_networks=tuple(ipaddress.ip_network(p) for p in parts if p))

    def allows(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.allowed_networks)


def _networks(cls: AddressClass, *cidrs: str) -> list[tuple[IPNetwork, AddressClass]]:
    return [(ipaddress.ip_network(cidr), cls) for cidr in cidrs]


# Order matters: the first match names the refusal, so the narrow ranges come first
# (169.254.169.254 is link-local too, but "metadata" is what the reader needs to know).
_REFUSED: tuple[tuple[IPNetwork, AddressClass], ...] = (
    *_networks(AddressClass.METADATA, "169.254.169.254/32", "fd00:ec2::254/128"),
    *_networks(AddressClass.UNSPECIFIED, "0.0.0.0/8", "::/128"),
    *_networks(AddressClass.LOOPBACK, "127.0.0.0/8", "::1/128"),
    *_networks(AddressClass.PRIVATE, "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
    # fec0::/10 is the deprecated site-local range, private in all but name.
    *_networks(AddressClass.PRIVATE, "fc00::/7", "fec0::/10", "64:ff9b:1::/48"),
    *_networks(AddressClass.SHARED, "100.64.0.0/10"),
    *_networks(AddressClass.LINK_LOCAL, "169.254.0.0/16", "fe80::/10"),
    *_networks(AddressClass.MULTICAST, "224.0.0.0/4", "ff00::/8"),
    # Python's is_global gets several of these wrong (it calls 192.0.0.0/24 global).
    *_networks(
        AddressClass.RESERVED,
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
    ),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# IPv6 unicast that is routed on the internet lives in 2000::/3; the rest is special.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def _unwrap(ip: IPAddress) -> IPAddress:
    """The address the kernel really connects to: ::ffff:a.b.c.d and ::a.b.c.d are IPv4."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.scope_id is not None:
        ip = ipaddress.IPv6Address(ip.packed)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4 addresses a translation mechanism would deliver to (NAT64, 6to4, Teredo)."""
    if ip in _NAT64:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo
    return ()


def _class_of(ip: IPAddress) -> AddressClass | None:
    for network, address_class in _REFUSED:
        if ip in network:
            return address_class
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64 or (ip in _GLOBAL_UNICAST_V6 and ip.is_global):
            return None
        return AddressClass.RESERVED
    return None if ip.is_global else AddressClass.RESERVED


def check_address(ip: IPAddress, policy: TargetPolicy) -> AddressClass | None:
    """Why a delivery may not connect to `ip`, or None when it may.

    The allow-list is consulted before every rule, for the address itself and for any
    IPv4 address embedded in it, so `127.0.0.0/8` also admits `::ffff:127.0.0.1`.
    """
    ip = _unwrap(ip)
    if policy.allows(ip):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(ip):
            refused = check_address(embedded, policy)
            if refused is not None:
                return refused
    return _class_of(ip)


# The WHATWG URL standard's "ends in a number" rule: such a host is an IPv4 address (in
# some encoding) or invalid, never a name to look up.
_NUMERIC_PART_RE = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")


def _ipv4_part(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def _parse_ipv4_forms(host: str) -> ipaddress.IPv4Address | None:
    """inet_aton's grammar: 1 to 4 parts, each decimal, 0-octal or 0x-hex; the last part
    fills the remaining bytes (so `127.1` is 127.0.0.1 and `2130706433` is too)."""
    parts = host.split(".")
    if len(parts) > 4 or not all(_NUMERIC_PART_RE.fullmatch(p) for p in parts):
        return None
    values = [_ipv4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    *leading, last = [v for v in values if v is not None]
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _looks_numeric(host: str) -> bool:
    return bool(_NUMERIC_PART_RE.fullmatch(host.rsplit(".", 1)[-1]))


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host written as an IP literal stands for, or None for a name.

    Knows every form the C library resolves without DNS: `[::1]`, `::ffff:7f00:1`,
    `2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`. Raises ValueError for a host that ends
    in a number but is no valid address, such as `1.2.3.256`.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return ipaddress.IPv6Address(bare)
        except ValueError as exc:
            raise ValueError(f"not a valid IPv6 address: {host}") from exc
    # A trailing dot is the DNS root. The URL standard drops one, aiohttp squeezes any
    # number of them to one: either way "127.0.0.1.." must still be read as 127.0.0.1.
    bare = bare.rstrip(".")
    if not _looks_numeric(bare):
        return None
    address = _parse_ipv4_forms(bare)
    if address is None:
        raise ValueError(f"not a valid IPv4 address: {host}")
    return address


async def system_resolver(host: str, port: int) -> Sequence[IPAddress]:
    """Every address the operating system's resolver gives for `host` (A and AAAA)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
    except UnicodeError as exc:
        # IDNA encoding refuses names like "a..b"; to a caller that is a name that does
        # not resolve, like any other.
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: {exc}") from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _unique(addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(dict.fromkeys(addresses))


def _refuse_any(host: str, addresses: Sequence[IPAddress], policy: TargetPolicy) -> None:
    for ip in addresses:
        refused = check_address(ip, policy)
        if refused is not None:
            raise TargetRefused(host=host, reason=f"{ip} is not allowed ({refused})")


def check_host_literal(host: str, policy: TargetPolicy) -> IPAddress | None:
    """The address of a host written as an IP literal, if the policy allows it.

    Returns None for a name (to be resolved), raises TargetRefused for a forbidden or
    malformed literal. Clients skip DNS for literals, so this is their whole check.
    """
    try:
        literal = parse_ip_literal(host)
    except ValueError as exc:
        raise TargetRefused(host=host, reason=str(exc)) from exc
    if literal is not None:
        _refuse_any(host, (literal,), policy)
    return literal


async def resolve_checked(
    host: str,
    port: int,
    policy: TargetPolicy,
    *,
    resolver: Resolver = system_resolver,
) -> tuple[IPAddress, ...]:
    """The addresses of `host` to connect to, all allowed by `policy`; resolves once.

    If any address of a name is refused, the whole host is refused: a name that points
    both outside and inside is an attack or a mistake, and which address a client tries
    first is not something to bet on. Resolution failures (OSError) pass through, as
    they are connection errors, not refusals.
    """
    literal = check_host_literal(host, policy)
    if literal is not None:
        return (literal,)
    addresses = _unique(await resolver(host, port))
    if not addresses:
        raise OSError(f"{host} has no address")
    _refuse_any(host, addresses, policy)
    return addresses
