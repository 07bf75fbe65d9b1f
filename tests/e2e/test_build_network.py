"""The build network, end to end: by default (`egress`) a RUN step reaches neither the engine host
nor another job, only an allowlisting proxy that refuses other hosts and internal addresses.

Every address a probe targets is on this machine: the host's own addresses (a listener this test
opens), the job networks' gateways and containers. The only outside traffic is the allowed-host
case, the Debian mirror this machine itself uses (test_pipeline's apt test, and one request
here); refused hosts are refused by the proxy before it resolves or connects anything."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
import pytest_asyncio

from dockguard.sandbox import egress
from dockguard.services import build_egress
from dockguard.settings import Settings
from tests.e2e.conftest import Instances, leftovers

FAST = {"build_timeout_s": 60, "build_memory_mb": 128, "scan_image": False}


def probing(probes: dict[str, str], *, base: str = "busybox:latest", setup: str = "") -> str:
    """A Dockerfile whose RUN step runs each probe (shell printing one line) and keeps the lines;
    the run reports them as its result: {"perf": 1, name: line, …}."""
    lines = ["printf '{\"perf\": 1' > /probe.json; GW=\"$(ip route | awk '/default/ {print $3}')\""]
    for name, command in probes.items():
        line = f"$( ( {command} ) 2>&1 | head -1 | tr -cd 'A-Za-z0-9 ./:_-')"
        lines.append(f'printf \', "{name}": "%s"\' "{line}" >> /probe.json')
    lines.append("echo '}' >> /probe.json; chmod 644 /probe.json")
    script = " ; ".join(lines)
    return (
        f"FROM {base}\n{setup}RUN {script}\nUSER 1000\n"
        'CMD ["sh", "-c", "cat /probe.json > /data/perf.json"]\n'
    )


def connects(address: str, port: int | str) -> str:
    return f"echo probe | nc -w 2 {address} {port} >/dev/null 2>&1 && echo reached || echo blocked"


def asks_proxy(request: str) -> str:
    """Send `request` (a request line) to the job's proxy; prints the proxy's status line, or
    `no proxy` when the build has none."""
    return (
        'P="${http_proxy#http://}"; [ -n "$P" ] || { echo no proxy; exit 0; }; '
        f"printf '{request} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' "
        '| nc -w 5 "${P%:*}" "${P##*:}"'
    )


def host_addresses() -> list[str]:
    """The engine host's IPv4 addresses (this machine is the engine host), loopback aside."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    found = [line.split()[3].split("/")[0] for line in out.stdout.splitlines()]
    return [a for a in found if not a.startswith("127.")]


