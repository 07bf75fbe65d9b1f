"""Builds under gVisor: the classic builder takes no runtime per build, so a dedicated engine
whose default runtime is runsc (`scripts/gvisor.sh --build-engine`, its own socket, data root and
network namespace) runs a job's RUN steps — and, with DOCKGUARD_RUNTIME unset, its run — under
gVisor. The test starts that engine, points a dockguard at it (DOCKGUARD_DOCKER_URL), proves from
inside a RUN step and the run that both are gVisor's, checks /readyz says so, makes the build
attacks of test_adversarial.py there (each beside a benign job) and leaves nothing of any job in
that engine. It stops the engine at the end. Never skipped: a machine that cannot run gVisor fails
here with the reason."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import pytest
import pytest_asyncio

from tests.e2e.conftest import Dockguard, Instances, assert_failed, leftovers
from tests.e2e.test_adversarial import (
    alongside_benign,
    assert_build_containers_gone,
    assert_endless_builds_stopped,
    building,
)
from tests.e2e.test_gvisor import GVISOR_VERSION, refused_start

ROOT = Path(__file__).resolve().parents[2]
# Its own socket, so that an engine someone started by hand on the default one is not stopped.
SOCKET = "/run/dockguard-gvisor-test/docker.sock"
PROFILE = {
    "docker_url": f"unix://{SOCKET}",
    "build_network": "none",  # the build engine has no bridge: nothing else can build there
    "run_timeout_s": 10,
    "build_timeout_s": 15,
    "build_memory_mb": 128,
    "build_pids": 256,
    "run_memory_mb": 64,
}

# The kernel's version in a RUN step (kept in the image) and in the run, and each one's seccomp
# mode: gVisor's kernel reports a fixed Linux 4.4.0 version (test_gvisor.py).
KERNELS = """\
FROM busybox:latest
RUN tr -cd 'A-Za-z0-9 .#:()+-' < /proc/version > /build-kernel && \\
    grep '^Seccomp:' /proc/self/status | tr -cd 0-9 > /build-seccomp
USER 1000
CMD printf '{"perf": 1, "build": "%s", "build_seccomp": %s, "run": "%s", "run_seccomp": %s}' \\
    "$(cat /build-kernel)" "$(cat /build-seccomp)" \\
    "$(tr -cd 'A-Za-z0-9 .#:()+-' < /proc/version)" \\
    "$(grep '^Seccomp:' /proc/self/status | tr -cd 0-9)" > /data/perf.json
"""


def gvisor(*args: str) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gvisor.sh"), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"scripts/gvisor.sh {' '.join(args)} failed: {done.stderr[-2000:]}")


@dataclass
class BuildEngine:
    docker: aiodocker.Docker
    jobs: list[str] = field(default_factory=list)  # every job submitted to it


@pytest_asyncio.fixture(scope="module")
async def engine() -> AsyncIterator[BuildEngine]:
    """The dedicated engine (runsc by default), started for this module and stopped after it;
    at the end, nothing of the module's jobs may be left in it."""
    gvisor("--build-engine", SOCKET)  # installs and registers runsc first, if need be
    try:
        async with aiodocker.Docker(url=f"unix://{SOCKET}") as docker:
            info = await docker.system.info()
            assert info["DefaultRuntime"] == "runsc", info["DefaultRuntime"]
            started = BuildEngine(docker)
            yield started
            remaining = {
                job: found for job in started.jobs if (found := await leftovers(docker, job))
            }
            assert not remaining, f"jobs left objects in the build engine: {remaining}"
    finally:
        gvisor("--stop-build-engine", SOCKET)


@pytest_asyncio.fixture(scope="module")
async def dg(instances: Instances, engine: BuildEngine) -> AsyncIterator[Dockguard]:
    """A dockguard whose builds and runs are all on the build engine."""
    instance = await instances.get(**PROFILE)
    yield instance
    engine.jobs.extend(instance.submitted)
    await instances.stop(**PROFILE)  # before its engine stops


@pytest.fixture
def build_engine(engine: BuildEngine) -> aiodocker.Docker:
    return engine.docker


async def test_run_steps_and_the_run_are_under_gvisor(
    dg: Dockguard, build_engine: aiodocker.Docker
) -> None:
    job = await dg.run(KERNELS)
    assert job["status"] == "succeeded", json.dumps(job)[:2000]
    data = job["result"]["data"]
    assert data["build"].startswith(GVISOR_VERSION), data
    assert data["run"].startswith(GVISOR_VERSION), data
    assert (data["build_seccomp"], data["run_seccomp"]) == (2, 2), data  # filtered in gVisor too
    assert job["run"]["limits"]["runtime"] is None  # none asked: the engine's default, runsc
    assert job["build"]["limits"]["network"] == "none"
    assert await leftovers(build_engine, job["id"]) == []


async def test_readyz_reports_gvisor_for_builds_and_runs(dg: Dockguard) -> None:
    body = (await dg.client.get("/readyz")).json()
    assert body["runtime"] == {"run": "runsc", "build": "runsc"}, body
    assert body["status"] == "ready", body


async def test_fork_bomb_in_a_run_step(dg: Dockguard, build_engine: aiodocker.Docker) -> None:
    marker = str(random.randrange(10**8, 10**9))
    (job,) = await alongside_benign(dg, building(f"while :; do (sleep {marker} &); done"))
    assert job["status"] == "failed"
    # Held by the build's pids cgroup (gVisor's threads count in it too), the shell's fork
    # fails and it exits (build_failed), or the bomb lasts until the build's timeout.
    assert job["error"]["code"] in ("build_timeout", "build_failed"), job["error"]
    await assert_build_containers_gone(build_engine, marker)
    assert await leftovers(build_engine, job["id"]) == []


async def test_memory_hog_in_a_run_step(dg: Dockguard, build_engine: aiodocker.Docker) -> None:
    (job,) = await alongside_benign(dg, building("cat /dev/zero | tail"))
    assert_failed(job, "build_failed")
    assert "status 137" in job["error"]["message"]  # SIGKILL: gVisor's sandbox, OOM-killed
    assert await leftovers(build_engine, job["id"]) == []


async def test_endless_run_steps_are_stopped_at_the_timeout(
    dg: Dockguard, build_engine: aiodocker.Docker
) -> None:
    await assert_endless_builds_stopped(dg, build_engine)


async def test_a_run_step_has_no_network(dg: Dockguard) -> None:
    job = await dg.run(
        "FROM busybox:latest\nRUN ls /sys/class/net | tr '\\n' ' ' > /net\nUSER 1000\n"
        """CMD printf '{"perf": 1, "net": "%s"}' "$(cat /net)" > /data/perf.json\n"""
    )
    assert job["status"] == "succeeded", json.dumps(job)[:2000]
    assert job["result"]["data"]["net"] == "lo ", job["result"]  # loopback only


async def test_too_few_pids_for_the_engines_gvisor_default_stops_the_start(
    engine: BuildEngine, redis_port: int
) -> None:
    # DOCKGUARD_RUNTIME unset: runs take the engine's default, runsc
    settings = {"DOCKGUARD_DOCKER_URL": f"unix://{SOCKET}", "DOCKGUARD_RUN_PIDS": "64"}
    message = await refused_start(["worker"], settings, redis_port)
    assert "DOCKGUARD_RUN_PIDS=64 is too few under gVisor (the engine's default runtime" in message
