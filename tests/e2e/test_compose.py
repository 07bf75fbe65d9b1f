"""compose.yaml brought up for real, offline: the images the stack needs are made from Debian
packages by deploy/offline/prepare-images.sh (no registry is reachable here), the stack is built
and started with `up --build`, a Dockerfile submitted through the compose API succeeds with its
`perf`, the workers scale to 2, and `down` leaves nothing the stack created: no container,
network or volume of the project, and nothing labelled with a job's id.

Runs with Compose v2 (`docker compose`) when the machine has it, else Debian's docker-compose
1.29; the file is checked against the Compose Specification's schema too. The stack gets a
project name and an API port of its own, and its own image tag, which is removed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import jsonschema
import pytest
import pytest_asyncio
import yaml

from tests.e2e.conftest import UNFIXED, VULNERABLE, _free_socket, leftovers
from tests.trivydb import write_db

ROOT = Path(__file__).resolve().parents[2]
PYTHON_IMAGE = "dockguard/python:3.11-bookworm"
REDIS_IMAGE = "dockguard/redis:7-bookworm"
DOCKERFILE = """\
FROM busybox:latest
USER 1000
CMD ["sh", "-c", "echo '{\\"perf\\": 0.87}' > /data/perf.json"]
"""


def compose_command() -> list[str]:
    """Compose v2 if the docker client has it, else v1; neither fails the test loudly."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    if v1 is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed (scripts/setup.sh)")
    return [v1]


async def run(*command: str, env: dict[str, str], timeout_s: float = 120) -> str:
    """Run `command` in the repository's root; its output, or the test fails with it."""
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{' '.join(command)} took more than {timeout_s} s")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{text[-3000:]}"
    return text


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.project = f"dgcompose{uuid.uuid4().hex[:8]}"
        self.image = f"dockguard:{self.project}"
        with _free_socket() as sock:
            self.port = sock.getsockname()[1]
        self.compose = [*compose_command(), "-p", self.project, "-f", str(ROOT / "compose.yaml")]
        self.env = {
            **os.environ,
            "DOCKGUARD_IMAGE": self.image,
            "DOCKGUARD_PYTHON_IMAGE": PYTHON_IMAGE,
            "DOCKGUARD_REDIS_IMAGE": REDIS_IMAGE,
            "DOCKGUARD_API_PORT": str(self.port),
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        }
        self.tmp = tmp
        self.url = f"http://127.0.0.1:{self.port}"

    async def __call__(self, *args: str, timeout_s: float = 120) -> str:
        return await run(*self.compose, *args, env=self.env, timeout_s=timeout_s)


async def project_objects(docker: aiodocker.Docker, project: str) -> list[str]:
    """Every container, network and volume carrying the compose project's label."""
    label = {"label": [f"com.docker.compose.project={project}"]}
    found = [
        f"container {c['Names']}" for c in await docker.containers.list(all=True, filters=label)
    ]
    networks = await docker.networks.list(filters=label)
    found += [f"network {n['Name']}" for n in networks]
    volumes = await docker.volumes.list(filters=label)
    found += [f"volume {v['Name']}" for v in volumes.get("Volumes") or []]
    return found


