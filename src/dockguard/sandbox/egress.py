"""The build network of `DOCKGUARD_BUILD_NETWORK=egress`: per job, an `internal` Docker network
whose only way out is an allowlisting forward proxy (Debian's squid, image built by
scripts/proxy-image.sh), passed to `RUN` steps through the engine's predefined proxy build args.

Why each piece is there:
- An `internal` network has no route out (the engine drops its forwarded traffic), and each job
  has its own, so one job's `RUN` (root, CAP_NET_RAW) sees no other job's packets.
- It does not stop traffic to the engine host itself: the network's gateway address and every
  other host address (docker0's, the host's own) arrive through the host's INPUT chain, which
  the engine leaves open. So the worker adds INPUT rules that drop everything from the job's
  bridge and from the proxy's outward address, tagged with the job id so a later cleanup finds
  them, and removes them with the network. This needs the worker on the engine's host with
  root (like the build pids limit); without that, the build fails closed.
- The proxy answers 403 to hosts outside the allowlist before it resolves or connects, allows
  plain HTTP to ports 80/443 and CONNECT to 443 only, and refuses any destination (an IP
  literal, or the addresses an allowed name resolves to) in loopback, link-local, private,
  shared, multicast or reserved ranges.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import logging
import os
import re
import shlex
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import aiodocker

from dockguard.processes import run_process
from dockguard.sandbox import names
from dockguard.sandbox.cleanup import ignore_missing
from dockguard.sandbox.hardening import Isolation, container_config

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "dockguard/egress-proxy:1"
PROXY_ALIAS = "egress-proxy"  # the proxy's name on the job's network (the engine's DNS)
PROXY_PORT = 3128
PROXY_URL = f"http://{PROXY_ALIAS}:{PROXY_PORT}"
# Destinations the proxy never connects to, whatever the allowlist says.
DENIED_DESTINATIONS = (
    "0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 "
    "192.0.0.0/24 192.168.0.0/16 198.18.0.0/15 224.0.0.0/3 "
    "::/127 64:ff9b::/96 fc00::/7 fe80::/10 ff00::/8"
)
PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")  # pip's default index and its files
_READY_LINE = "Accepting HTTP Socket connections"
_SETUP_TIMEOUT_S = 30
_IPTABLES_TIMEOUT_S = 15
_PATTERN = re.compile(
    r"^(\*\.)?([a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$"
)
_ISOLATION = Isolation(
    memory_mb=256,
    pids=64,
    network="bridge",  # the proxy's outward network; the job's network is connected before start
    file_size_mb=16,
    tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=16m"},
)
# The image is generic; its configuration arrives in the environment and lands on a tmpfs.
_COMMAND = [
    "sh",
    "-c",
    'printf "%s\\n" "$DOCKGUARD_SQUID_CONFIG" > /tmp/squid.conf'
    " && exec squid -N -f /tmp/squid.conf",
]


class EgressUnavailable(Exception):
    """The job's egress network could not be set up; the message is for the operator."""


def network_name(job_id: str) -> str:
    return f"{names.OBJECT_PREFIX}{job_id}-build"


def bridge_name(job_id: str) -> str:
    return f"dg-{job_id[:12]}"  # an interface name has at most 15 characters


def proxy_name(job_id: str) -> str:
    return f"{names.OBJECT_PREFIX}{job_id}-proxy"


