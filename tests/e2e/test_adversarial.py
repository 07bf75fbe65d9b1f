"""Hostile Dockerfiles, end to end through the API against the real engine: each attack ends with
its exact status and error code, leaves nothing of the job in the engine, and — for attacks on
resources — does not stop a benign job submitted at the same moment on the same instance.

Probes that need no concurrent benign job (escape attempts, hostile results) are submitted
together on first use and awaited once, so the suite waits for them in parallel, not in turn.
Every address targeted from inside a sandbox is loopback: the container's own."""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import random
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import pytest
import pytest_asyncio

from tests.e2e.conftest import (
    RUNTIMES,
    Dockguard,
    Instances,
    assert_failed,
    assert_gone,
    require_runtime,
)

# Nothing reads it: it is set before any instance starts, so that a leak of the worker's
# environment into a container, a result or a log would show it.
SECRET = f"dockguard-test-secret-{random.getrandbits(64):016x}"
os.environ["DOCKGUARD_TEST_SECRET"] = SECRET

# One settings profile for the whole file, so every test shares one instance: short timeouts and
# small limits keep each attack short; the build network is on to show the run's is not.
SANDBOX = {
    "run_timeout_s": 5,
    "build_timeout_s": 10,
    "run_memory_mb": 64,
    "build_memory_mb": 64,
    "run_pids": 64,
    "build_pids": 64,
    "run_tmpfs_mb": 16,
    "build_network": "bridge",
}
MiB = 1024 * 1024
RUNSC_MIN_PIDS = 128


def dockerfile(script: str, *, setup: str = "") -> str:
    """A busybox Dockerfile: `setup` (Dockerfile lines, RUN as root) at build time, then `script`
    as the run's command, as uid 1000."""
    lines = ["FROM busybox:latest", *([setup] if setup else []), "USER 1000"]
    return "\n".join([*lines, f"CMD {json.dumps(['sh', '-c', script])}"]) + "\n"


def building(script: str) -> str:
    """A busybox Dockerfile whose build runs `script` as a non-root RUN step."""
    return f'FROM busybox:latest\nUSER 1000\nRUN {script}\nCMD ["true"]\n'


def reports(values: dict[str, str]) -> str:
    """A run script writing {"perf": 1, name: value…} to /data/perf.json. Each value is shell
    text expanding to a JSON number (see `status`) or string (see `text`), in order."""
    fields = "".join(f', "{name}": %s' for name in values)
    arguments = " ".join(f'"{value}"' for value in values.values())
    return f"printf '{{\"perf\": 1{fields}}}' {arguments} > /data/perf.json"


def status(command: str) -> str:
    """The exit status of `command` (its stderr goes to the run's log)."""
    return f"$( ( {command} ) >/dev/null; echo $? )"


def text(expansion: str) -> str:
    """A shell expansion as a JSON string (its output must need no JSON escaping)."""
    return f'\\"{expansion}\\"'


BENIGN_PERF = 0.625
BENIGN = dockerfile(f"echo '{{\"perf\": {BENIGN_PERF}}}' > /data/perf.json")


@pytest_asyncio.fixture(scope="module", params=RUNTIMES)
async def runtime(request: pytest.FixtureRequest, docker: aiodocker.Docker) -> str:
    """Each run attack is made under runc (the engine's default) and under gVisor."""
    await require_runtime(docker, request.param)
    return str(request.param)


@pytest_asyncio.fixture
async def sandbox(instances: Instances, runtime: str) -> Dockguard:
    """The instance whose runs use `runtime` (its builds use the engine's default, runc)."""
    return await instances.get(**sandbox_profile(runtime))


@pytest_asyncio.fixture
async def builder(instances: Instances) -> Dockguard:
    """The instance for attacks on the build and on submission, which no run runtime changes."""
    return await instances.get(**SANDBOX)