@pytest_asyncio.fixture
async def stack(tmp_path: Path, docker: aiodocker.Docker) -> AsyncIterator[Stack]:
    stack = Stack(tmp_path)
    # Anonymous volumes (the workers' /tmp) carry no project label: compared before and after.
    volumes_before = {v["Name"] for v in (await docker.volumes.list()).get("Volumes") or []}
    try:
        yield stack
    finally:
        # Whatever happened: the stack down with its volumes, and its image tag removed.
        await stack("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout_s=180)
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(stack.image, force=True)
        # and the build stage the image was made in (deploy/Dockerfile labels it), now untagged
        build_stages = {"dangling": ["true"], "label": ["dockguard.stage=build"]}
        for image in await docker.images.list(filters=build_stages):
            with contextlib.suppress(aiodocker.DockerError):
                await docker.images.delete(image["Id"], force=True)
    assert await project_objects(docker, stack.project) == []
    assert await docker.images.list(filters=build_stages) == []
    volumes_after = {v["Name"] for v in (await docker.volumes.list()).get("Volumes") or []}
    assert volumes_after - volumes_before == set(), "the stack left volumes behind"


async def wait_ready(
    client: httpx.AsyncClient, stack: Stack, workers: int, timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            answer = await client.get("/readyz")
            last = answer.json()
            if answer.status_code == 200 and last["checks"]["workers"] == workers:
                # The API has no engine socket: the engine check is left out, not failed.
                assert last["checks"]["docker"] == "not_checked", last
                assert last["excluded"] == ["docker"], last
                return
        except httpx.TransportError as exc:
            last = repr(exc)
        await asyncio.sleep(1)
    logs = await stack("logs", "--tail", "30", "api", "worker")
    pytest.fail(f"the compose stack was not ready with {workers} workers: {last}\n{logs[-4000:]}")


async def healthy(docker: aiodocker.Docker, project: str, timeout_s: float = 90) -> dict[str, str]:
    """The health of every container of the project, once none is `starting` any more."""
    label = {"label": [f"com.docker.compose.project={project}"]}
    deadline = time.monotonic() + timeout_s
    while True:
        states: dict[str, str] = {}
        for summary in await docker.containers.list(filters=label):
            info = await docker.containers.get(summary["Id"])
            health = (info["State"].get("Health") or {}).get("Status", "none")
            states[info["Name"].lstrip("/")] = health
        if all(state != "starting" for state in states.values()) or time.monotonic() > deadline:
            return states
        await asyncio.sleep(2)


async def submit_and_wait(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.post(
        "/v1/jobs", content=DOCKERFILE, headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30})).json()
        if job["status"] in {"succeeded", "failed", "rejected", "cancelled"}:
            return job
    pytest.fail(f"job {job_id} did not end within 120 s")


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as Debian's docker-compose ships it (a copy of the
    specification's own file; Compose v2 validates against the same specification), read with
    the interpreter docker-compose runs on."""
    v1 = shutil.which("docker-compose")
    if v1 is None:
        pytest.fail("docker-compose is not installed (scripts/test.sh installs it)")
    python = Path(v1).read_text().splitlines()[0].removeprefix("#!").split()
    where = "import os, compose.config; print(os.path.dirname(compose.config.__file__))"
    probe = subprocess.run(
        [*python, "-c", where], capture_output=True, text=True, timeout=30, check=False
    )
    path = Path(probe.stdout.strip()) / "compose_spec.json"
    if probe.returncode != 0 or not path.is_file():
        pytest.fail(f"no compose_spec.json from docker-compose: {probe.stderr[-500:]}")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_compose_file_follows_the_specification() -> None:
    schema = compose_schema()
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # and the schema does check services: a misspelt key is refused
    compose["services"]["api"]["helthcheck"] = {}
    assert list(validator.iter_errors(compose)) != []


async def test_compose_stack_offline(stack: Stack, docker: aiodocker.Docker) -> None:
    started = time.monotonic()
    await run("bash", "deploy/offline/prepare-images.sh", "build", env=stack.env, timeout_s=600)
    prepared_s = time.monotonic() - started
    for image in (PYTHON_IMAGE, REDIS_IMAGE):
        await docker.images.inspect(image)

    # Trivy's DB, copied into the stack's volume before any worker starts, as an air-gapped site
    # does (README, "Deploying"): `run` builds the image the first time.
    db = stack.tmp / "trivy"
    write_db(db, [VULNERABLE, UNFIXED], updated_at=datetime.now(UTC) - timedelta(hours=1))
    os.chmod(stack.tmp, 0o755)
    for path in (db, db / "db", *(db / "db").iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    await stack(
        "run", "--rm", "--no-deps", "-v", f"{db}:/in:ro", "--entrypoint", "cp", "worker",
        "-r", "/in/db", "/var/cache/dockguard/trivy/",
        timeout_s=900,
    )  # fmt: skip
    await stack("up", "-d", "--build", timeout_s=900)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        await wait_ready(client, stack, workers=1)
        scanner = (await client.get("/v1/scanner")).json()
        assert scanner["db_usable"] is True, scanner

        job = await submit_and_wait(client)
        assert job["status"] == "succeeded", json.dumps(job)[:2000]
        assert job["result"] == {"perf": 0.87, "data": {"perf": 0.87}}
        assert job["scan"]["image"]["db"] is not None  # the image was scanned with the DB

        # Every container's healthcheck (the image's, the redis one) says healthy.
        states = await healthy(docker, stack.project)
        assert set(states.values()) == {"healthy"}, states
        # Only the workers hold the engine's socket: not the API, which parses clients' requests.
        for summary in await docker.containers.list(
            filters={"label": [f"com.docker.compose.project={stack.project}"]}
        ):
            info = await docker.containers.get(summary["Id"])
            service = info["Config"]["Labels"]["com.docker.compose.service"]
            sockets = [m for m in info["Mounts"] if m["Destination"].endswith("docker.sock")]
            assert bool(sockets) == (service == "worker"), (service, info["Mounts"])

        await stack("up", "-d", "--no-build", "--scale", "worker=2")
        await wait_ready(client, stack, workers=2)
        jobs = await asyncio.gather(submit_and_wait(client), submit_and_wait(client))
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    await stack("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout_s=180)
    assert await project_objects(docker, stack.project) == []
    for done in (job, *jobs):
        assert await leftovers(docker, done["id"]) == [], done["id"]
    whole_s = time.monotonic() - started
    print(f"compose: images prepared in {prepared_s:.0f} s, whole test {whole_s:.0f} s")
