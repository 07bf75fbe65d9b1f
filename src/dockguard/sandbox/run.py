"""The sandboxed run: one container per job, created with every hardening flag (from
`hardening.container_config`, like every container dockguard creates), a private /data, and a
wall-clock timeout after which it is killed.

/data is a named volume of the local driver backed by a tmpfs of `data_mb` MiB owned by the run
user: the kernel refuses writes past that size (ENOSPC), so a run cannot fill the engine's disk.
Its pages are charged to the memory cgroup of whoever writes them, the run, whose memory limit is
raised by `data_mb` so that a full /data is the run's own failed write rather than an OOM kill.
The local driver unmounts such a volume, losing its content, when the last container using it
stops: a holder container (a trusted image's `sleep`, read-only mount, nobody, tiny limits) is
started first and keeps it mounted until the job's cleanup, so the result can be read from the
stopped run container."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp

from dockguard.errors import ErrorCode, JobFailure
from dockguard.lines import LineSink
from dockguard.models import RunLimits
from dockguard.sandbox import archive, hardening, http, names

log = logging.getLogger(__name__)

_LOG_LINE_CAP = 1000
_FOLLOW_DRAIN_S = 5  # after the run ends, how long its last output may take to arrive
_FOLLOW_LINE_BYTES = 64 * 1024  # a longer line is cut (its rest dropped up to the next newline)
_FRAME = struct.Struct(">BxxxL")  # the engine's multiplexed stream: stream id, payload length
DATA_PATH = "/data"
# The holder outlives any run (timeout, kill, log and result reads) and then ends by itself if
# the worker died before its cleanup; the sweeper removes what is left.
_HOLDER_EXTRA_S = 600
_HOLDER_ATTEMPTS = 2


@dataclass
class RunOutcome:
    container_id: str
    exit_code: int
    oom_killed: bool
    timed_out: bool
    duration_s: float
    log_tail: list[str]
    data_mb: int = 0


def data_volume(job_id: str, user: str, data_mb: int) -> dict[str, Any]:
    """`POST /volumes/create` body of the job's /data: a tmpfs of `data_mb` MiB (and as many
    inodes as 4 KiB pages), owned by the run user, 0700, no devices or setuid. (Not `noexec`:
    a run may execute what it wrote there; nosuid makes a setuid bit useless.)"""
    uid, _, gid = user.partition(":")
    options = f"size={data_mb}m,nr_inodes={data_mb * 256},uid={uid},gid={gid},mode=0700"
    return {
        "Name": names.volume_name(job_id),
        "Labels": names.labels(job_id),
        "Driver": "local",
        "DriverOpts": {
            "type": "tmpfs",
            "device": "tmpfs",
            "o": f"{options},nosuid,nodev",
        },
    }


def _data_mount(volume: str, *, read_only: bool) -> dict[str, object]:
    # NoCopy: the engine would otherwise copy the image's /data into the volume and give its root
    # the image directory's owner and mode, as root, outside every limit of the run.
    return {
        "Type": "volume",
        "Source": volume,
        "Target": DATA_PATH,
        "ReadOnly": read_only,
        "VolumeOptions": {"NoCopy": True},
    }


def run_config(
    job_id: str, image_id: str, user: str, limits: RunLimits, image_volumes: Sequence[str]
) -> dict[str, Any]:
    """The run container's create body. SECURITY.md's checklist explains each field."""
    isolation = hardening.Isolation(
        memory_mb=limits.memory_mb + limits.data_mb,  # /data's pages are charged to the run
        pids=limits.pids,
        cpus=limits.cpus,
        network="none",
        file_size_mb=limits.file_size_mb,
        nofile=limits.nofile,
        tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmpfs_mb}m"},
        mounts=[_data_mount(names.volume_name(job_id), read_only=False)],
        masked=image_volumes,
        runtime=limits.runtime,
    )
    # Its worker kills it at `timeout_s`; past the label's grace, any worker's watchdog does.
    labels = names.container_labels(job_id, limits.timeout_s)
    return hardening.container_config(image_id, user=user, labels=labels, isolation=isolation)


def holder_config(job_id: str, image: str, run_timeout_s: float) -> dict[str, Any]:
    """The /data holder's create body: it only sleeps, and cannot even read /data (0700)."""
    # The limits leave room for the runtime's own init (runc's Go `init` runs inside the
    # container's cgroup before it execs `sleep`): at 16 MiB and 4 pids the engine now and then
    # answered "cannot start a stopped process". Always runc: it runs only a trusted image's
    # `sleep`, and on an engine whose default runtime is gVisor (a dedicated build engine, see
    # scripts/gvisor.sh) gVisor's own threads alone are more than its 8 pids.
    isolation = hardening.Isolation(
        memory_mb=64,
        pids=8,
        cpus=0.1,
        file_size_mb=1,
        nofile=64,
        mounts=[_data_mount(names.volume_name(job_id), read_only=True)],
        runtime="runc",
    )
    sleep_s = int(run_timeout_s) + _HOLDER_EXTRA_S
    return hardening.container_config(
        image,
        user="65534:65534",
        labels=names.container_labels(job_id, sleep_s),  # by then it has ended by itself
        isolation=isolation,
        entrypoint=["sleep"],
        cmd=[str(sleep_s)],
    )