def sandbox_profile(runtime: str) -> dict[str, Any]:
    if runtime == "runc":
        return SANDBOX
    # gVisor's own threads count in the pids limit: at 64 a shell runs out after a few forks.
    return {**SANDBOX, "runtime": runtime, "run_pids": RUNSC_MIN_PIDS}


async def alongside_benign(instance: Dockguard, *hostile: str) -> list[dict[str, Any]]:
    """Submit the hostile Dockerfiles and a benign one at the same moment; the benign job must
    succeed with its exact result. Returns the hostile jobs, ended."""
    *jobs, benign = await asyncio.gather(*(instance.run(d, 90) for d in (*hostile, BENIGN)))
    assert benign["status"] == "succeeded", (benign["error"], benign["build"], benign["run"])
    assert benign["result"] == {"perf": BENIGN_PERF, "data": {"perf": BENIGN_PERF}}
    return jobs


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


@asynccontextmanager
async def sampled(
    measure: Callable[[], float], every_s: float = 0.05
) -> AsyncIterator[list[float]]:
    """Samples of `measure()` taken while the block runs (the engine host is this machine)."""
    samples = [measure()]

    async def sample() -> None:
        while True:
            await asyncio.sleep(every_s)
            samples.append(measure())

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        samples.append(measure())


def host_processes(*argv: str) -> int:
    """How many processes of the engine host run exactly `argv`."""
    wanted = "\0".join(argv).encode() + b"\0"
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    count += cmdline.read() == wanted
            except OSError:
                pass  # it ended meanwhile
    return count


def most_container_pids() -> int:
    """The most processes and threads any container's pids cgroup holds now (cgroup v1 on the
    engine host, this machine: the engine's cgroupfs driver puts container `id` in docker/<id>)."""
    most = 0
    for current in glob.glob("/sys/fs/cgroup/pids/docker/*/pids.current"):
        try:
            with open(current) as count:
                most = max(most, int(count.read()))
        except (OSError, ValueError):
            pass  # it went meanwhile
    return most


def docker_disk_used() -> int:
    return shutil.disk_usage("/var/lib/docker").used


def rss_bytes() -> int:
    """This process's resident memory: the worker runs in it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def assert_build_containers_gone(docker: aiodocker.Docker, marker: str) -> None:
    """A timed-out build's RUN containers carry no job label: find them by the command's marker."""

    async def remaining() -> list[str]:
        found = await docker.containers.list(all=True)
        return [c.id for c in found if marker in c._container.get("Command", "")]

    deadline = time.monotonic() + 15
    while found := await remaining():
        assert time.monotonic() < deadline, f"build containers running {marker} remain: {found}"
        await asyncio.sleep(0.2)


# --- Probes submitted together -------------------------------------------------------------------

PROBES: dict[str, str] = {}


def probe(name: str, dockerfile_text: str) -> str:
    PROBES[name] = dockerfile_text
    return name


@pytest_asyncio.fixture(scope="module")
async def probes(instances: Instances, runtime: str) -> dict[str, dict[str, Any]]:
    """Every probe's ended job under `runtime`, by probe name."""
    instance = await instances.get(**sandbox_profile(runtime))
    responses = await asyncio.gather(*(instance.submit(d) for d in PROBES.values()))
    assert [r.status_code for r in responses] == [202] * len(PROBES), [r.text for r in responses]
    ended = await asyncio.gather(*(instance.wait(r.json()["id"], 240) for r in responses))
    return dict(zip(PROBES, ended, strict=True))


def writes(command: str) -> str:
    """A Dockerfile whose run writes `command`'s output to /data/perf.json, then exits 0 (the
    result is the attack here, not the exit status)."""
    return dockerfile(f"{{ {command}; }} > /data/perf.json; exit 0")


# An /etc/shadow line, ':' written as printf's octal escape: "root:" is in the image's file only,
# never in the Dockerfile or its build log.
SHADOW_LINE = "root\\072dockguard-test-hash\\07219000\\072\\072\\072"
REPEAT = "head -c {n} /dev/zero | tr '\\0' '{c}'"  # `n` copies of the character `c`


