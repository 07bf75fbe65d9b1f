"""The attack classes a red team found, end to end through the API against the real engine:
parser/engine disagreement, engine-side fetches, cleanup that trusted the build's output, and
jobs that could stay unfinished forever. Each test fails on the code before the fix.

Listeners are on 127.0.0.1 only: they are what a hostile Dockerfile tries to make the engine
contact, and they must never see a connection."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import pytest_asyncio

from dockguard.jobs.pipeline import queued_deadline_s, running_deadline_s
from dockguard.jobs.sweeper import reap
from dockguard.store.keys import dockerfile_key
from tests.e2e.conftest import Dockguard, Instances, leftovers

FAST: dict[str, Any] = {"run_timeout_s": 20, "build_timeout_s": 20, "build_network": "none"}


class Listener:
    """A TCP listener on loopback that counts the connections it receives."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def _until_running(
    dg: Dockguard, job_id: str, alive: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait for a worker to start the job (and, if given, for `alive` to keep running)."""
    deadline = time.monotonic() + 60
    while (await dg.client.get(f"/v1/jobs/{job_id}")).json()["status"] != "running":
        assert time.monotonic() < deadline, "no worker started the job"
        assert alive is None or alive.poll() is None, "the worker exited"
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture(scope="module")
async def dg(instances: Instances) -> Dockguard:
    return await instances.get(**FAST)


# 1. The submission policy reads the Dockerfile the engine builds ------------------------------


SMUGGLED = [
    # A C0 separator is space to Python and a character to the engine: the comment "inside" the
    # RUN ends it for the engine, and the remote ADD runs.
    b"FROM busybox:latest\nRUN echo \\\n\x1c# note\nADD http://127.0.0.1:%d/x /x\nUSER 1000\n",
    b"FROM busybox:latest\nRUN echo \\\n\x1f\nONBUILD RUN echo injected\nUSER 1000\n",
    b"FROM busybox:latest\nRUN true \\\x0b\nADD http://127.0.0.1:%d/x /x\nUSER 1000\n",
    b"FROM busybox:latest\nRUN echo \\\n\xc2\xa0\nADD http://127.0.0.1:%d/x /x\nUSER 1000\n",
    b"FROM busybox:latest\r\rADD http://127.0.0.1:%d/x /x\nUSER 1000\n",
]


@pytest.mark.parametrize("template", SMUGGLED)
async def test_smuggled_instructions_are_refused_at_submission(
    dg: Dockguard, template: bytes
) -> None:
    async with Listener() as listener:
        body = template.replace(b"%d", str(listener.port).encode())
        response = await dg.submit(body)
        assert response.status_code == 400, response.text
        assert response.json()["code"] in {"dockerfile_encoding", "dockerfile_invalid"}
        assert "line " in response.json()["detail"]
    assert listener.connections == 0


def _image_context(dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def _build_image(docker: aiodocker.Docker, dockerfile: str, tag: str | None) -> str:
    await docker.images.build(
        fileobj=io.BytesIO(_image_context(dockerfile)), encoding="identity", tag=tag, rm=True
    )
    if tag:
        return str((await docker.images.inspect(tag))["Id"])
    images = await docker.images.list(all=True)
    marker = dockerfile.splitlines()[-1]
    for image in sorted(images, key=lambda i: i["Created"], reverse=True):
        config = (await docker.images.inspect(image["Id"])).get("ContainerConfig") or {}
        if marker.partition(" ")[2] in " ".join(config.get("Cmd") or []):
            return str(image["Id"])
    raise AssertionError("built image not found")


async def test_a_base_image_with_onbuild_triggers_is_refused(
    dg: Dockguard, docker: aiodocker.Docker
) -> None:
    tag = f"dockguard-test/onbuild:{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    await _build_image(docker, f"FROM busybox:latest\nONBUILD RUN echo {marker}\n", tag)
    try:
        job = await dg.run(f'FROM {tag}\nUSER 1000\nCMD ["true"]\n')
        assert job["status"] == "rejected", job
        assert job["error"]["code"] == "base_image_forbidden"
        assert "ONBUILD" in job["error"]["message"]
        assert marker not in json.dumps(job)  # the trigger never ran
        assert await leftovers(docker, job["id"]) == []
    finally:
        await docker.images.delete(tag, force=True)


# 2. The engine never connects out on the Dockerfile's behalf ---------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "FROM 127.0.0.1:{port}/probe:1\nUSER 1000\n",
        "ARG BASE=127.0.0.1:{port}/probe\nFROM $BASE\nUSER 1000\n",
        "ARG REGISTRY=127.0.0.1:{port}\nFROM ${{REGISTRY}}/probe:1\nUSER 1000\n",
        "FROM busybox:latest AS a\nFROM 127.0.0.1:{port}/other AS b\nFROM a\nUSER 1000\n",
    ],
)
async def test_a_missing_base_image_is_never_pulled(
    dg: Dockguard, docker: aiodocker.Docker, template: str
) -> None:
    async with Listener() as listener:
        job = await dg.run(template.format(port=listener.port))
    assert listener.connections == 0
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "build_failed"
    assert "is not on this engine" in job["error"]["message"]
    assert await leftovers(docker, job["id"]) == []


async def test_an_unresolvable_base_image_is_refused_at_submission(dg: Dockguard) -> None:
    response = await dg.submit("ARG B\nFROM ${B:-127.0.0.1:1/x}\nUSER 1000\n")
    assert response.status_code == 400
    assert response.json()["code"] == "dockerfile_forbidden"


async def test_another_jobs_image_cannot_be_a_base(dg: Dockguard, docker: aiodocker.Docker) -> None:
    response = await dg.submit('FROM busybox:latest\nUSER 1000\nCMD ["sleep", "10"]\n')
    first = response.json()["id"]
    await _until_running(dg, first)
    second = await dg.run(f"FROM dockguard/job-{first}:build\nUSER 1000\n")
    assert second["status"] == "rejected", second
    assert second["error"]["code"] == "base_image_forbidden"
    assert await leftovers(docker, second["id"]) == []
    await dg.wait(first)
    assert await leftovers(docker, first) == []


# 4. Cleanup takes ids from the engine, and removes every stage --------------------------------


async def test_fake_layer_ids_in_build_output_are_ignored(
    dg: Dockguard, docker: aiodocker.Docker
) -> None:
    marker = uuid.uuid4().hex
    victim = await _build_image(docker, f"FROM busybox:latest\nRUN echo {marker}\n", None)
    try:
        short = victim.removeprefix("sha256:")[:12]
        lines = " ".join(f"' ---> {short}'" for _ in range(30))
        started = time.monotonic()
        job = await dg.run(f"FROM busybox:latest\nUSER 1000\nRUN printf '%s\\n' {lines}; false\n")
        assert job["status"] == "failed" and job["error"]["code"] == "build_failed", job
        assert time.monotonic() - started < FAST["build_timeout_s"]
        await docker.images.inspect(victim)  # still there
        assert await leftovers(docker, job["id"]) == []
    finally:
        await docker.images.delete(victim, force=True)


@pytest.mark.parametrize("last_step", ['CMD ["true"]', "RUN echo {marker}-failing && false"])
async def test_images_of_every_stage_are_removed(
    dg: Dockguard, docker: aiodocker.Docker, last_step: str
) -> None:
    """Images of an earlier stage are no parent of the final image and carried no label."""
    marker = uuid.uuid4().hex
    job = await dg.run(
        "FROM busybox:latest AS first\n"
        f"RUN echo {marker} > /a\n"
        "FROM busybox:latest\n"
        "COPY --from=first /a /a\n"
        "USER 1000\n" + last_step.format(marker=marker) + "\n"
    )
    assert job["status"] == "failed", job  # no perf.json, or the failing RUN
    remaining = []
    for image in await docker.images.list(all=True):
        config = (await docker.images.inspect(image["Id"])).get("ContainerConfig") or {}
        if marker in " ".join(config.get("Cmd") or []):
            remaining.append(image["Id"])
    assert remaining == [], "images of the job's stages were left in the engine"
    assert await leftovers(docker, job["id"]) == []


@pytest.mark.parametrize(
    "label",
    ["dockguard.job-id=x", '"dockguard.managed"=true', "DockGuard.anything=1", "$KEY=1"],
)
async def test_labels_in_dockguards_namespace_are_refused(dg: Dockguard, label: str) -> None:
    response = await dg.submit(f"FROM busybox:latest\nENV KEY=dockguard.job-id\nLABEL {label}\n")
    assert response.status_code == 400
    assert response.json()["code"] == "dockerfile_forbidden"
    assert "LABEL" in response.json()["detail"]


# 5. No job stays unfinished past its deadline --------------------------------------------------


async def test_a_lone_surrogate_in_the_result_is_result_invalid(
    dg: Dockguard, docker: aiodocker.Docker
) -> None:
    script = 'printf \'{"perf": 1, "x": "\\\\ud800"}\' > /data/perf.json'
    job = await dg.run(f"FROM busybox:latest\nUSER 1000\nCMD {json.dumps(['sh', '-c', script])}\n")
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "result_invalid"
    assert await dg.services.redis.exists(dockerfile_key(job["id"])) == 0
    assert await leftovers(docker, job["id"]) == []


@pytest_asyncio.fixture
async def api_only(instances: Instances) -> Dockguard:
    """An instance with no worker of its own: jobs wait for one."""
    return await instances.get(run_worker=False, **FAST)


async def test_a_queued_job_no_worker_takes_fails_at_its_deadline(api_only: Dockguard) -> None:
    response = await api_only.submit('FROM busybox:latest\nUSER 1000\nCMD ["true"]\n')
    job_id = response.json()["id"]
    assert await reap(api_only.services) == 0  # not late yet
    late = time.time() + queued_deadline_s(api_only.settings) + 1
    assert await reap(api_only.services, now=late) == 1
    job = (await api_only.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert await api_only.services.redis.exists(dockerfile_key(job_id)) == 0


@pytest_asyncio.fixture
async def worker_process(api_only: Dockguard) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A standalone `dockguard worker` on the API-only instance's Redis, to be killed."""
    settings: dict[str, Any] = api_only.settings.model_dump(mode="json")
    env = {**os.environ}
    for name, value in settings.items():
        if value is None or name == "encryption_key":
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        env[f"DOCKGUARD_{name.upper()}"] = shown
    binary = Path(sys.executable).with_name("dockguard")
    process = subprocess.Popen(  # noqa: ASYNC220 (started once; nothing waits on it here)
        [str(binary), "worker"], env=env, stdout=subprocess.DEVNULL
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


async def test_a_job_whose_worker_was_killed_fails_at_its_deadline(
    api_only: Dockguard, worker_process: subprocess.Popen[bytes], docker: aiodocker.Docker
) -> None:
    response = await api_only.submit('FROM busybox:latest\nUSER 1000\nCMD ["sleep", "60"]\n')
    job_id = response.json()["id"]
    await _until_running(api_only, job_id, alive=worker_process)
    worker_process.send_signal(signal.SIGKILL)  # no `finally` runs
    worker_process.wait(timeout=10)
    assert await leftovers(docker, job_id) != []  # what the dead worker left running
    late = time.time() + running_deadline_s(api_only.settings) + 1
    assert await reap(api_only.services, now=late) == 1
    job = (await api_only.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert await api_only.services.redis.exists(dockerfile_key(job_id)) == 0
    assert await leftovers(docker, job_id) == []


# Found by a red-team pass over the new parser: each was accepted, and the engine did otherwise.


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # Go's json.Decoder reads the first value and ignores the rest: a remote ADD.
        (b'FROM busybox:latest\nADD ["http\\u003a//127.0.0.1:9/x", "/x"] junk\n', "ADD from a URL"),
        # Only the Dockerfile's own escape character escapes in the engine's parseWords.
        (b"FROM busybox:latest\nLABEL x=a` dockguard.job-id=victim\n", "LABEL keys"),
        (b"# escape=`\nFROM busybox:latest\nLABEL x=a\\ dockguard.managed=false\n", "LABEL keys"),
        # The egress proxy's NO_PROXY build argument would override these defaults.
        (b"ARG NO_PROXY=:1\nFROM busybox${NO_PROXY}\n", "predefined build arguments"),
        (b"ARG no_proxy=d\nFROM busybox AS build\nFROM buil${no_proxy}\n", "predefined"),
        # A Unicode digit is no stage index (and must not crash the check).
        (b"FROM busybox\nFROM busybox\nCOPY --from=\xc2\xb2 /a /b\n", "COPY --from"),
    ],
)
async def test_red_team_parser_findings_are_refused(
    dg: Dockguard, body: bytes, fragment: str
) -> None:
    response = await dg.submit(body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "dockerfile_forbidden"
    assert fragment in response.json()["detail"]


async def test_a_job_past_its_timeout_ends_job_timeout(
    instances: Instances, docker: aiodocker.Docker
) -> None:
    """The pipeline's own budget (DOCKGUARD_JOB_TIMEOUT_S) ends a job whose steps are each
    within their limits, writes the terminal status and removes everything."""
    short = await instances.get(job_timeout_s=6, **FAST)
    job = await short.run('FROM busybox:latest\nUSER 1000\nCMD ["sleep", "60"]\n', timeout_s=60)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "job_timeout"
    assert await short.services.redis.exists(dockerfile_key(job["id"])) == 0
    assert await leftovers(docker, job["id"]) == []


async def test_the_images_group_file_grants_no_supplementary_groups(
    dg: Dockguard, docker: aiodocker.Docker
) -> None:
    """runc would add the groups an image's /etc/group lists the user in (root's too) if the run
    user were a uid alone; dockguard always passes uid:gid."""
    script = 'printf \'{"perf": 1, "groups": "%s"}\' "$(id -G)" > /data/perf.json'
    job = await dg.run(
        "FROM busybox:latest\n"
        'RUN echo "u:x:1000:1000::/:/bin/sh" >> /etc/passwd && echo "root:x:0:u" > /etc/group '
        '&& echo "wheel:x:10:u" >> /etc/group\n'
        f"USER u\nCMD {json.dumps(['sh', '-c', script])}\n"
    )
    assert job["status"] == "succeeded", job
    assert job["result"]["data"]["groups"] == "1000"
    assert await leftovers(docker, job["id"]) == []


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on loopback (Debian's docker-registry, started here): `127.0.0.1:PORT`."""
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is not installed (scripts/test.sh installs it)"
    work = tmp_path_factory.mktemp("registry")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {work / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen([binary, "serve", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                break
        except OSError:
            assert process.poll() is None, "docker-registry exited at start"
            assert time.monotonic() < deadline, "docker-registry did not start"
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


async def test_an_allowed_base_image_is_pulled_by_dockguard_and_others_are_not(
    instances: Instances, docker: aiodocker.Docker, registry: str
) -> None:
    allowed, other = f"{registry}/dgtest/busybox:1", f"{registry}/elsewhere/busybox:1"
    for reference in (allowed, other):  # both exist in the registry, neither on the engine
        await docker.images.tag("busybox:latest", repo=reference.rpartition(":")[0], tag="1")
        await docker.images.push(reference)
        await docker.images.delete(reference)
    pulling = await instances.get(build_pull_allow=f"{registry}/dgtest/*", **FAST)
    try:
        job = await pulling.run(f'FROM {allowed}\nUSER 1000\nCMD ["true"]\n')
        assert job["error"]["code"] == "result_missing", job  # it built and ran: the pull worked
        await docker.images.inspect(allowed)
        refused = await pulling.run(f'FROM {other}\nUSER 1000\nCMD ["true"]\n')
        assert refused["error"]["code"] == "build_failed", refused
        assert "is not on this engine" in refused["error"]["message"]
        with pytest.raises(aiodocker.DockerError):
            await docker.images.inspect(other)  # never pulled
        assert await leftovers(docker, job["id"]) == []
        assert await leftovers(docker, refused["id"]) == []
    finally:
        for reference in (allowed, other):
            with contextlib.suppress(aiodocker.DockerError):
                await docker.images.delete(reference)