def proxy_build_args() -> dict[str, str]:
    """The engine's predefined proxy build args (never kept in the image's history)."""
    args = {name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    return {**args, "NO_PROXY": "", "no_proxy": ""}


# --- the allowlist ---------------------------------------------------------------------------


def parse_allowlist(value: str) -> list[str]:
    """`DOCKGUARD_BUILD_EGRESS_ALLOW`: comma-separated host names, each optionally `*.` in front
    (any subdomain, not the name itself). Raises ValueError naming a bad pattern."""
    patterns = []
    for raw in value.split(","):
        pattern = raw.strip().lower().rstrip(".")
        if not pattern:
            continue
        if pattern != "*" and not _PATTERN.match(pattern):
            raise ValueError(
                f"DOCKGUARD_BUILD_EGRESS_ALLOW: {pattern[:100]!r} is not a host name or "
                "'*.' followed by one (e.g. deb.debian.org,*.pypi.org)"
            )
        patterns.append(pattern)
    return sorted(set(patterns))


def host_allowlist(root: Path = Path("/"), environ: Mapping[str, str] | None = None) -> list[str]:
    """The default allowlist: the hosts of this machine's own apt sources and pip index (or
    PyPI, pip's default, when none is configured)."""
    environ = os.environ if environ is None else environ
    return sorted(set(_apt_hosts(root)) | set(_pip_hosts(root, environ)))


def _apt_hosts(root: Path) -> Iterable[str]:
    apt = root / "etc/apt"
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in files:
        for line in _read(path).splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) < 2 or words[0] not in ("deb", "deb-src"):
                continue
            rest = words[1:]
            if rest[0].startswith("["):  # options: [arch=amd64 signed-by=…]
                closing = next((i for i, w in enumerate(rest) if w.endswith("]")), len(rest))
                rest = rest[closing + 1 :]
            yield from _hosts(rest[:1])
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", _read(path)):
            fields = _deb822(stanza)
            if fields.get("enabled", "yes").lower() != "no":
                yield from _hosts(fields.get("uris", "").split())


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def _pip_hosts(root: Path, environ: Mapping[str, str]) -> Iterable[str]:
    home = Path(environ.get("HOME", "/root"))
    files = [
        root / "etc/pip.conf",
        root / "etc/xdg/pip/pip.conf",
        root / str(home / ".config/pip/pip.conf").lstrip("/"),
        root / str(home / ".pip/pip.conf").lstrip("/"),
    ]
    index: list[str] = []
    extra: list[str] = []
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error):
            parser.read_string(_read(path))
        for section in ("global", "install"):
            if parser.has_section(section):
                index += parser.get(section, "index-url", fallback="").split()
                extra += parser.get(section, "extra-index-url", fallback="").split()
    index += environ.get("PIP_INDEX_URL", "").split()
    extra += environ.get("PIP_EXTRA_INDEX_URL", "").split()
    hosts = list(_hosts(index + extra))
    return hosts if index else [*hosts, *PYPI_HOSTS]


def _hosts(uris: Iterable[str]) -> Iterable[str]:
    for uri in uris:
        scheme = uri.split(":", 1)[0].split("+")[-1].lower()
        if scheme in ("http", "https"):
            with contextlib.suppress(ValueError):
                host = urlsplit(uri.split("+", 1)[-1] if "+" in scheme else uri).hostname
                if host and _PATTERN.match(host):
                    yield host


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def pattern_regex(pattern: str) -> str:
    """A squid `dstdom_regex` (case-insensitive, whole host) for one allowlist pattern."""
    label = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"
    if pattern == "*":
        return f"^({label}\\.)*{label}$"
    if pattern.startswith("*."):
        return f"^({label}\\.)+{re.escape(pattern[2:])}$"
    return f"^{re.escape(pattern)}$"


def squid_config(client_subnets: Sequence[str], allow: Sequence[str]) -> str:
    """The proxy's whole configuration: no cache, logs to the container's output, and the rules
    in order (the first that matches decides)."""
    allowed = " ".join(pattern_regex(p) for p in allow) or "^$"  # nothing: refuse every host
    return "\n".join(
        [
            f"http_port {PROXY_PORT}",
            "pid_filename none",
            "cache deny all",
            "cache_mem 0 MB",
            "access_log stdio:/dev/stdout",
            "cache_log /dev/stderr",
            "cache_store_log none",
            "logfile_rotate 0",
            "netdb_filename none",
            "pinger_enable off",
            "coredump_dir /tmp",
            "visible_hostname egress-proxy",
            "forwarded_for delete",
            "via off",
            "shutdown_lifetime 0 seconds",
            f"acl job_network src {' '.join(client_subnets)}",
            "acl CONNECT method CONNECT",
            "acl tls_port port 443",
            "acl web_port port 80 443",
            f"acl allowed_host dstdom_regex -n -i {allowed}",
            f"acl denied_destination dst {DENIED_DESTINATIONS}",
            "http_access deny !job_network",
            "http_access deny CONNECT !tls_port",
            "http_access deny !web_port",
            "http_access deny !allowed_host",  # before any DNS lookup or connection
            "http_access deny denied_destination",
            "http_access allow allowed_host",
            "http_access deny all",
            "",
        ]
    )


