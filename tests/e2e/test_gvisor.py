"""DOCKGUARD_RUNTIME=runsc: a job's run container is under gVisor, as seen from inside it (its
/proc/version is gVisor's kernel's, under a seccomp filter), the job records the runtime,
/readyz reports which runtime runs and builds get, and a runtime the engine does not know, or
gVisor with too few pids for its own threads, stops dockguard at start (exit 2).

scripts/test.sh registers runsc with the engine (scripts/gvisor.sh) first. A machine that cannot
run gVisor fails these tests with the reason: they are never skipped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import aiodocker
import pytest

from tests.e2e.conftest import Instances, assert_gone

ROOT = Path(__file__).resolve().parents[2]

# The run writes its kernel's /proc/version and its seccomp mode into perf.json. gVisor's kernel
# reports a fixed Linux 4.4.0 version (`dmesg` would say "Starting gVisor", but the engine's
# seccomp profile, which runsc applies with --oci-seccomp, refuses syslog(2) to a run).
GVISOR_VERSION = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"
KERNEL_PROBE = """\
FROM busybox:latest
USER 1000
CMD printf '{"perf": 1, "kernel": "%s", "seccomp": %s}' \\
    "$(tr -cd 'A-Za-z0-9 .#:()+-' < /proc/version)" \\
    "$(grep '^Seccomp:' /proc/self/status | tr -cd 0-9)" > /data/perf.json
"""


@pytest.fixture(scope="module", autouse=True)
async def runsc_registered() -> None:
    async with aiodocker.Docker() as docker:
        info = await docker.system.info()
    if "runsc" not in (info.get("Runtimes") or {}):
        pytest.fail("the engine has no runtime runsc: run scripts/gvisor.sh (scripts/test.sh does)")


async def test_a_job_runs_under_gvisor(instances: Instances, docker: aiodocker.Docker) -> None:
    dg = await instances.get(runtime="runsc", build_network="none")
    job = await dg.run(KERNEL_PROBE)
    assert job["status"] == "succeeded", json.dumps(job)[:2000]
    assert job["result"]["data"]["kernel"].startswith(GVISOR_VERSION), job["result"]
    assert job["result"]["data"]["seccomp"] == 2  # the engine's profile holds inside gVisor
    assert job["run"]["limits"]["runtime"] == "runsc"
    await assert_gone(docker, job)

    # and the same Dockerfile under the engine's default runtime sees this machine's kernel
    plain = await (await instances.get(build_network="none")).run(KERNEL_PROBE)
    assert plain["status"] == "succeeded", json.dumps(plain)[:2000]
    host = Path("/proc/version").read_text().split(" (")[0]  # "Linux version <release>"
    assert plain["result"]["data"]["kernel"].startswith(host), (host, plain["result"])
    assert not plain["result"]["data"]["kernel"].startswith(GVISOR_VERSION)
    assert plain["result"]["data"]["seccomp"] == 2
    assert plain["run"]["limits"]["runtime"] is None


async def test_readyz_reports_the_runtimes(instances: Instances) -> None:
    dg = await instances.get(runtime="runsc", build_network="none")
    body = (await dg.client.get("/readyz")).json()
    # Builds get the engine's default: the classic builder takes no runtime per build.
    assert body["runtime"] == {"run": "runsc", "build": "runc"}
    body = (await dg.client.get("/readyz", params={"exclude": "docker"})).json()
    assert body["runtime"] == {"run": "runsc", "build": None}  # the engine was not asked
    default = await instances.get(build_network="none")
    assert (await default.client.get("/readyz")).json()["runtime"] == {
        "run": "runc",
        "build": "runc",
    }


REFUSED = {
    "unknown runtime": (
        {"DOCKGUARD_RUNTIME": "no-such-runtime"},
        # Which runtimes an engine lists besides runc varies (newer ones add containerd's).
        re.compile(
            r"DOCKGUARD_RUNTIME=no-such-runtime is not a runtime of the Docker Engine "
            r"\(it has: ([^)]*, )?runc(, [^)]*)?\); register it"
        ),
    ),
    "too few pids for gVisor": (
        {"DOCKGUARD_RUNTIME": "runsc", "DOCKGUARD_RUN_PIDS": "64"},
        re.compile(
            re.escape("DOCKGUARD_RUN_PIDS=64 is too few under gVisor (DOCKGUARD_RUNTIME=runsc)")
        ),
    ),
}


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("command", [["worker"], ["serve", "--no-worker", "--port", "0"]])
async def test_a_runtime_nothing_could_run_under_stops_the_start(
    command: list[str], case: str, redis_port: int
) -> None:
    settings, expected = REFUSED[case]
    message = await refused_start(command, settings, redis_port)
    assert expected.search(message), message[-2000:]


async def refused_start(command: list[str], settings: dict[str, str], redis_port: int) -> str:
    """What `dockguard <command>` with these settings prints as it refuses to start (exit 2)."""
    env = {name: value for name, value in os.environ.items() if name != "DOCKGUARD_RUNTIME"}
    env.update(settings)  # the runtime, if any, is the case's own
    env["DOCKGUARD_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    env["DOCKGUARD_WORKER_METRICS_PORT"] = "0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dockguard", *command, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    message = err.decode()
    assert proc.returncode == 2, message[-2000:]
    assert "Traceback" not in message
    return message
