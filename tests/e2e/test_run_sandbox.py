"""The run's /data, the image's VOLUMEs and what the Dockerfile controls, end to end through the
API against the real engine: /data is a size-capped tmpfs owned by the run user whose content
outlives the run until it is read; an image whose /data is not a directory never runs; an image
VOLUME leaves no anonymous volume behind and gives the run nothing writable; a USER, CMD or
ENTRYPOINT the sandbox cannot use fails with the Dockerfile's own error code, never ours.

Every probe is submitted at once on first use (with a benign job that must succeed alongside)
and awaited together, so the file waits for them in parallel."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import pytest_asyncio

from tests.e2e import conftest
from tests.e2e.conftest import RUNTIMES, Dockguard, Instances, assert_gone, require_runtime

DATA_MB = 8
PROFILE = {"run_timeout_s": 20, "build_timeout_s": 60, "run_memory_mb": 64, "run_data_mb": DATA_MB}
MiB = 1024 * 1024
MARKER = f"dockguard-volume-marker-{uuid.uuid4().hex}"


def dockerfile(script: str, *, setup: str = "", user: str = "1000") -> str:
    """A busybox Dockerfile: `setup` lines (as root) at build time, then `script` as the run."""
    lines = ["FROM busybox:latest", *([setup] if setup else []), f"USER {user}"]
    return "\n".join([*lines, f"CMD {json.dumps(['sh', '-c', script])}"]) + "\n"


FILL = (
    # one file as large as it gets, then as many 1 MiB files as fit, each far under `fsize`
    "dd if=/dev/zero of=/data/big bs=1M count=100 2>/dev/null; dd=$?; "
    "one=$(wc -c < /data/big); rm -f /data/big; "
    "n=0; while [ $n -lt 100 ] && head -c 1048576 /dev/zero > /data/f$n 2>/dev/null; "
    "do n=$((n+1)); done; many=$(cat /data/f* | wc -c); rm -f /data/f*; "
    """printf '{"perf": 1, "dd": %s, "one": %s, "files": %s, "many": %s, "mode": "%s", """
    """"fs": "%s"}' $dd $one $n $many """
    '"$(stat -c %a /data)" "$(stat -f -c %T /data)" > /data/perf.json'
)
PROBES: dict[str, str] = {
    "benign": dockerfile("""echo '{"perf": 0.5}' > /data/perf.json"""),
    "fill": dockerfile(FILL),
    # The image's /data, root's and not empty: the run's /data is its own, empty and writable.
    "image data dir": dockerfile(
        """printf '{"perf": 1, "entries": %s}' "$(ls -A /data | wc -l)" > /data/perf.json""",
        setup="""RUN mkdir -m 755 /data && echo '{"perf": 9}' > /data/perf.json""",
    ),
    # VOLUMEs at /tmp and /data too: the sandbox's own mounts there stay the ones used.
    "volume": dockerfile(
        "touch /somewhere/x 2>/dev/null; w=$?; touch /tmp/x; t=$?; "
        """printf '{"perf": 1, "write": %s, "tmp": %s, "seen": "%s"}' $w $t """
        '"$(cat /somewhere/f)" > /data/perf.json',
        setup=(
            f"RUN mkdir /somewhere && echo {MARKER} > /somewhere/f && chown -R 1000 /somewhere\n"
            "VOLUME /somewhere /tmp /data"
        ),
    ),
    "data -> /etc": dockerfile("true", setup="RUN ln -s /etc /data"),
    "data -> /": dockerfile("true", setup="RUN ln -s / /data"),
    "data a file": dockerfile("true", setup="RUN touch /data"),
    "missing CMD binary": 'FROM busybox:latest\nUSER 1000\nCMD ["/no/such/binary"]\n',
    "ENTRYPOINT a directory": 'FROM busybox:latest\nUSER 1000\nENTRYPOINT ["/etc"]\n',
    "USER 4294967294": dockerfile("true", user="4294967294"),
    "USER 2147483647:1000": dockerfile("true", user="2147483647:1000"),
    "USER undefined name": dockerfile("true", user="no-such-user"),
    "USER undefined group": dockerfile("true", user="1000:no-such-group"),
    "USER name with a huge uid": dockerfile(
        "true", setup="RUN echo 'big:x:3000000000:1000::/:/bin/sh' >> /etc/passwd", user="big"
    ),
}


def volumes_holding_marker() -> list[str]:
    """Volumes on the engine host (this machine) whose content is the probe image's /somewhere."""
    found = []
    for data in Path("/var/lib/docker/volumes").glob("*/_data"):
        try:
            if MARKER in (data / "f").read_text():
                found.append(data.parent.name)
        except OSError:
            continue  # no such file, or the volume went meanwhile
    return found


