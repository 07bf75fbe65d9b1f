"""The sandbox as the pipeline sees it (`ports.Sandbox`): every step of a job in the Docker
Engine, and cleanup. The modules beside this one do the work, one concern each (bases, build,
users, run, result, egress, cleanup); every container any of them creates is configured by
`hardening.container_config`.

Only `sandbox/` and `scanning/` talk to the engine: the scanner exports the image to scan
through `archive.save_image`, and its container backend creates Trivy's containers with
`hardening.container_config` and feeds them through `archive`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiodocker
import aiohttp

from dockguard.base_images import BaseImage
from dockguard.errors import ErrorCode
from dockguard.lines import LineSink
from dockguard.models import BuildLimits, RunLimits
from dockguard.sandbox import archive, cgroups, egress, names, watchdog
from dockguard.sandbox.bases import check_bases
from dockguard.sandbox.build import Builder, BuildFailure, BuildOutcome
from dockguard.sandbox.cleanup import (
    ignore_missing,
    remove_container,
    remove_objects,
    sweep,
    wait_for_build_end,
)
from dockguard.sandbox.egress import Egress, EgressUnavailable
from dockguard.sandbox.hardening import image_volumes
from dockguard.sandbox.result import fetch_result
from dockguard.sandbox.run import Runner, RunOutcome, check_data_dir
from dockguard.sandbox.users import resolve_run_user
from dockguard.sandbox.watchdog import Watched

log = logging.getLogger(__name__)

_CLEANUP_TIMEOUT_S = 60
_BUILD_END_TIMEOUT_S = 20  # the engine kills a cancelled build's step; it ends in about a second
_BUILD_QUIET_S = 1.0  # an interrupted build's first step container could still be on its way
_CONNECT_TIMEOUT_S = 10


# Where the engine is when neither DOCKGUARD_DOCKER_URL nor DOCKER_HOST says.
DEFAULT_ENGINE_URL = "unix:///var/run/docker.sock"


def connect(url: str | None, timeout_s: float) -> aiodocker.Docker:
    """A client whose every call times out after `timeout_s` unless the call says otherwise.
    With no URL, DOCKER_HOST's or the local socket; when there is neither (an API given no
    socket, an engine not up yet), still a client of the default socket: its calls fail as an
    engine that does not answer, instead of the process failing to start."""
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=_CONNECT_TIMEOUT_S)
    try:
        return aiodocker.Docker(url=url, timeout=timeout)
    except (ValueError, AssertionError):  # aiodocker: no DOCKER_HOST, no context, no socket
        if url is not None:
            raise
        return aiodocker.Docker(url=DEFAULT_ENGINE_URL, timeout=timeout)


@dataclass
class Prepared:
    """The image that will run, as whom, and its VOLUME paths (masked in the run)."""

    image_id: str
    user: str
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineRuntimes:
    names: tuple[str, ...]
    default: str


class EngineSandbox:
    def __init__(
        self,
        docker: aiodocker.Docker,
        *,
        log_tail_lines: int,
        data_holder_image: str,
        pull_allow: tuple[str, ...] = (),
        egress: Egress | None = None,
    ) -> None:
        self.docker = docker
        self._builder = Builder(docker, log_tail_lines)
        self._runner = Runner(docker, log_tail_lines, data_holder_image=data_holder_image)
        self._pull_allow = pull_allow
        self._egress = egress  # needed for builds with network `egress`
        self._interrupted: set[str] = set()  # jobs whose build stopped before its end

    async def ping(self) -> None:
        await self.docker.version()

    async def runtimes(self) -> EngineRuntimes:
        """The OCI runtimes the engine knows, and its default: the one its builds get (the
        classic builder's RUN containers take the engine's default; POST /build takes none)."""
        info = await self.docker.system.info()
        known = info.get("Runtimes") or {}
        return EngineRuntimes(
            names=tuple(sorted(known)), default=str(info.get("DefaultRuntime") or "runc")
        )

    async def check_bases(self, bases: tuple[BaseImage, ...], *, pull_timeout_s: float) -> None:
        """Every image the build starts from is on the engine (or allowed and pulled by us),
        and none has ONBUILD triggers: the engine itself must never pull on the build's behalf."""
        await check_bases(
            self.docker, bases, pull_allow=self._pull_allow, pull_timeout_s=pull_timeout_s
        )

    async def build(
        self, job_id: str, dockerfile: str, limits: BuildLimits, lines: LineSink | None = None
    ) -> BuildOutcome:
        """Build the job's image; each line the build prints also goes to `lines`. A build stopped
        before its end (its timeout, the job's, a cancel) is noted: the engine may still be
        ending it, and cleanup waits for that."""
        try:
            return await self._build(job_id, dockerfile, limits, lines)
        except asyncio.CancelledError:
            self._interrupted.add(job_id)
            raise
        except BuildFailure as exc:
            if exc.code is ErrorCode.BUILD_TIMEOUT:
                self._interrupted.add(job_id)
            raise

    async def _build(
        self, job_id: str, dockerfile: str, limits: BuildLimits, lines: LineSink | None
    ) -> BuildOutcome:
        tag = names.image_tag(job_id, "build")
        if limits.network != "egress":
            return await self._builder.build(job_id, dockerfile, tag, limits, sink=lines)
        if self._egress is None:
            raise RuntimeError("build network egress without an Egress")
        try:
            async with self._egress.network(job_id):
                return await self._builder.build(job_id, dockerfile, tag, limits, sink=lines)
        except EgressUnavailable as exc:
            log.error("build egress network unavailable", extra={"why": str(exc)[:500]})
            raise BuildFailure(
                ErrorCode.INTERNAL_ERROR,
                "this worker cannot set up the build's egress network (see its logs; "
                "scripts/proxy-image.sh builds the proxy image)",
                [],
            ) from exc

    async def prepare(self, job_id: str, image_id: str) -> Prepared:
        """Inspect the built image before anything of it runs: resolve its run user and check its
        /data, both read from a container of it that is created and never started."""
        image = await self.docker.images.inspect(image_id)
        async with archive.image_reader(self.docker, job_id, image) as reader:
            await check_data_dir(self.docker, reader)
            user = await resolve_run_user(self.docker, reader, image)
        return Prepared(image_id=image_id, user=user, volumes=image_volumes(image))

    async def run(
        self, job_id: str, prepared: Prepared, limits: RunLimits, lines: LineSink | None = None
    ) -> RunOutcome:
        """Run the image; each line the container prints also goes to `lines` as it runs."""
        return await self._runner.run(
            job_id, prepared.image_id, prepared.user, limits, prepared.volumes, sink=lines
        )

    async def fetch_result(self, container_id: str, max_bytes: int) -> bytes:
        """From the stopped run container: its /data is still mounted, by the holder (run.py)."""
        return await fetch_result(self.docker, container_id, max_bytes)

    async def cleanup(self, job_id: str) -> None:
        """Remove every container, network, volume and image labelled with the job id (one
        routine, shared with `sweep`: cleanup.py). Idempotent; never raises (a failure is
        logged and left for the next cleanup of the same job, or the sweeper)."""
        try:
            async with asyncio.timeout(_CLEANUP_TIMEOUT_S):
                # First the engine's own end of the build, which may still commit a step image
                # (a dead worker's build too, before a retry's first cleanup).
                quiet_s = _BUILD_QUIET_S if job_id in self._interrupted else 0.0
                if not await wait_for_build_end(
                    self.docker, job_id, timeout_s=_BUILD_END_TIMEOUT_S, quiet_s=quiet_s
                ):
                    log.warning("the engine did not end the job's build; removing it anyway")
                await remove_objects(self.docker, names.label_filter(job_id))
                # The tag only ever names a labelled image: gone already, unless it was in use.
                await ignore_missing(self.docker.images.delete(names.image_tag(job_id, "build")))
                # A build its worker died in left its process-limit cgroup (cgroups.py).
                await asyncio.to_thread(cgroups.remove_job, job_id)
                if self._egress is not None:
                    await egress.remove_firewall(job_id)
            self._interrupted.discard(job_id)
        except (aiodocker.DockerError, TimeoutError, EgressUnavailable) as exc:
            log.warning("cleanup incomplete", extra={"why": str(exc)[:300]})

    async def watched(self) -> list[Watched]:
        """Every managed container, with its job, deadline and deployment (one listing)."""
        return await watchdog.list_watched(self.docker)

    async def kill_container(self, container_id: str) -> bool:
        """Kill and remove a container `watched` listed; False when it was not removed (gone
        already, or refused: logged)."""
        return await remove_container(self.docker, container_id)

    async def sweep(self, older_than_s: float) -> int:
        """Remove every dockguard object created more than `older_than_s` ago, and the build
        firewall rules whose job network is gone; returns how many objects."""
        removed = await sweep(self.docker, older_than_s)
        removed += await asyncio.to_thread(cgroups.sweep, older_than_s)
        if self._egress is not None:
            try:
                await egress.prune_firewall(self.docker)
            except EgressUnavailable as exc:
                log.warning("could not prune build firewall rules", extra={"why": str(exc)})
        return removed
