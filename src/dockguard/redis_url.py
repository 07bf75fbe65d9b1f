"""The Redis URLs dockguard accepts (`DOCKGUARD_REDIS_URL`, `DOCKGUARD_DOCKERFILE_REDIS_URL`),
read in one place, so a wrong one stops the start with a message saying what is wrong:

    redis://[[user]:password@]host[:port][/db]          one server (rediss://: over TLS)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]  one server on a unix socket
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]

The Sentinel form names the Sentinels (port 26379 unless given) and the master's name as they
monitor it; the user and password are the Redis servers' (the master's and its replicas'), not the
Sentinels'. Messages never repeat the URL: it may hold a password."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

SERVER_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379

_NUMBER = re.compile(r"^[0-9]{1,5}\Z")
_IPV6 = re.compile(r"^\[([0-9A-Fa-f:.]+)\](?::(.*))?\Z")


class RedisUrlError(ValueError):
    """A Redis URL dockguard cannot use; the message says why, without the URL."""


@dataclass(frozen=True)
class ServerUrl:
    """One Redis server: the URL as given, for redis-py's and arq's own parsers."""

    url: str


@dataclass(frozen=True)
class SentinelUrl:
    """A master found through its Sentinels."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> ServerUrl | SentinelUrl:
    """`url` read as one of the forms above, or `RedisUrlError`."""
    scheme, found, _ = url.partition("://")
    scheme = scheme.lower()
    if not found or scheme not in (*SERVER_SCHEMES, SENTINEL_SCHEME):
        raise RedisUrlError(
            "not a Redis URL: it must start with redis://, rediss://, unix:// or redis+sentinel://"
        )
    if scheme == SENTINEL_SCHEME:
        return _sentinel_url(url)
    _check_server_url(url)
    return ServerUrl(url)


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError:  # its only complaint: "Invalid IPv6 URL"
        raise RedisUrlError(
            "a host has an unmatched [ or ] (an IPv6 address is [addr]:port)"
        ) from None


def _check_server_url(url: str) -> None:
    """What arq's and redis-py's parsers would take wrongly or fail on later, mid-request."""
    parts = _split(url)
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when asked
    except ValueError:
        raise RedisUrlError("the port is not a number from 0 to 65535") from None
    if not all(_NUMBER.match(db) for db in parse_qs(parts.query).get("db", [])):
        raise RedisUrlError("?db= must be a database number")
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise RedisUrlError("a unix:// URL needs the socket's path")
    elif parts.path not in ("", "/") and not _NUMBER.match(parts.path[1:]):
        raise RedisUrlError("the path must be a database number, e.g. redis://host:6379/0")


def _sentinel_url(url: str) -> SentinelUrl:
    parts = _split(url)
    if parts.query or parts.fragment:
        raise RedisUrlError("a redis+sentinel:// URL takes no ?options or #fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    names = parts.path.removeprefix("/").removesuffix("/").split("/")
    if not names[0]:
        raise RedisUrlError(
            "a redis+sentinel:// URL needs the master's name: redis+sentinel://host:port/master"
        )
    if len(names) > 2 or (len(names) == 2 and not _NUMBER.match(names[1])):
        raise RedisUrlError("after the master's name, only a database number may follow")
    return SentinelUrl(
        sentinels=_sentinels(hosts),
        master=unquote(names[0]),
        db=int(names[1]) if len(names) == 2 else 0,
        username=username,
        password=password,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    username, has_password, password = userinfo.partition(":")
    return unquote(username) or None, unquote(password) if has_password else None


def _sentinels(hosts: str) -> tuple[tuple[str, int], ...]:
    if not hosts:
        raise RedisUrlError("a redis+sentinel:// URL needs at least one Sentinel, host:port")
    entries = hosts.split(",")
    return tuple(_sentinel(entry, number, len(entries)) for number, entry in enumerate(entries, 1))


def _sentinel(entry: str, number: int, count: int) -> tuple[str, int]:
    where = f"Sentinel {number} of {count}"
    if bracketed := _IPV6.match(entry):
        host, port = bracketed.group(1), bracketed.group(2)
    else:
        host, colon, port_text = entry.partition(":")
        port = port_text if colon else None
        if not host or "[" in host or "]" in host:
            raise RedisUrlError(f"{where} has no host (host:port, [IPv6]:port)")
    if port is None:
        return host, SENTINEL_PORT
    if not _NUMBER.match(port) or not 1 <= int(port) <= 65535:
        raise RedisUrlError(f"{where}: the port is not a number from 1 to 65535")
    return host, int(port)