# --- the job's network -----------------------------------------------------------------------


class Egress:
    """Sets up and removes one job's egress network; shared by every job of a worker."""

    def __init__(self, docker: aiodocker.Docker, allow: Sequence[str], image: str) -> None:
        self._docker = docker
        self.allow = tuple(allow)
        self.image = image

    async def problem(self) -> str | None:
        """Why builds cannot use egress on this worker, or None (checked at start, for the log)."""
        try:
            await self._docker.images.inspect(self.image)
        except aiodocker.DockerError:
            return f"the proxy image {self.image} is missing (scripts/proxy-image.sh builds it)"
        if not _local_engine(self._docker):
            return "the engine is not on this worker's host (its INPUT chain cannot be closed)"
        return None

    @asynccontextmanager
    async def network(self, job_id: str) -> AsyncIterator[str]:
        """The job's network, with its proxy running, for the duration of the block; yields the
        network's name. Everything is removed on exit, even when the block was cancelled."""
        try:
            try:
                async with asyncio.timeout(_SETUP_TIMEOUT_S):
                    await remove_networks(self._docker, job_id)  # an earlier attempt's
                    await prune_firewall(self._docker)
                    await self._setup(job_id)
            except TimeoutError as exc:
                raise EgressUnavailable(f"setting up took over {_SETUP_TIMEOUT_S} s") from exc
            except aiodocker.DockerError as exc:
                raise EgressUnavailable(f"the engine refused: {exc.message[:300]}") from exc
            yield network_name(job_id)
        finally:
            await asyncio.shield(self._teardown(job_id))

    async def _setup(self, job_id: str) -> None:
        if not _local_engine(self._docker):
            raise EgressUnavailable("the engine is not on this worker's host")
        try:
            await self._docker.images.inspect(self.image)
        except aiodocker.DockerError as exc:
            raise EgressUnavailable(
                f"the proxy image {self.image} is missing (scripts/proxy-image.sh builds it)"
            ) from exc
        network = await self._docker.networks.create(
            {
                "Name": network_name(job_id),
                "CheckDuplicate": True,
                "Driver": "bridge",
                "Internal": True,
                "Labels": names.labels(job_id),
                "Options": {"com.docker.network.bridge.name": bridge_name(job_id)},
            }
        )
        await _firewall(job_id, ["-i", bridge_name(job_id)])  # before anything is attached
        subnets = [c["Subnet"] for c in (await network.show())["IPAM"]["Config"] or []]
        config = container_config(
            self.image,
            user="65534:65534",
            labels=names.labels(job_id),
            isolation=_ISOLATION,
            cmd=_COMMAND,
            env=[f"DOCKGUARD_SQUID_CONFIG={squid_config(subnets, self.allow)}"],
        )
        proxy = await self._docker.containers.create(config, name=proxy_name(job_id))
        await network.connect({"Container": proxy.id, "EndpointConfig": {"Aliases": [PROXY_ALIAS]}})
        await proxy.start()
        outward = (await proxy.show())["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        await _firewall(job_id, ["-s", f"{outward}/32"], ipv6=False)
        await _wait_ready(proxy)

    async def _teardown(self, job_id: str) -> None:
        try:
            async with asyncio.timeout(_SETUP_TIMEOUT_S):
                await remove_networks(self._docker, job_id)
        except (aiodocker.DockerError, EgressUnavailable, TimeoutError) as exc:
            log.warning("egress network cleanup incomplete", extra={"why": str(exc)[:300]})


async def remove_networks(docker: aiodocker.Docker, job_id: str) -> None:
    """Remove the job's egress proxy, its networks (found by the job label) and their firewall
    rules, right after its build (the job's cleanup, cleanup.py, removes them by label too, and
    calls `remove_firewall`). Idempotent. Raises aiodocker.DockerError or
    EgressUnavailable when something could not be removed."""
    with contextlib.suppress(aiodocker.DockerError):
        await (await docker.containers.get(proxy_name(job_id))).delete(force=True, v=True)
    filters = names.label_filter(job_id)
    for found in await docker.networks.list(filters=filters):
        network = await docker.networks.get(found["Id"])
        for container in (await network.show()).get("Containers") or {}:
            await ignore_missing(network.disconnect({"Container": container, "Force": True}))
        await ignore_missing(network.delete())
    await remove_firewall(job_id)


async def _wait_ready(proxy: aiodocker.docker.DockerContainer) -> None:
    while True:
        output = await proxy.log(stdout=True, stderr=True)
        if any(_READY_LINE in line for line in output):
            return
        if not (await proxy.show())["State"]["Running"]:
            raise EgressUnavailable("the proxy exited at start: " + "".join(output)[-300:])
        await asyncio.sleep(0.05)


def _local_engine(docker: aiodocker.Docker) -> bool:
    return str(docker.docker_host).startswith("unix://")


# --- the engine host's INPUT chain -----------------------------------------------------------


def _comment(job_id: str) -> str:
    return f"dockguard-job:{job_id}"


async def _firewall(job_id: str, match: list[str], *, ipv6: bool = True) -> None:
    rule = ["INPUT", *match, "-m", "comment", "--comment", _comment(job_id), "-j", "DROP"]
    for tool in ("iptables", "ip6tables") if ipv6 else ("iptables",):
        await _iptables(tool, ["-I", *rule])


async def remove_firewall(job_id: str) -> None:
    """Remove the job's INPUT rules on the engine host (cleanup removes its proxy and network
    by label, see cleanup.py)."""
    for tool in _TOOLS:
        await _delete_rules(tool, await _rules(tool), lambda comment: comment == _comment(job_id))


async def prune_firewall(docker: aiodocker.Docker) -> None:
    """Remove the rules of jobs whose network is gone (a cleanup that removed the network by
    its label alone, or a worker killed mid-job).

    A rule is only ever added once its network exists, so the rules are listed *before* the
    networks: a rule seen in the listing had its network then, and if the network is missing
    from the later listing it has been removed. (Listing the networks first would let a job
    that creates its network and rule in between lose its rule while its build runs.)"""
    listings = {tool: await _rules(tool) for tool in _TOOLS}
    live = {
        _comment(n["Labels"][names.JOB_LABEL])
        for n in await docker.networks.list(filters={"label": [names.JOB_LABEL]})
    }
    for tool, listing in listings.items():
        await _delete_rules(tool, listing, lambda c: c.startswith(_comment("")) and c not in live)


_TOOLS = ("iptables", "ip6tables")


async def _rules(tool: str) -> list[list[str]] | None:
    """The INPUT chain's rules as `iptables -S` words, or None when the tool cannot run (then
    nothing could have been added with it either)."""
    try:
        listing = await _iptables(tool, ["-S", "INPUT"])
    except EgressUnavailable:
        return None
    return [shlex.split(line) for line in listing.splitlines()]  # -S quotes the comment


async def _delete_rules(
    tool: str, listing: list[list[str]] | None, wanted: Callable[[str], bool]
) -> None:
    for rule in listing or []:
        comment = rule[rule.index("--comment") + 1] if "--comment" in rule[:-1] else ""
        if rule[:2] == ["-A", "INPUT"] and comment and wanted(comment):
            await _delete_rule(tool, rule[1:])


async def _delete_rule(tool: str, rule: list[str]) -> None:
    """Delete one rule; a rule that is already gone (another job's cleanup or prune, in this
    worker or another, deleted it first) is not an error."""
    try:
        await _iptables(tool, ["-D", *rule])
    except EgressUnavailable:
        if ["-A", *rule] in (await _rules(tool) or []):
            raise


async def _iptables(tool: str, args: list[str]) -> str:
    try:
        done = await run_process([tool, "-w", "5", *args], timeout_s=_IPTABLES_TIMEOUT_S)
    except TimeoutError as exc:  # before OSError, of which it is a subclass
        raise EgressUnavailable(f"{tool} did not answer within {_IPTABLES_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise EgressUnavailable(f"cannot run {tool}: {exc}") from exc
    if done.returncode != 0:
        raise EgressUnavailable(
            f"{tool} {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.decode()[:300]}"
        )
    return done.stdout.decode(errors="replace")
