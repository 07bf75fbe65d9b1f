"""Webhooks (`callback_url`): where a job's final state may be POSTed, and how it is signed.
Pure functions, shared by the API (checked at submission) and the worker (checked again, on the
addresses the name resolves to, at each delivery: see jobs/callbacks.py).

Where to: only hosts matching `DOCKGUARD_CALLBACK_ALLOWED_HOSTS` (empty: webhooks off), and
never an address of this machine or its network's infrastructure (loopback, link-local, which
holds the cloud metadata service, unspecified, multicast, reserved; also inside IPv4-mapped,
NAT64 and 6to4 addresses) unless an allowlist entry names that address itself, or is `localhost`
for loopback. A wildcard never allows such an address, nor does a name that resolves to one.

Signature: `X-Dockguard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
as Stripe's: the receiver recomputes it over the raw body and refuses an old `t` (replays)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from dockguard.errors import ErrorCode, SubmissionError

SIGNATURE_HEADER = "X-Dockguard-Signature"
MAX_URL_CHARS = 2048
DEFAULT_TOLERANCE_S = 300
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.x.y.z to this host
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_TIMESTAMP = re.compile(r"[1-9][0-9]{0,11}")  # ASCII digits (isdigit takes others), one spelling
_DIGEST = re.compile(r"[0-9a-f]{64}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HostPattern:
    """One allowlist entry: `name`, `*.suffix`, `*`, an IP address (`[v6]` with a port), each
    optionally with `:port`."""

    host: str  # lower case, no brackets; "*" or "*.suffix" for wildcards
    port: int | None

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*")

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        if self.host == "localhost":
            return host == "localhost" or _loopback_literal(host)
        return host == self.host

    def allows_special(self, address: IPAddress) -> bool:
        """Whether this entry explicitly allows an address webhooks otherwise never reach."""
        if self.wildcard:
            return False
        if self.host == "localhost":
            return _unwrap(address).is_loopback
        return _literal(self.host) == address


def parse_allowlist(entries: list[str]) -> tuple[HostPattern, ...]:
    """The setting's entries as patterns; ValueError names a bad one (never a secret: hosts)."""
    patterns = []
    for entry in entries:
        text = entry.strip().lower().rstrip(".")
        host, port = _host_port(text)
        if not host or (host.startswith("*") and host != "*" and not host.startswith("*.")):
            raise ValueError(f"{entry!r} is not host, *.domain, * or an IP, with an optional :port")
        if "*" in host[1:] or "/" in host or "@" in host:
            raise ValueError(f"{entry!r} is not host, *.domain, * or an IP, with an optional :port")
        patterns.append(HostPattern(host, port))
    return tuple(patterns)


def _host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [v6] or [v6]:port
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            return "", None
        return host, _port(rest[1:]) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port)
    return text, None  # a name, or a bare IPv6 address (no port)


def _port(text: str) -> int | None:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port")
    return int(text)


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect and what to say (Host, TLS name)."""

    url: str
    scheme: str
    host: str  # lower case, no brackets
    port: int
    path: str  # path and query, as sent
    patterns: tuple[HostPattern, ...]  # every allowlist entry that matches it


def check_url(url: str, allowlist: tuple[HostPattern, ...]) -> Target:
    """The URL as a Target, or a SubmissionError: 422 `request_invalid` when it is not an
    absolute http(s) URL, 400 `callback_not_allowed` when webhooks are off, its host is not in
    the allowlist or it names an address webhooks never reach."""
    parts = _split(url)
    if not allowlist:
        raise _not_allowed("webhooks are off on this service (DOCKGUARD_CALLBACK_ALLOWED_HOSTS)")
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    patterns = tuple(p for p in allowlist if p.matches(host, port))
    if not patterns:
        raise _not_allowed(
            f"callback host {host[:100]!r} (port {port}) is not in this service's allowlist"
        )
    literal = _literal(host)
    if literal is not None and not address_allowed(literal, patterns):
        raise never_to(literal)
    path = parts.path or "/"
    return Target(
        url, parts.scheme, host, port, path + (f"?{parts.query}" if parts.query else ""), patterns
    )


def _split(url: str) -> SplitResult:
    invalid = SubmissionError(
        ErrorCode.REQUEST_INVALID,
        f"callback_url must be an absolute http or https URL of at most {MAX_URL_CHARS} "
        "characters, without user:password@ or #fragment",
        http_status=422,
    )
    if len(url) > MAX_URL_CHARS or not url.isascii() or not url.isprintable() or " " in url:
        raise invalid
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or not _valid_host(parts.hostname or ""):
        raise invalid
    if parts.username is not None or parts.password is not None or parts.fragment or "#" in url:
        raise invalid
    return parts


def _valid_host(host: str) -> bool:
    """An IP address without a zone id (`%eth0`), or a DNS name: 1-63 character labels of
    letters, digits, `-` and `_`, 253 characters in all (what a resolver takes without error)."""
    if "%" in host:
        return False
    if _literal(host) is not None:
        return True
    name = host.rstrip(".")
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _not_allowed(why: str) -> SubmissionError:
    return SubmissionError(ErrorCode.CALLBACK_NOT_ALLOWED, why, http_status=400)


def never_to(where: IPAddress | str) -> SubmissionError:
    return _not_allowed(
        f"callbacks never go to {str(where)[:100]} (loopback, link-local, metadata or reserved "
        "addresses, unless DOCKGUARD_CALLBACK_ALLOWED_HOSTS names the address itself)"
    )


def address_allowed(address: IPAddress, patterns: tuple[HostPattern, ...]) -> bool:
    """Whether a callback may connect to `address`, its URL matched by `patterns`: any of them
    that names a special address allows it, whatever the order of the entries."""
    return not special(address) or any(p.allows_special(address) for p in patterns)


def special(address: IPAddress) -> bool:
    """An address of this machine or of its network's infrastructure. For an IPv6 address that
    carries an IPv4 one, the IPv4 one is checked (`::ffff:0:0/96` is inside IPv6's reserved
    `::/8`); Teredo's hides its IPv4 address, so it is special."""
    if isinstance(address, ipaddress.IPv6Address) and address.teredo is not None:
        return True
    a = _unwrap(address)
    return (
        a.is_loopback
        or a.is_link_local
        or a.is_unspecified
        or a.is_multicast
        or a.is_reserved
        or a in _METADATA
        or (isinstance(a, ipaddress.IPv4Address) and a in _THIS_NETWORK)
        or (isinstance(a, ipaddress.IPv6Address) and a.is_site_local)
    )


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address; else `address`."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(address.packed[-4:])
    return address


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _loopback_literal(host: str) -> bool:
    literal = _literal(host)
    return literal is not None and _unwrap(literal).is_loopback


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    """The signature header's value for `body`, sent at `timestamp` (default: now)."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(
    secret: bytes, header: str, body: bytes, *, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> bool:
    """What a receiver does: True when `header` signs `body` with `secret` and was made within
    `tolerance_s` of now; False for anything else, a malformed header included (never raises).
    Any of several `v1` values may match (key rotation); comparisons are constant-time."""
    fields = [item.strip().partition("=") for item in header.split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    digests = [value for key, _, value in fields if key == "v1"]
    if len(stamps) != 1 or not _TIMESTAMP.fullmatch(stamps[0]):
        return False
    t = int(stamps[0])
    if abs(time.time() - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).partition(",v1=")[2].encode()
    return any(
        hmac.compare_digest(value.encode(), expected)
        for value in digests
        if _DIGEST.fullmatch(value)
    )