@pytest_asyncio.fixture
async def host_listener() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP listener on 0.0.0.0 of the engine host; yields its port and who connected."""
    connected: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(accept, "0.0.0.0", 0)
    yield server.sockets[0].getsockname()[1], connected
    server.close()
    await server.wait_closed()


def firewall_rules(job_id: str) -> list[str]:
    rules = []
    for tool in ("iptables", "ip6tables"):
        out = subprocess.run([tool, "-w", "5", "-S", "INPUT"], capture_output=True, text=True)
        rules += [line for line in out.stdout.splitlines() if job_id in line]
    return rules


async def assert_nothing_left(docker: aiodocker.Docker, *jobs: dict[str, Any]) -> None:
    """Nothing of the jobs in the engine: containers, volumes, images, networks, host rules."""
    for job in jobs:
        networks = await docker.networks.list(filters={"label": [f"dockguard.job-id={job['id']}"]})
        assert await leftovers(docker, job["id"]) == [], job["id"]
        assert [n["Name"] for n in networks] == [], job["id"]
        assert firewall_rules(job["id"]) == [], job["id"]


def assert_succeeded(job: dict[str, Any]) -> dict[str, Any]:
    assert job["status"] == "succeeded", (job["error"], job["build"], job["run"])
    data: dict[str, Any] = job["result"]["data"]
    return data


async def test_egress_is_the_default_and_the_host_is_unreachable(
    instances: Instances, docker: aiodocker.Docker, host_listener: tuple[int, list[str]]
) -> None:
    port, connected = host_listener
    targets = {"gateway": "$GW", "docker0": "172.17.0.1"}
    targets |= {f"host {a}": a for a in host_addresses() if a != "172.17.0.1"}
    probes = {name: connects(address, port) for name, address in targets.items()}
    probes["ping gateway"] = 'ping -c 1 -W 2 "$GW" >/dev/null 2>&1 && echo reached || echo blocked'
    probes["gateway known"] = '[ -n "$GW" ] && echo yes || echo no'
    dockguard = await instances.get(**FAST)
    job = await dockguard.run(probing(probes))
    data = assert_succeeded(job)
    expected = dict.fromkeys(probes, "blocked") | {"gateway known": "yes"}
    assert {k: data[k] for k in probes} == expected
    assert job["build"]["limits"]["network"] == "egress"
    assert connected == []
    await assert_nothing_left(docker, job)


async def test_proxy_refuses_unlisted_hosts_and_internal_addresses(
    instances: Instances, docker: aiodocker.Docker, host_listener: tuple[int, list[str]]
) -> None:
    """With `*` allowed, every host name matches: internal destinations are still refused, as
    IP literals in any spelling or as names that resolve to one; by default an unlisted host is
    refused."""
    port, connected = host_listener
    refused = {
        "loopback": "GET http://127.0.0.1:80/",
        "loopback hex": "GET http://0x7f000001/",
        "loopback name": "GET http://localhost/",
        "link-local": "GET http://169.254.169.254/latest/meta-data/",
        "private 10": "CONNECT 10.0.0.1:443",
        "private 192.168": "GET http://192.168.0.1/",
        "docker0": f"GET http://172.17.0.1:{port}/",
        "ipv6 loopback": "CONNECT [::1]:443",
        "other port": "CONNECT deb.debian.org:22",
    }
    allow_all = await instances.get(**FAST, build_egress_allow="*")
    default = await instances.get(**FAST)
    unlisted = {
        "unlisted get": "GET http://dockguard-unlisted.invalid/",
        "unlisted connect": "CONNECT dockguard-unlisted.invalid:443",
    }
    everything, listed = await asyncio.gather(
        allow_all.run(probing({k: asks_proxy(v) for k, v in refused.items()})),
        default.run(probing({k: asks_proxy(v) for k, v in unlisted.items()})),
    )
    forbidden = "HTTP/1.1 403 Forbidden"
    assert assert_succeeded(everything) == {"perf": 1} | dict.fromkeys(refused, forbidden)
    assert assert_succeeded(listed) == {"perf": 1} | dict.fromkeys(unlisted, forbidden)
    assert connected == []
    await assert_nothing_left(docker, everything, listed)


async def test_an_allowed_host_is_reachable_through_the_proxy(
    instances: Instances, docker: aiodocker.Docker
) -> None:
    """The allowed-host case: this machine's own Debian mirror, in the default allowlist."""
    dockguard = await instances.get(**FAST)
    probe = {"mirror": asks_proxy("CONNECT deb.debian.org:443")}
    job = await dockguard.run(probing(probe))
    assert assert_succeeded(job) == {"perf": 1, "mirror": "HTTP/1.1 200 Connection established"}
    await assert_nothing_left(docker, job)


async def _network_addresses(docker: aiodocker.Docker, job_id: str) -> dict[str, str]:
    """The job's build container and proxy on its network, and the proxy's outward address,
    once the build's RUN container is attached."""
    for _ in range(300):
        try:
            network = await (await docker.networks.get(egress.network_name(job_id))).show()
        except aiodocker.DockerError:
            network = {}
        members = {
            c["Name"]: c["IPv4Address"].split("/")[0]
            for c in (network.get("Containers") or {}).values()
        }
        proxy = members.pop(egress.proxy_name(job_id), None)
        if proxy and members:
            outward = await (await docker.containers.get(egress.proxy_name(job_id))).show()
            return {
                "build name": next(iter(members)),
                "build": next(iter(members.values())),
                "proxy": proxy,
                "proxy outward": outward["NetworkSettings"]["Networks"]["bridge"]["IPAddress"],
            }
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id}'s build never joined its network")


