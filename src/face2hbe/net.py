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


class PortInUseError(Face2hbeError):
    """A port a server needs is taken (by another server, say): nothing was started."""

    exit_code = 2


def port_holder(port: int) -> str:
    """' by NAME (pid N)' for the process listening on `port`, when this user may see it; else ''."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" by {psutil.Process(conn.pid).name()} (pid {conn.pid})"
    except Exception:  # no permission, the process just ended, no psutil: the port alone is said  # noqa: BLE001
        pass
    return ""


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise PortInUseError naming the first of `ports` ({what: port}) that cannot be bound on `host`."""
    seen: dict[int, str] = {}
    for what, port in ports.items():
        if port in seen:
            raise PortInUseError(f"{what} port {port} is also the {seen[port]} port: give each its own")
        seen[port] = what
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no holder
            try:
                s.bind((host, port))
            except OSError as exc:
                holder = port_holder(port)
                raise PortInUseError(f"{what} port {port} on {host} is in use{holder} ({exc.strerror})") from None
