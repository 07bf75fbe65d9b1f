"""The listening sockets `dockguard serve` makes itself (the API's, the metrics port's), so that a
port it cannot have is a clear refusal at start rather than a uvicorn log line."""

from __future__ import annotations

import socket


class PortUnavailable(Exception):
    """The address cannot be listened on (in use, not allowed, or a host that does not resolve)."""


def listening_socket(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A socket listening on host:port (inheritable: uvicorn's supervisor hands it to its
    processes); `shared`: with SO_REUSEPORT, for each of several processes to have its own."""
    # As uvicorn: an IPv6 address has a colon; anything else (a name too: `localhost`) is IPv4.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PortUnavailable(f"cannot listen on {host}:{port} ({_why(exc)})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise PortUnavailable(f"cannot listen on {host}:{port} ({_why(exc)})") from exc
    return sock


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