async def check_data_dir(docker: aiodocker.Docker, reader_id: str) -> None:
    """Refuse an image whose /data is there but is not a directory: the volume would be mounted
    wherever a symlink points (over /etc, over /), or over a file. A missing /data is fine: the
    engine makes the mount point."""
    found = await archive.stat(docker, reader_id, DATA_PATH)
    if found is None:
        return
    kind = archive.describe(found)
    if kind != "a directory":
        raise JobFailure(
            ErrorCode.DATA_DIR_INVALID,
            f"the image's {DATA_PATH} is {kind}; it must be a directory or absent, since the "
            f"job's {DATA_PATH} volume is mounted there",
        )


class Runner:
    def __init__(
        self, docker: aiodocker.Docker, log_tail_lines: int, *, data_holder_image: str
    ) -> None:
        self._docker = docker
        self._log_tail_lines = log_tail_lines
        self._holder_image = data_holder_image

    async def run(
        self,
        job_id: str,
        image_id: str,
        user: str,
        limits: RunLimits,
        image_volumes: Sequence[str] = (),
        sink: LineSink | None = None,
    ) -> RunOutcome:
        """Everything created here carries the job's labels; the job's cleanup removes it. What
        the container prints goes to `sink` line by line as it runs (stdout and stderr)."""
        await self._docker.volumes.create(data_volume(job_id, user, limits.data_mb))
        holder = await self._start_holder(job_id, limits)
        container = await self._start_run(job_id, image_id, user, limits, image_volumes)
        started = time.monotonic()
        timed_out = False
        follower = (
            None
            if sink is None
            else asyncio.create_task(follow_output(self._docker, container.id, sink))
        )
        try:
            try:
                async with asyncio.timeout(limits.timeout_s):
                    await container.wait(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
            except TimeoutError:
                timed_out = True
                await self._kill(container)
            duration_s = round(time.monotonic() - started, 3)
            if follower is not None:  # its stream ends with the container; the rest is dropped
                await asyncio.wait({follower}, timeout=_FOLLOW_DRAIN_S)
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
        state = (await container.show()).get("State", {})
        if not (await holder.show()).get("State", {}).get("Running"):
            # /data was unmounted, its content lost: never blame the job for a missing result.
            raise JobFailure(
                ErrorCode.INTERNAL_ERROR, "the /data holder container stopped before the run ended"
            )
        return RunOutcome(
            container_id=container.id,
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
            timed_out=timed_out,
            duration_s=duration_s,
            log_tail=await self._log_tail(container),
            data_mb=limits.data_mb,
        )

    async def _start_holder(
        self, job_id: str, limits: RunLimits
    ) -> aiodocker.docker.DockerContainer:
        image = self._holder_image
        name = f"{names.container_name(job_id)}-data-holder"
        try:
            for attempt in range(1, _HOLDER_ATTEMPTS + 1):
                holder = await self._docker.containers.create(
                    holder_config(job_id, image, limits.timeout_s), name=name
                )
                try:
                    await holder.start()
                    break
                except aiodocker.DockerError as exc:  # a runtime hiccup: a fresh container
                    if exc.status != 500 or attempt == _HOLDER_ATTEMPTS:
                        raise
                    log.warning("data holder did not start; again", extra={"why": str(exc)[:300]})
                    await holder.delete(force=True)
        except aiodocker.DockerError as exc:
            log.error("data holder failed", extra={"image": image, "why": str(exc)[:300]})
            missing = exc.status == 404 and "image" in str(exc).lower()
            why = "is not on the engine" if missing else "cannot run `sleep`"
            raise JobFailure(
                ErrorCode.INTERNAL_ERROR,
                f"the /data holder image {image!r} (DOCKGUARD_RUN_DATA_HOLDER_IMAGE) {why}",
            ) from exc
        return holder

    async def _start_run(
        self,
        job_id: str,
        image_id: str,
        user: str,
        limits: RunLimits,
        image_volumes: Sequence[str],
    ) -> aiodocker.docker.DockerContainer:
        """Create and start the run container. The request is ours and fixed but for what the
        image brings (command, entrypoint, working directory, volumes, user), so a refusal is the
        image's: `run_start_failed`, with the engine's words in the log only."""
        config = run_config(job_id, image_id, user, limits, image_volumes)
        name = names.container_name(job_id)
        try:
            container = await self._docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):  # the job's image or container name: ours
                raise
            raise _start_failed("created", exc) from exc
        try:
            await container.start()
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):
                raise
            raise _start_failed("started", exc) from exc
        return container

    async def _kill(self, container: aiodocker.docker.DockerContainer) -> None:
        try:
            await container.kill()
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # 409: it stopped by itself meanwhile
                raise
        async with asyncio.timeout(30):
            await container.wait(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))

    async def _log_tail(self, container: aiodocker.docker.DockerContainer) -> list[str]:
        if not self._log_tail_lines:
            return []
        try:
            async with asyncio.timeout(30):
                lines = await container.log(stdout=True, stderr=True, tail=self._log_tail_lines)
        except (aiodocker.DockerError, TimeoutError) as exc:
            log.warning("could not read the run's logs", extra={"why": str(exc)[:200]})
            return []
        text = "".join(lines)
        return [line[:_LOG_LINE_CAP] for line in text.splitlines()][-self._log_tail_lines :]