def keys(n: int) -> str:
    return f"""echo '{{'; seq {n} | sed 's/.*/"&":0,/'; echo '"perf": 1}}'"""


# name → (Dockerfile, the exact error code, what its message says)
HOSTILE_RESULTS = {
    "symlink to /etc/shadow": (
        dockerfile(
            "ln -s /etc/shadow /data/perf.json",
            setup=f"RUN printf '{SHADOW_LINE}\\n' > /etc/shadow && chmod 600 /etc/shadow",
        ),
        "result_not_regular_file",
        "symbolic link",
    ),
    "symlink to /proc/self/environ": (
        dockerfile("ln -s /proc/self/environ /data/perf.json"),
        "result_not_regular_file",
        "symbolic link",
    ),
    "directory": (dockerfile("mkdir /data/perf.json"), "result_not_regular_file", "directory"),
    "fifo": (dockerfile("mkfifo /data/perf.json"), "result_not_regular_file", "named pipe"),
    # The file-size cap may refuse a 50 GB file even sparse; the largest it allows is still huge.
    "50 GB sparse file": (
        dockerfile(
            "if truncate -s 50G /data/perf.json; then echo sparse 50G; "
            "else truncate -s 16M /data/perf.json && echo sparse 16M under the file-size cap; fi"
        ),
        "result_too_large",
        "larger than 65536 bytes",
    ),
    "NaN": (writes("""echo '{"perf": NaN}'"""), "result_invalid", "finite"),
    "1e999": (writes("""echo '{"perf": 1e999}'"""), "result_invalid", "finite"),
    # 100 kB: the size cap (64 KiB) answers before any parsing
    "100000-digit integer": (
        writes(f"""printf '{{"perf": '; {REPEAT.format(n=100000, c=7)}; echo '}}'"""),
        "result_too_large",
        "larger than 65536 bytes",
    ),
    "50000-digit integer": (
        writes(f"""printf '{{"perf": 1, "n": '; {REPEAT.format(n=50000, c=7)}; echo '}}'"""),
        "result_invalid",
        "is invalid",
    ),
    "10000-deep nesting": (
        writes(
            f"""printf '{{"perf": 1, "n": '; {REPEAT.format(n=10000, c="[")}; """
            f"""{REPEAT.format(n=10000, c="]")}; echo '}}'"""
        ),
        "result_invalid",
        "nested",
    ),
    "1 million keys": (writes(keys(1_000_000)), "result_too_large", "larger than 65536 bytes"),
    # within the size cap: the key-count cap answers
    "5000 keys": (writes(keys(5000)), "result_invalid", "1000 members"),
    "not UTF-8": (
        writes("""printf '{"perf": 1, "s": "\\377\\376"}'"""),
        "result_invalid",
        "UTF-8",
    ),
}
for _name, (_dockerfile, _, _) in HOSTILE_RESULTS.items():
    probe(_name, _dockerfile)


@pytest.mark.parametrize("case", HOSTILE_RESULTS)
async def test_hostile_result_is_refused(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker, runtime: str, case: str
) -> None:
    job = probes[case]
    _, code, message = HOSTILE_RESULTS[case]
    if (case, runtime) == ("fifo", "runsc"):
        # gVisor keeps a named pipe made in a volume inside its own kernel: the host, where the
        # result is read, sees no file at all.
        code, message = "result_missing", "did not write"
    assert_failed(job, code)
    assert message in job["error"]["message"]
    assert job["result"] is None
    assert job["run"]["exit_code"] == 0
    text = json.dumps(job)
    assert "root:" not in text and "PATH=" not in text and "HOSTNAME=" not in text
    await assert_gone(docker, job)


MANY_KEYS = probe("900 keys", writes(keys(900)))


async def test_result_with_many_keys_within_the_caps(probes: dict[str, dict[str, Any]]) -> None:
    job = probes[MANY_KEYS]
    assert job["status"] == "succeeded", job["error"]
    assert len(job["result"]["data"]) == 901


