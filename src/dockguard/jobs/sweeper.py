"""The sweeper: removes dockguard's containers, volumes and images that outlived any job that
could own them, so a worker killed mid-job (no `finally` ran) leaks nothing for long. It runs
at worker start and every 10 minutes (an arq cron job: one worker per slot).

Age is the only criterion: an object older than the longest a job can last cannot belong to a
running job, whichever deployment created it (several can share an engine, each with its own
Redis); deployments sharing an engine should share their timeout settings."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import aiodocker
from aiodocker.volumes import DockerVolume
from arq.cron import CronJob, cron

from dockguard.sandbox import names
from dockguard.services import Services, job_timeout_s

log = logging.getLogger(__name__)

_MANAGED = {"label": [f"{names.MANAGED_LABEL}=true"]}
_MARGIN_S = 600


async def sweep(docker: aiodocker.Docker, older_than_s: float, *, job_id: str | None = None) -> int:
    """Remove managed objects (of one job, if given) created more than `older_than_s` ago;
    returns how many."""
    cutoff = time.time() - older_than_s
    removed = 0
    filters = names.label_filter(job_id) if job_id else _MANAGED
    for container in await docker.containers.list(all=True, filters=filters):
        if container._container.get("Created", cutoff) < cutoff:
            removed += await _remove(container.delete(force=True, v=True))
    volumes = (await docker.volumes.list(filters=filters)).get("Volumes") or []
    for volume in volumes:
        if _timestamp(volume.get("CreatedAt")) < cutoff:
            removed += await _remove(DockerVolume(docker, volume["Name"]).delete())
    for image in await docker.images.list(all=True, filters=filters):
        if image.get("Created", cutoff) < cutoff:
            removed += await _remove(docker.images.delete(image["Id"], force=True))
    if removed:
        log.warning("swept leftovers of interrupted jobs", extra={"removed": removed})
    return removed


def _timestamp(value: str | None) -> float:
    try:
        return datetime.fromisoformat(value or "").timestamp()
    except ValueError:
        return time.time()  # unknown age: never swept


async def _remove(call: Any) -> int:
    try:
        await call
    except aiodocker.DockerError as exc:
        if exc.status not in (404, 409):  # gone already, or in use (swept next time)
            log.warning("sweep could not remove an object", extra={"why": str(exc)[:200]})
        return 0
    return 1


async def _cron_task(ctx: dict[str, Any]) -> int:
    services: Services = ctx["services"]
    older_than_s = job_timeout_s(services.settings) + _MARGIN_S
    async with asyncio.timeout(300):
        return await sweep(services.sandbox.docker, older_than_s)


def sweep_cron() -> CronJob:
    return cron(
        _cron_task, name="sweep", minute=set(range(0, 60, 10)), run_at_startup=True, timeout=600
    )
