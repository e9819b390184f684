"""Addresses: free loopback ports and checked host:port strings."""
from __future__ import annotations

import socket

from .contract import DEFAULT_HOST
from .errors import Face2hbeError


class AddressError(Face2hbeError, ValueError):
    """A server address is not a usable host:port."""


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def host_port(url: str) -> str:
    """'host:port' from 'host:port' or 'scheme://host:port', with the port checked (1-65535)."""
    address = url.split("://", 1)[-1].rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AddressError(f"{url!r}: not a host:port address with a port in 1-65535")
    return address