_LONG_NAME = REPEAT.format(n=255, c="n")
_LONG_DIR = REPEAT.format(n=200, c="d")
HUGE_NAMES = probe(
    "huge names next to perf.json",
    # A 255-character name, and a tree 40 levels deep of 200-character names (8000 characters,
    # past PATH_MAX: built by moving the tree down one level at a time).
    dockerfile(
        f'name=$({_LONG_NAME}); dir=$({_LONG_DIR}); cd /data && touch "$name" && mkdir tree; '
        'for level in $(seq 40); do mkdir up && mv tree "up/$dir" && mv up tree || exit 9; done; '
        """touch "tree/$name" && echo '{"perf": 0.25}' > /data/perf.json"""
    ),
)


async def test_huge_names_beside_the_result_do_not_matter(
    probes: dict[str, dict[str, Any]], docker: aiodocker.Docker
) -> None:
    job = probes[HUGE_NAMES]
    assert job["status"] == "succeeded", (job["error"], job["run"])
    assert job["result"] == {"perf": 0.25, "data": {"perf": 0.25}}
    await assert_gone(docker, job)  # an 8000-character deep tree in the volume, removed too


READ_ONLY_ROOTFS = probe(
    "writes to the rootfs",
    dockerfile(
        reports(
            {
                "etc": status("touch /etc/x"),
                "root": status("touch /x"),
                "bin": status("cp /bin/busybox /bin/x"),
                "exec_from_tmp": status("cp /bin/busybox /tmp/sh && /tmp/sh true"),
                "data": status("touch /data/x"),
                "tmp": status("touch /tmp/x"),
            }
        )
    ),
)


async def test_rootfs_is_read_only_and_tmp_noexec(probes: dict[str, dict[str, Any]]) -> None:
    job = probes[READ_ONLY_ROOTFS]
    assert job["status"] == "succeeded", (job["error"], job["run"])
    statuses = job["result"]["data"]
    assert statuses["data"] == 0 and statuses["tmp"] == 0  # the writable places work
    assert statuses["etc"] != 0 and statuses["root"] != 0 and statuses["bin"] != 0
    assert statuses["exec_from_tmp"] == 126  # /tmp is noexec: found but not executable


_SU = "/suid/busybox su root -c 'id -u'"
SETUID = probe(
    "setuid",
    dockerfile(
        reports(
            {
                "uid": "$(id -u)",
                "su": text(f"$({_SU} || echo denied)"),
                "suid": "$(/suid/busybox id -u)",
                "chmod": status("cp /bin/busybox /data/busybox && chmod u+s /data/busybox"),
                "data_suid": "$(/data/busybox id -u)",
            }
        ),
        # A setuid-root busybox and a root without a password: `su` gives uid 1000 root unless
        # setuid is stopped — as the second RUN step proves, as uid 1000 outside the sandbox.
        setup="RUN mkdir /suid && cp /bin/busybox /suid/busybox && chmod 4755 /suid/busybox "
        "&& echo 'root::0:0:root:/:/bin/sh' > /etc/passwd\n"
        f'USER 1000\nRUN test "$({_SU})" = 0',
    ),
)


async def test_setuid_gains_nothing(probes: dict[str, dict[str, Any]]) -> None:
    job = probes[SETUID]
    assert job["status"] == "succeeded", (job["error"], job["build"], job["run"])
    assert job["result"]["data"] == {
        "perf": 1,
        "uid": 1000,
        "su": "denied",
        "suid": 1000,
        "chmod": 0,  # its own file in /data: allowed, and useless
        "data_suid": 1000,
    }


