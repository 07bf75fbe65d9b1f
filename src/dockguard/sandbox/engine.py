"""The only place that talks to the Docker Engine: connection, the job's steps, and cleanup."""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
from collections.abc import Awaitable
from dataclasses import dataclass, replace

import aiodocker
import aiohttp
from aiodocker.volumes import DockerVolume

from dockguard.sandbox import names
from dockguard.sandbox.build import Builder, BuildFailure, BuildLimits, BuildOutcome
from dockguard.sandbox.result import fetch_result
from dockguard.sandbox.run import RunLimits, Runner, RunOutcome
from dockguard.sandbox.users import resolve_run_user

log = logging.getLogger(__name__)

_CLEANUP_TIMEOUT_S = 60


def connect(url: str | None, timeout_s: float) -> aiodocker.Docker:
    """A client whose every call times out after `timeout_s` unless the call says otherwise."""
    return aiodocker.Docker(url=url, timeout=aiohttp.ClientTimeout(total=timeout_s, connect=10))


@dataclass
class Prepared:
    """The image that will run: the user's image plus a /data owned by the run user."""

    image_id: str
    user: str


class Sandbox:
    def __init__(self, docker: aiodocker.Docker, log_tail_lines: int) -> None:
        self.docker = docker
        self._builder = Builder(docker, log_tail_lines)
        self._runner = Runner(docker, log_tail_lines)

    async def ping(self) -> None:
        await self.docker.version()

    async def build(self, job_id: str, dockerfile: str, limits: BuildLimits) -> BuildOutcome:
        return await self._builder.build(
            job_id, dockerfile, names.image_tag(job_id, "build"), limits
        )

    async def prepare(self, job_id: str, image_id: str, limits: BuildLimits) -> Prepared:
        """Give the image a /data directory owned by its run user.

        A fresh named volume copies the ownership of the image's directory at its mount point on
        first mount, and that is the only way we found for a non-root user to own the volume's
        root (see notes/environment.md): one more `COPY --chown` build step, with no network.
        """
        image = await self.docker.images.inspect(image_id)
        user = await resolve_run_user(self.docker, job_id, image)
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            data_dir = tarfile.TarInfo("data")
            data_dir.type, data_dir.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(data_dir)
        dockerfile = f"FROM {image_id}\nCOPY --chown={user} data /data\n"
        finalize = replace(
            limits, timeout_s=min(limits.timeout_s, 120), network="none", nocache=True
        )
        try:
            outcome = await self._builder.build(
                job_id,
                dockerfile,
                names.image_tag(job_id, "final"),
                finalize,
                context=context.getvalue(),
            )
        except BuildFailure as exc:
            raise BuildFailure(
                exc.code, f"preparing the image's /data failed: {exc.message}", exc.log_tail
            ) from exc
        return Prepared(image_id=outcome.image_id, user=user)

    async def run(self, job_id: str, prepared: Prepared, limits: RunLimits) -> RunOutcome:
        return await self._runner.run(job_id, prepared.image_id, prepared.user, limits)

    async def fetch_result(self, container_id: str, max_bytes: int) -> bytes:
        return await fetch_result(self.docker, container_id, max_bytes)

    async def cleanup(self, job_id: str) -> None:
        """Remove every container, volume and image labelled with the job id. Idempotent; never
        raises (a failure is logged and left for the next cleanup of the same job)."""
        try:
            async with asyncio.timeout(_CLEANUP_TIMEOUT_S):
                await self._remove_containers(job_id)
                await self._remove_volumes(job_id)
                await self._remove_images(job_id)
        except (aiodocker.DockerError, TimeoutError) as exc:
            log.warning("cleanup incomplete", extra={"why": str(exc)[:300]})

    async def _remove_containers(self, job_id: str) -> None:
        filters = names.label_filter(job_id)
        for container in await self.docker.containers.list(all=True, filters=filters):
            await _ignore_missing(container.delete(force=True, v=True))

    async def _remove_volumes(self, job_id: str) -> None:
        found = await self.docker.volumes.list(filters=names.label_filter(job_id))
        for volume in found.get("Volumes") or []:
            await _ignore_missing(DockerVolume(self.docker, volume["Name"]).delete())

    async def _remove_images(self, job_id: str) -> None:
        # Tags first: removing a tag never touches an image another tag still names.
        for stage in ("final", "build"):
            await _ignore_missing(self.docker.images.delete(names.image_tag(job_id, stage)))
        leftover = await self.docker.images.list(filters=names.label_filter(job_id), all=True)
        for image in leftover:
            if not image.get("RepoTags") or image["RepoTags"] == ["<none>:<none>"]:
                await _ignore_missing(self.docker.images.delete(image["Id"]))


async def _ignore_missing(call: Awaitable[object]) -> None:
    try:
        await call
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
