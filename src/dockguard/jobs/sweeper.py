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

from arq.cron import CronJob, cron

from dockguard import metrics
from dockguard.jobs.pipeline import fail_lost, job_timeout_s
from dockguard.services import Services

log = logging.getLogger(__name__)

# Past the longest a job may take: its cleanup has had time to run.
_MARGIN_S = 600
_SWEEP_TIMEOUT_S = 300
_REAP_TIMEOUT_S = 120


async def _sweep_task(ctx: dict[str, Any]) -> int:
    services: Services = ctx["services"]
    async with asyncio.timeout(_SWEEP_TIMEOUT_S):
        removed = await services.sandbox.sweep(job_timeout_s(services.settings) + _MARGIN_S)
    metrics.SWEEPER_REMOVED.labels("objects").inc(removed)
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
    metrics.SWEEPER_REMOVED.labels("lost_jobs").inc(failed)
    if failed:
        log.warning("failed jobs that no worker finished by their deadline", extra={"jobs": failed})
    return failed


async def _reap_task(ctx: dict[str, Any]) -> int:
    async with asyncio.timeout(_REAP_TIMEOUT_S):
        return await reap(ctx["services"])


def reap_cron() -> CronJob:
    """Every 30 s, and at start: cheap (one sorted-set range read when nothing is late)."""
    return cron(
        _reap_task, name="reap", second={0, 30}, run_at_startup=True, timeout=_REAP_TIMEOUT_S + 30
    )


def sweep_cron() -> CronJob:
    return cron(
        _sweep_task,
        name="sweep",
        minute=set(range(0, 60, 10)),
        run_at_startup=True,
        timeout=_SWEEP_TIMEOUT_S + 30,
    )