NAMESPACES = probe(
    "mount, unshare, ptrace",
    dockerfile(
        reports(
            {
                "processes": "$(ls /proc | grep -c '^[0-9]')",
                "mount": status("mount -t tmpfs none /tmp"),
                "unshare_user": status("unshare -r true"),
                # unshare(CLONE_NEWUSER) itself: the seccomp profile's to refuse, under gVisor
                # too (runsc applies it only with --oci-seccomp: scripts/gvisor.sh sets it)
                "unshare_user_only": status("unshare -U true"),
                "unshare_net": status("unshare -n true"),
                "seccomp": "$(grep '^Seccomp:' /proc/self/status | tr -cd 0-9)",
                "unshare_mount": status("unshare -m true"),
                "nsenter": status("nsenter -t 1 -m -p true"),
                "proc_mem": status("head -c 1 /proc/1/mem"),
                "chroot": status("chroot / true"),
            }
        )
    ),
)


async def test_mount_unshare_ptrace_fail(probes: dict[str, dict[str, Any]]) -> None:
    job = probes[NAMESPACES]
    assert job["status"] == "succeeded", (job["error"], job["run"])
    statuses = dict(job["result"]["data"])
    assert statuses.pop("perf") == 1
    assert statuses.pop("processes") <= 8  # a private PID namespace: the probe's own only
    assert statuses.pop("seccomp") == 2  # a seccomp filter: the engine's default profile
    assert all(status != 0 for status in statuses.values()), statuses


ENV = probe(
    "environment",
    dockerfile(
        "env; "
        + reports(
            {
                "env": text("$(env | base64 -w 0)"),
                "init": text("$(tr '\\0' '\\n' < /proc/1/environ | base64 -w 0)"),
            }
        )
    ),
)


async def test_no_host_environment_inside(probes: dict[str, dict[str, Any]]) -> None:
    job = probes[ENV]
    assert job["status"] == "succeeded", (job["error"], job["run"])
    for where in ("env", "init"):
        seen = base64.b64decode(job["result"]["data"][where]).decode()
        assert "PATH=" in seen  # the image's own environment is there…
        assert "DOCKGUARD" not in seen and SECRET not in seen  # …and nothing of the worker's
    assert "PATH=" in "\n".join(job["run"]["log_tail"])
    assert SECRET not in json.dumps(job) and "DOCKGUARD_" not in json.dumps(job)


NETWORK = probe(
    "network at run with the build network on",
    dockerfile(
        reports(
            {
                "build": text("$(cat /build-interfaces)"),
                "run": text("$(ls /sys/class/net | tr '\\n' ' ')"),
            }
        ),
        setup="RUN ls /sys/class/net | tr '\\n' ' ' > /build-interfaces",
    ),
)


async def test_run_has_only_loopback_even_with_build_network(
    probes: dict[str, dict[str, Any]],
) -> None:
    job = probes[NETWORK]
    assert job["status"] == "succeeded", (job["error"], job["run"])
    assert "eth0" in job["result"]["data"]["build"]  # the build did have a network…
    assert job["result"]["data"]["run"] == "lo "  # …the run has none


# --- One job at a time ---------------------------------------------------------------------------


async def test_services_unreachable_from_inside(sandbox: Dockguard, redis_port: int) -> None:
    # 127.0.0.1 inside is the container's own loopback: the host's services must not answer.
    asks = "printf '{request}' | nc -w 2 127.0.0.1 {port} | grep -q '{answer}'"
    redis = asks.format(request="PING\\r\\n", port=redis_port, answer="PONG")
    api = asks.format(
        request="GET /openapi.json HTTP/1.0\\r\\n\\r\\n",
        port=sandbox.client.base_url.port,
        answer="200 OK",
    )
    socket = "test -e /var/run/docker.sock || test -e /run/docker.sock"
    job = await sandbox.run(
        dockerfile(
            reports({"redis": status(redis), "api": status(api), "docker_socket": status(socket)})
        )
    )
    assert job["status"] == "succeeded", (job["error"], job["run"])
    assert job["result"]["data"] == {"perf": 1, "redis": 1, "api": 1, "docker_socket": 1}
    assert (await sandbox.client.get("/openapi.json")).status_code == 200  # from here: it is up


