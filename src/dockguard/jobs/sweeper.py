"""The sweeper: removes dockguard's containers, networks, volumes and images that outlived any
job that could own them, so a worker killed mid-job (no `finally` ran) leaks nothing for long. It
runs at worker start and every 10 minutes (an arq cron job: one worker per slot). Beside it, the
reaper fails the jobs that passed their deadline unfinished (`worker_lost`), every 30 s.

Age is the only criterion: an object older than the longest a job can last cannot belong to a
running job, whichever deployment created it (several can share an engine, each with its own
Redis); deployments sharing an engine should share their timeout settings."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiodocker
from arq.cron import CronJob, cron

from dockguard.jobs.pipeline import fail_lost
from dockguard.sandbox import egress, names
from dockguard.sandbox.cleanup import remove_objects
from dockguard.sandbox.egress import EgressUnavailable
from dockguard.services import Services, job_timeout_s

log = logging.getLogger(__name__)

_MANAGED = {"label": [f"{names.MANAGED_LABEL}=true"]}
_MARGIN_S = 600


async def sweep(docker: aiodocker.Docker, older_than_s: float, *, job_id: str | None = None) -> int:
    """Remove managed objects (of one job, if given) created more than `older_than_s` ago;
    returns how many."""
    filters = names.label_filter(job_id) if job_id else _MANAGED
    removed = await remove_objects(docker, filters, created_before=time.time() - older_than_s)
    if removed:
        log.warning("swept leftovers of interrupted jobs", extra={"removed": removed})
    return removed


async def _cron_task(ctx: dict[str, Any]) -> int:
    services: Services = ctx["services"]
    older_than_s = job_timeout_s(services.settings) + _MARGIN_S
    async with asyncio.timeout(300):
        removed = await sweep(services.sandbox.docker, older_than_s)
        if services.sandbox.egress is not None:  # rules whose job network is gone
            try:
                await egress.prune_firewall(services.sandbox.docker)
            except EgressUnavailable as exc:
                log.warning("could not prune build firewall rules", extra={"why": str(exc)})
        return removed


async def reap(services: Services, *, now: float | None = None) -> int:
    """Fail every unfinished job whose deadline has passed (`worker_lost`): no worker is on it
    any more, or arq's own timeout would have ended it first. Its engine objects are removed and
    its Dockerfile released, as at the end of any job. Returns how many jobs were failed."""
    failed = 0
    for job_id in await services.store.overdue(time.time() if now is None else now):
        await services.sandbox.cleanup(job_id)
        if await fail_lost(services, job_id):
            failed += 1
            await services.dockerfiles.release(job_id)
        await services.store.forget_deadline(job_id)
    if failed:
        log.warning("failed jobs that no worker finished by their deadline", extra={"jobs": failed})
    return failed


async def _reap_task(ctx: dict[str, Any]) -> int:
    async with asyncio.timeout(120):
        return await reap(ctx["services"])


def reap_cron() -> CronJob:
    """Every 30 s, and at start: cheap (one sorted-set range read when nothing is late)."""
    return cron(_reap_task, name="reap", second={0, 30}, run_at_startup=True, timeout=150)


def sweep_cron() -> CronJob:
    return cron(
        _cron_task, name="sweep", minute=set(range(0, 60, 10)), run_at_startup=True, timeout=600
    )