def disk_used() -> int:
    return shutil.disk_usage("/var/lib/docker").used


@pytest_asyncio.fixture(scope="module", params=RUNTIMES)
async def runtime(request: pytest.FixtureRequest, docker: aiodocker.Docker) -> str:
    """Every probe runs under runc (the engine's default) and under gVisor in turn."""
    await require_runtime(docker, request.param)
    return str(request.param)


@pytest_asyncio.fixture(scope="module")
async def probes(instances: Instances, runtime: str) -> dict[str, dict[str, Any]]:
    profile = PROFILE if runtime == "runc" else {**PROFILE, "runtime": runtime}
    instance: Dockguard = await instances.get(**profile)
    disk = [disk_used()]

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.1)
            disk.append(disk_used())

    sampler = asyncio.create_task(sample())
    try:
        ended = await asyncio.gather(*(instance.run(d, 120) for d in PROBES.values()))
    finally:
        sampler.cancel()
    jobs = dict(zip(PROBES, ended, strict=True))
    jobs["disk"] = {"grown": max(disk) - disk[0]}
    return jobs


def assert_failed(job: dict[str, Any], code: str) -> None:
    """Failed with `code`, in dockguard's words: no daemon text in the message."""
    conftest.assert_failed(job, code)
    message = job["error"]["message"]
    for daemon_words in ("OCI", "runc", "shim", "Error response", "stat /", "Traceback"):
        assert daemon_words not in message, message


async def test_data_is_bounded_by_the_kernel_not_per_file(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker, runtime: str
) -> None:
    benign, job = probes["benign"], probes["fill"]
    assert benign["status"] == "succeeded", benign["error"]
    assert benign["result"] == {"perf": 0.5, "data": {"perf": 0.5}}
    assert job["status"] == "succeeded", (job["error"], job["run"])
    data = job["result"]["data"]
    assert data["dd"] != 0  # ENOSPC: the run's own write fails, nothing kills it
    assert DATA_MB * MiB - MiB <= data["one"] <= DATA_MB * MiB
    assert data["files"] <= DATA_MB and data["many"] <= DATA_MB * MiB  # the sum, not each file
    # gVisor shows the host's tmpfs through its own file server, whose type busybox cannot name.
    assert (data["fs"], data["mode"]) == ("tmpfs" if runtime == "runc" else "UNKNOWN", "700")
    assert job["run"]["oom_killed"] is False
    assert probes["disk"]["grown"] < 256 * MiB  # /data is memory: nothing of it reaches the disk
    await assert_gone(docker, job)


async def test_image_data_dir_is_not_copied(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker
) -> None:
    job = probes["image data dir"]
    assert job["status"] == "succeeded", (job["error"], job["run"])
    assert job["result"]["data"] == {"perf": 1, "entries": 0}
    await assert_gone(docker, job)


async def test_image_volume_is_masked_and_leaves_no_volume(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker
) -> None:
    job = probes["volume"]
    assert volumes_holding_marker() == []  # no anonymous volume of the image's content remains
    assert job["status"] == "succeeded", (job["error"], job["run"])
    # masked by an empty read-only tmpfs: no disk to write to, and none of the image's content
    assert job["result"]["data"] == {"perf": 1, "write": 1, "tmp": 0, "seen": ""}
    await assert_gone(docker, job)


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("data -> /etc", "a symbolic link to '/etc'"),
        ("data -> /", "a symbolic link to '/'"),
        ("data a file", "a regular file"),
    ],
)
async def test_data_that_is_not_a_directory_is_refused(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker, case: str, kind: str
) -> None:
    job = probes[case]
    assert_failed(job, "data_dir_invalid")
    assert f"/data is {kind}" in job["error"]["message"]
    assert job["run"] is None  # refused before anything of the image ran
    await assert_gone(docker, job)


@pytest.mark.parametrize("case", ["missing CMD binary", "ENTRYPOINT a directory"])
async def test_unstartable_command_is_the_dockerfiles_error(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker, case: str
) -> None:
    job = probes[case]
    assert_failed(job, "run_start_failed")
    assert "CMD or ENTRYPOINT" in job["error"]["message"]
    await assert_gone(docker, job)


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("USER 4294967294", "out of range"),
        ("USER 2147483647:1000", "out of range"),
        ("USER undefined name", "not defined in the image's /etc/passwd"),
        ("USER undefined group", "not defined in the image's /etc/group"),
        ("USER name with a huge uid", "out of range"),
    ],
)
async def test_unusable_user_is_user_invalid(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker, case: str, why: str
) -> None:
    job = probes[case]
    assert_failed(job, "user_invalid")
    assert why in job["error"]["message"]
    assert job["run"] is None
    await assert_gone(docker, job)