@pytest.mark.parametrize(
    "forbidden",
    [
        "ADD http://127.0.0.1:9/payload /payload",
        "RUN --mount=type=secret,id=token cat /run/secrets/token",
    ],
)
async def test_forbidden_instruction_refused_at_submission(
    builder: Dockguard, forbidden: str
) -> None:
    await assert_forbidden(builder, f"FROM busybox:latest\n{forbidden}\nUSER 1000\n", line=2)


async def test_syntax_directive_refused_at_submission(builder: Dockguard) -> None:
    body = "# syntax=docker/dockerfile:1\nFROM busybox:latest\nUSER 1000\n"
    await assert_forbidden(builder, body, line=1)


async def assert_forbidden(instance: Dockguard, body: str, line: int) -> None:
    response = await instance.submit(body)
    if response.status_code == 202:  # not refused: let the job end before failing the test
        await instance.wait(response.json()["id"])
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "dockerfile_forbidden"
    assert f"line {line}" in problem["detail"]


async def test_missing_base_image_fails_at_once(
    builder: Dockguard, docker: aiodocker.Docker
) -> None:
    started = time.monotonic()
    job = await builder.run('FROM dockguard-test/no-such-image:1\nUSER 1000\nCMD ["true"]\n')
    assert_failed(job, "build_failed")
    assert "base image" in job["error"]["message"]
    assert time.monotonic() - started < 10  # the scan and one failed lookup: no pull loop
    await assert_gone(docker, job)


# --- Attacks on resources, each beside a benign job ----------------------------------------------


async def test_fork_bomb_at_run(sandbox: Dockguard, docker: aiodocker.Docker, runtime: str) -> None:
    marker = str(random.randrange(10**8, 10**9))
    bomb = dockerfile(f"while :; do (sleep {marker} &); done")
    limit = sandbox.settings.run_pids
    async with (
        sampled(lambda: host_processes("sleep", marker)) as bombs,
        sampled(most_container_pids) as cgroups,
    ):
        (job,) = await alongside_benign(sandbox, bomb)
    # The pids cgroup holds the bomb at its limit: what the engine host's kernel counts.
    assert limit // 2 < max(cgroups) <= limit, (max(cgroups), limit)
    if runtime == "runc":
        assert_failed(job, "run_timeout")
        assert 0 < max(bombs) < limit  # the bomb's processes are host processes
    else:
        # Under gVisor they are the user-space kernel's own, and the host's pids limit counts
        # its threads: the shell's fork fails sooner, and it exits (status 2).
        assert job["status"] == "failed"
        assert job["error"]["code"] in ("run_timeout", "run_nonzero_exit"), job["error"]
        assert max(bombs) == 0
    await wait_until(lambda: host_processes("sleep", marker) == 0, 15, "the bomb outlived its job")
    await wait_until(
        lambda: most_container_pids() <= limit // 2, 15, "the bomb's cgroup outlived its job"
    )
    await assert_gone(docker, job)


async def test_fork_bomb_at_build(builder: Dockguard, docker: aiodocker.Docker) -> None:
    marker = str(random.randrange(10**8, 10**9))
    async with sampled(lambda: host_processes("sleep", marker)) as bombs:
        (job,) = await alongside_benign(builder, building(f"while :; do (sleep {marker} &); done"))
    assert job["status"] == "failed"
    # Held by the build's process limit, the bomb lasts until the build's timeout; if the memory
    # limit kills the RUN step's shell first, the build fails instead.
    assert job["error"]["code"] in ("build_timeout", "build_failed"), job["error"]
    assert 0 < max(bombs) < builder.settings.build_pids
    await wait_until(lambda: host_processes("sleep", marker) == 0, 15, "the build's bomb lives on")
    await assert_build_containers_gone(docker, marker)
    await assert_gone(docker, job)


