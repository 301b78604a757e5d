"""A taken listening address found before a service starts anything.

gRPC reports a taken port as a RuntimeError that names no setting (after a line of its own
from the C core), and by the time the HTTP or metrics port is bound the dispatcher has
already opened connections it would then leave unclosed. Checking every address first turns
the commonest start-up failure (a second `make run`) into one line naming the setting.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping

__all__ = ["AddressInUse", "check_free"]


class AddressInUse(OSError):
    """A listening address that something else already holds."""

    def __init__(self, *, addr: str, setting: str) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"{addr} is already in use (is the service already running?): stop what "
            f"listens there, or set {setting} to a free host:port",
        )
        self.addr = addr
        self.setting = setting

    def __str__(self) -> str:
        return str(self.strerror)


def check_free(addrs: Mapping[str, str]) -> None:
    """Raises AddressInUse for the first address (host:port, by its setting) that is taken.

    An empty address (a surface turned off) and port 0 are skipped; so is anything this
    check cannot judge (an unresolvable host, an address of no interface): the real bind
    reports those.
    """
    for setting, addr in addrs.items():
        host, _, port = addr.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            continue
        try:
            found = socket.getaddrinfo(
                host.strip("[]") or None,
                int(port),
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
        except OSError:
            continue
        for family, kind, protocol, _name, address in found:
            if _taken(family, kind, protocol, address):
                raise AddressInUse(addr=addr, setting=setting)


def _taken(family: int, kind: int, protocol: int, address: tuple[object, ...]) -> bool:
    with socket.socket(family, kind, protocol) as probe:
        # As the servers bind: a port left in TIME_WAIT by a previous run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False