async def test_a_build_cannot_reach_another_jobs_build_or_proxy(
    instances: Instances, docker: aiodocker.Docker
) -> None:
    dockguard = await instances.get(**FAST)
    # The first job listens in its RUN step (on its proxy's port too) until told to stop, and
    # reports what it received: only its own check that the listeners work.
    # (Each connection's data is read to its end by `cat`: a plain `nc -l` may quit at its own
    # stdin's end before it read what a client sent.)
    listen = "(while :; do nc -l -p {0} -e sh -c 'cat >> /got' 2>/dev/null; done &)"
    check = "until echo self{0} | nc -w 1 127.0.0.1 {0}; do sleep 0.1; done"
    listening = (
        "FROM busybox:latest\n"
        f"RUN {listen.format(9999)}; {listen.format(3128)}; "
        f"{check.format(9999)}; {check.format(3128)}; "
        "i=0; while [ ! -e /stop ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
        'printf \'{"perf": 1, "received": "%s"}\' "$(tr -cd a-z0-9 < /got)" > /probe.json\n'
        'USER 1000\nCMD ["sh", "-c", "cat /probe.json > /data/perf.json"]\n'
    )
    response = await dockguard.submit(listening)
    assert response.status_code == 202, response.text
    first_id = response.json()["id"]
    addresses = await _network_addresses(docker, first_id)
    build_container = addresses.pop("build name")
    probes = {
        f"{name} {port}": connects(ip, port)
        for name, ip in addresses.items()
        for port in (9999, 3128)
    }
    probes |= {
        f"via proxy {name}": asks_proxy(f"GET http://{ip}:9999/") for name, ip in addresses.items()
    }
    second = await dockguard.run(probing(probes))
    stop = await (await docker.containers.get(build_container)).exec(["touch", "/stop"])
    await stop.start(detach=True)  # ends the first job's RUN step
    first = await dockguard.wait(first_id)
    assert assert_succeeded(first) == {"perf": 1, "received": "self9999self3128"}
    data = assert_succeeded(second)
    expected = {k: ("HTTP/1.1 403 Forbidden" if k.startswith("via") else "blocked") for k in probes}
    assert {k: data[k] for k in probes} == expected
    await assert_nothing_left(docker, first, second)


async def test_missing_proxy_image_fails_the_build_clearly(
    instances: Instances, docker: aiodocker.Docker
) -> None:
    broken = await instances.get(**FAST, build_egress_proxy_image="dockguard/egress-proxy:absent")
    job = await broken.run('FROM busybox:latest\nRUN true\nUSER 1000\nCMD ["true"]\n')
    assert (job["status"], job["error"]["code"]) == ("failed", "internal_error")
    assert "egress network" in job["error"]["message"]
    assert "proxy-image.sh" in job["error"]["message"]
    await assert_nothing_left(docker, job)


async def test_bridge_is_an_explicit_warned_opt_in(
    docker: aiodocker.Docker, caplog: pytest.LogCaptureFixture
) -> None:
    assert Settings().build_network == "egress"
    with caplog.at_level(logging.WARNING, logger="dockguard.services"):
        assert await build_egress(Settings(build_network="bridge"), docker) is None
    assert any("BUILD_NETWORK=bridge" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="DOCKGUARD_BUILD_EGRESS_ALLOW"):
        Settings(build_egress_allow="deb.debian.org,http://evil/")


async def test_overlapping_jobs_set_up_and_remove_their_networks_without_a_fault(
    docker: aiodocker.Docker,
) -> None:
    """Jobs whose egress networks come and go at overlapping times: one job's set-up prunes
    the host rules of finished jobs while another's cleanup removes the same rules, and every
    set-up still succeeds (two removals of one rule once failed a job as internal_error), every
    job's rule stays in place while its network lives, and nothing is left."""
    gate = egress.Egress(docker, ["deb.debian.org"], egress.DEFAULT_IMAGE)
    jobs = [uuid.uuid4().hex for _ in range(12)]
    held: dict[str, list[str]] = {}

    async def one(index: int, job_id: str) -> None:
        await asyncio.sleep(0.15 * index)  # set-ups overlap earlier jobs' lifetimes and ends
        async with gate.network(job_id):
            held[job_id] = firewall_rules(job_id)
            await asyncio.sleep(0.1 * (index % 4))
            assert firewall_rules(job_id) == held[job_id]

    await asyncio.gather(*(one(i, job_id) for i, job_id in enumerate(jobs)))
    assert all(len(rules) == 3 for rules in held.values()), held  # bridge (v4, v6) + proxy (v4)
    await assert_nothing_left(docker, *({"id": job_id} for job_id in jobs))
