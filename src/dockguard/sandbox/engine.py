"""The only place that talks to the Docker Engine: connection, the job's steps, and cleanup."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiodocker
import aiohttp

from dockguard.errors import ErrorCode
from dockguard.sandbox import archive, egress, names
from dockguard.sandbox.build import Builder, BuildFailure, BuildLimits, BuildOutcome
from dockguard.sandbox.cleanup import ignore_missing, remove_objects
from dockguard.sandbox.egress import Egress, EgressUnavailable
from dockguard.sandbox.hardening import image_volumes
from dockguard.sandbox.result import fetch_result
from dockguard.sandbox.run import RunLimits, Runner, RunOutcome, check_data_dir
from dockguard.sandbox.users import resolve_run_user

log = logging.getLogger(__name__)

_CLEANUP_TIMEOUT_S = 60


def connect(url: str | None, timeout_s: float) -> aiodocker.Docker:
    """A client whose every call times out after `timeout_s` unless the call says otherwise."""
    return aiodocker.Docker(url=url, timeout=aiohttp.ClientTimeout(total=timeout_s, connect=10))


@dataclass
class Prepared:
    """The image that will run, as whom, and its VOLUME paths (masked in the run)."""

    image_id: str
    user: str
    volumes: tuple[str, ...] = ()


class Sandbox:
    def __init__(
        self, docker: aiodocker.Docker, log_tail_lines: int, egress: Egress | None = None
    ) -> None:
        self.docker = docker
        self._builder = Builder(docker, log_tail_lines)
        self._runner = Runner(docker, log_tail_lines)
        self.egress = egress  # needed for builds with network `egress`

    async def ping(self) -> None:
        await self.docker.version()

    async def build(self, job_id: str, dockerfile: str, limits: BuildLimits) -> BuildOutcome:
        tag = names.image_tag(job_id, "build")
        if limits.network != "egress":
            return await self._builder.build(job_id, dockerfile, tag, limits)
        if self.egress is None:
            raise RuntimeError("build network egress without an Egress")
        try:
            async with self.egress.network(job_id):
                return await self._builder.build(job_id, dockerfile, tag, limits)
        except EgressUnavailable as exc:
            log.error("build egress network unavailable", extra={"why": str(exc)[:500]})
            raise BuildFailure(
                ErrorCode.INTERNAL_ERROR,
                "this worker cannot set up the build's egress network (see its logs; "
                "scripts/proxy-image.sh builds the proxy image)",
                [],
            ) from exc

    async def prepare(self, job_id: str, image_id: str, limits: BuildLimits) -> Prepared:
        """Inspect the built image before anything of it runs: resolve its run user and check its
        /data, both read from a container of it that is created and never started. (`limits`:
        the build's; nothing is built here any more. /data's owner now comes from its tmpfs
        options, see run.py.)"""
        image = await self.docker.images.inspect(image_id)
        async with archive.image_reader(self.docker, job_id, image) as reader:
            await check_data_dir(self.docker, reader)
            user = await resolve_run_user(self.docker, reader, image)
        return Prepared(image_id=image_id, user=user, volumes=image_volumes(image))

    async def run(self, job_id: str, prepared: Prepared, limits: RunLimits) -> RunOutcome:
        return await self._runner.run(
            job_id, prepared.image_id, prepared.user, limits, prepared.volumes
        )

    async def fetch_result(self, container_id: str, max_bytes: int) -> bytes:
        """From the stopped run container: its /data is still mounted, by the holder (run.py)."""
        return await fetch_result(self.docker, container_id, max_bytes)

    async def cleanup(self, job_id: str) -> None:
        """Remove every container, network, volume and image labelled with the job id (one
        routine, shared with the sweeper: cleanup.py). Idempotent; never raises (a failure is
        logged and left for the next cleanup of the same job, or the sweeper)."""
        try:
            async with asyncio.timeout(_CLEANUP_TIMEOUT_S):
                await remove_objects(self.docker, names.label_filter(job_id))
                # The tag only ever names a labelled image: gone already, unless it was in use.
                await ignore_missing(self.docker.images.delete(names.image_tag(job_id, "build")))
                if self.egress is not None:
                    await egress.remove_firewall(job_id)
        except (aiodocker.DockerError, TimeoutError, EgressUnavailable) as exc:
            log.warning("cleanup incomplete", extra={"why": str(exc)[:300]})