async def follow_output(docker: aiodocker.Docker, container_id: str, sink: LineSink) -> None:
    """Send the container's stdout and stderr to `sink` line by line until the container ends
    (the engine's `follow` stream, demultiplexed here so that bytes stay bytes: invalid UTF-8
    is replaced by the sink, not dropped). Never raises but for cancellation."""
    lines = {1: _LineBuffer(sink), 2: _LineBuffer(sink)}
    params = {"stdout": "1", "stderr": "1", "follow": "1"}
    try:
        async with http.stream(
            docker, f"containers/{container_id}/logs", "GET", params=params
        ) as response:
            while True:
                try:
                    kind, length = _FRAME.unpack(await response.content.readexactly(_FRAME.size))
                    while length:
                        chunk = await response.content.read(min(length, 1 << 16))
                        if not chunk:
                            raise asyncio.IncompleteReadError(b"", length)
                        length -= len(chunk)
                        lines.get(kind, lines[1]).feed(chunk)
                except asyncio.IncompleteReadError:
                    break
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
        log.warning("could not follow the run's output", extra={"why": str(exc)[:200]})
    for buffer in lines.values():
        buffer.close()


class _LineBuffer:
    """Bytes of one stream cut into lines for a sink, each at most _FOLLOW_LINE_BYTES."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self._buffer = bytearray()
        self._skipping = False  # inside a line that was already cut

    def feed(self, data: bytes) -> None:
        *complete, rest = data.split(b"\n")
        for piece in complete:
            if not self._skipping:
                self._emit(self._buffer + piece)
            self._buffer.clear()
            self._skipping = False
        if not self._skipping:
            self._buffer += rest
            if len(self._buffer) > _FOLLOW_LINE_BYTES:
                self._emit(self._buffer)
                self._buffer.clear()
                self._skipping = True

    def close(self) -> None:
        if self._buffer and not self._skipping:
            self._emit(self._buffer)
        self._buffer.clear()

    def _emit(self, line: bytes | bytearray) -> None:
        self._sink.write(bytes(line[:_FOLLOW_LINE_BYTES]))


def _start_failed(step: str, exc: aiodocker.DockerError) -> JobFailure:
    log.warning("run container refused", extra={"step": step, "why": str(exc)[:500]})
    return JobFailure(
        ErrorCode.RUN_START_FAILED,
        f"the run's container could not be {step} with the image's configuration: e.g. a CMD or "
        "ENTRYPOINT whose executable does not exist or cannot be executed, or a WORKDIR that is "
        "not a directory",
    )


def outcome_failure(outcome: RunOutcome, timeout_s: float, memory_mb: int) -> JobFailure | None:
    """The failure a finished run amounts to, checked in order of what explains the others."""
    if outcome.timed_out:
        return JobFailure(
            ErrorCode.RUN_TIMEOUT, f"the run did not finish within {timeout_s:g} s and was killed"
        )
    if outcome.oom_killed:
        return JobFailure(
            ErrorCode.RUN_OOM,
            f"the run exceeded its {memory_mb} MiB memory limit"
            + (f" (plus {outcome.data_mb} MiB for what /data holds)" if outcome.data_mb else "")
            + " and was killed",
        )
    if outcome.exit_code != 0:
        return JobFailure(
            ErrorCode.RUN_NONZERO_EXIT, f"the run exited with status {outcome.exit_code}"
        )
    return None
