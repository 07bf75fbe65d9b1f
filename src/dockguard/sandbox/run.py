"""The sandboxed run: one container per job, created with every hardening flag, a private /data
volume, and a wall-clock timeout after which it is killed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp

from dockguard.errors import ErrorCode, JobFailure
from dockguard.sandbox import names
from dockguard.settings import Settings

log = logging.getLogger(__name__)

_LOG_LINE_CAP = 1000


@dataclass(frozen=True)
class RunLimits:
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int
    tmpfs_mb: int
    file_size_mb: int = 256
    nofile: int = 1024
    runtime: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> RunLimits:
        return cls(
            timeout_s=s.run_timeout_s,
            memory_mb=s.run_memory_mb,
            cpus=s.run_cpus,
            pids=s.run_pids,
            tmpfs_mb=s.run_tmpfs_mb,
            file_size_mb=s.run_file_size_mb,
            nofile=s.run_nofile,
            runtime=s.runtime,
        )


@dataclass
class RunOutcome:
    container_id: str
    exit_code: int
    oom_killed: bool
    timed_out: bool
    duration_s: float
    log_tail: list[str]


def host_config(limits: RunLimits, volume: str) -> dict[str, Any]:
    """The sandbox, as Engine API HostConfig fields. SECURITY.md's checklist explains each line."""
    memory = limits.memory_mb * 1024 * 1024
    file_size = limits.file_size_mb * 1024 * 1024
    return {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "Privileged": False,
        "Memory": memory,
        "MemorySwap": memory,  # equal to Memory: no swap
        "NanoCpus": int(limits.cpus * 1e9),
        "PidsLimit": limits.pids,
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmpfs_mb}m"},
        "Mounts": [{"Type": "volume", "Source": volume, "Target": "/data", "ReadOnly": False}],
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        "RestartPolicy": {"Name": "no"},
        "Ulimits": [
            {"Name": "core", "Soft": 0, "Hard": 0},
            {"Name": "nofile", "Soft": limits.nofile, "Hard": limits.nofile},
            {"Name": "fsize", "Soft": file_size, "Hard": file_size},  # no file past the cap
        ],
        "IpcMode": "private",
        "PidMode": "",  # a private PID namespace
        "Devices": [],
        "AutoRemove": False,  # the stopped container is where perf.json is read from
        **({"Runtime": limits.runtime} if limits.runtime else {}),
    }


class Runner:
    def __init__(self, docker: aiodocker.Docker, log_tail_lines: int) -> None:
        self._docker = docker
        self._log_tail_lines = log_tail_lines

    async def run(self, job_id: str, image_id: str, user: str, limits: RunLimits) -> RunOutcome:
        volume = names.volume_name(job_id)
        await self._docker.volumes.create({"Name": volume, "Labels": names.labels(job_id)})
        container = await self._docker.containers.create(
            {
                "Image": image_id,
                "User": user,
                "Labels": names.labels(job_id),
                "NetworkDisabled": True,
                "AttachStdin": False,
                "OpenStdin": False,
                "Tty": False,
                "HostConfig": host_config(limits, volume),
            },
            name=names.container_name(job_id),
        )
        started = time.monotonic()
        await container.start()
        timed_out = False
        try:
            async with asyncio.timeout(limits.timeout_s):
                await container.wait(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        except TimeoutError:
            timed_out = True
            await self._kill(container)
        duration_s = round(time.monotonic() - started, 3)
        state = (await container.show()).get("State", {})
        return RunOutcome(
            container_id=container.id,
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
            timed_out=timed_out,
            duration_s=duration_s,
            log_tail=await self._log_tail(container),
        )

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


def outcome_failure(outcome: RunOutcome, timeout_s: float, memory_mb: int) -> JobFailure | None:
    """The failure a finished run amounts to, checked in order of what explains the others."""
    if outcome.timed_out:
        return JobFailure(
            ErrorCode.RUN_TIMEOUT, f"the run did not finish within {timeout_s:g} s and was killed"
        )
    if outcome.oom_killed:
        return JobFailure(
            ErrorCode.RUN_OOM, f"the run exceeded its {memory_mb} MiB memory limit and was killed"
        )
    if outcome.exit_code != 0:
        return JobFailure(
            ErrorCode.RUN_NONZERO_EXIT, f"the run exited with status {outcome.exit_code}"
        )
    return None