async def test_memory_hog_at_run(sandbox: Dockguard, docker: aiodocker.Docker) -> None:
    (job,) = await alongside_benign(sandbox, dockerfile("cat /dev/zero | tail"))
    assert_failed(job, "run_oom")
    assert job["run"]["oom_killed"] is True
    await assert_gone(docker, job)


async def test_memory_hog_at_build(builder: Dockguard, docker: aiodocker.Docker) -> None:
    (job,) = await alongside_benign(builder, building("cat /dev/zero | tail"))
    assert_failed(job, "build_failed")
    assert "status 137" in job["error"]["message"]  # SIGKILL, from the OOM killer
    await assert_gone(docker, job)


async def test_endless_runs_are_killed_at_the_timeout(
    sandbox: Dockguard, docker: aiodocker.Docker
) -> None:
    jobs = await alongside_benign(
        sandbox, dockerfile("while :; do :; done"), dockerfile("sleep 1000")
    )
    for job in jobs:
        assert_failed(job, "run_timeout")
        assert job["run"]["timed_out"] is True
        assert 5 <= job["run"]["duration_s"] < 15
    await assert_gone(docker, *jobs)


async def test_endless_builds_are_stopped_at_the_timeout(
    builder: Dockguard, docker: aiodocker.Docker
) -> None:
    await assert_endless_builds_stopped(builder, docker)


async def assert_endless_builds_stopped(instance: Dockguard, docker: aiodocker.Docker) -> None:
    """A busy loop and a sleep in RUN steps, beside a benign job: each ends `build_timeout`, and
    nothing of it (its RUN containers included) is left in `docker`, the engine that built it."""
    marker = f"{random.getrandbits(32):08x}"
    jobs = await alongside_benign(
        instance,
        building(f"echo {marker}-loop && while :; do :; done"),
        building(f"echo {marker}-sleep && sleep 1000"),
    )
    for job in jobs:
        assert_failed(job, "build_timeout")
        assert job["run"] is None
    await assert_build_containers_gone(docker, marker)
    await assert_gone(docker, *jobs)


async def test_filling_data_is_stopped_by_the_file_size_cap(
    sandbox: Dockguard, docker: aiodocker.Docker
) -> None:
    fill = dockerfile("dd if=/dev/zero of=/data/big bs=1M count=1024")
    async with sampled(docker_disk_used, every_s=0.1) as disk:
        (job,) = await alongside_benign(sandbox, fill)
    # Killed by SIGXFSZ (or failing with EFBIG); a writer that ignores the error has no result.
    assert job["status"] == "failed"
    assert job["error"]["code"] in ("run_nonzero_exit", "result_missing"), job["error"]
    assert max(disk) - disk[0] < 512 * MiB
    await assert_gone(docker, job)


async def test_filling_tmp_is_stopped_by_its_size(
    sandbox: Dockguard, docker: aiodocker.Docker
) -> None:
    (job,) = await alongside_benign(
        sandbox, dockerfile("dd if=/dev/zero of=/tmp/big bs=1M count=1024")
    )
    assert_failed(job, "run_nonzero_exit")
    assert job["run"]["oom_killed"] is False
    assert any("No space left on device" in line for line in job["run"]["log_tail"])
    await assert_gone(docker, job)


async def test_stdout_flood_is_capped(sandbox: Dockguard, docker: aiodocker.Docker) -> None:
    # Each second: a 500 kB line and 500 kB of short lines.
    flood = dockerfile(
        f"while :; do {REPEAT.format(n=500000, c='x')}; echo; "
        "head -c 375000 /dev/urandom | base64; sleep 1; done"
    )
    before = rss_bytes()
    (job,) = await alongside_benign(sandbox, flood)
    grown = rss_bytes() - before
    assert_failed(job, "run_timeout")
    tail = job["run"]["log_tail"]
    assert 0 < len(tail) <= 50 and all(len(line) <= 1000 for line in tail)
    assert grown < 100 * MiB, f"the worker grew by {grown / MiB:.0f} MiB"
    await assert_gone(docker, job)
