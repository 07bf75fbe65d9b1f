"""What a worker killed mid-job (no `finally` ran) leaves behind, found and removed three ways:

- the watchdog (`watch`), on every worker's heartbeat (every few seconds): containers alive past
  their deadline label, and the objects of jobs that ended (a cancel, the reaper) or whose record
  is gone while no worker holds them; the rule is sandbox/watchdog.py's;
- the reaper (`reap`), every 30 s: fails the jobs that passed their deadline unfinished
  (`worker_lost`) and removes their objects;
- the sweeper (`sweep`), at worker start and every 10 minutes (an arq cron job: one worker per
  slot), the last net: removes dockguard's containers, networks, volumes and images that
  outlived any job that could own them. Age is its only criterion: an object older than the
  longest a job can last cannot belong to a running job, whichever deployment created it
  (several can share an engine, each with its own Redis); deployments sharing an engine should
  share their timeout settings."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.cron import CronJob, cron
from redis.exceptions import RedisError

from dockguard import metrics
from dockguard.jobs.pipeline import fail_lost, job_timeout_s
from dockguard.sandbox.watchdog import Action, JobState, Watched, decide
from dockguard.services import Services
from dockguard.store.keys import lease_key

log = logging.getLogger(__name__)

# Past the longest a job may take: its cleanup has had time to run.
_MARGIN_S = 600
_SWEEP_TIMEOUT_S = 300
_REAP_TIMEOUT_S = 120
_WATCH_TIMEOUT_S = 300  # a round removing several jobs' objects (each cleanup: up to 60 s)
_WATCH_REDIS_TIMEOUT_S = 5  # past it, the round judges by deadlines only


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


async def watch(services: Services, deployment: str | None, *, now: float | None = None) -> int:
    """One round of the watchdog over the engine's managed containers of this `deployment`
    (names.DEPLOYMENT_LABEL) or of none: one listing, Redis asked about the jobs of this
    deployment only, each removal logged and counted. Returns how many containers it removed,
    itself or with their job's objects. Never raises."""
    try:
        async with asyncio.timeout(_WATCH_TIMEOUT_S):
            return await _watch(services, deployment, time.time() if now is None else now)
    except Exception as exc:  # noqa: BLE001 -- the engine is unreachable: the next beat retries
        log.warning("watchdog round failed", extra={"why": f"{type(exc).__name__}: {exc}"[:300]})
        return 0


async def _watch(services: Services, deployment: str | None, now: float) -> int:
    containers = await services.sandbox.watched()
    ours = {c.job_id for c in containers if c.job_id and deployment and c.deployment == deployment}
    try:
        async with asyncio.timeout(_WATCH_REDIS_TIMEOUT_S):
            live, states = await _jobs(services, sorted(ours))
    except (RedisError, OSError, TimeoutError, ValueError) as exc:  # deadlines need no Redis
        log.warning("watchdog: redis unavailable", extra={"why": type(exc).__name__})
        live, states = set(ours), {}
    removed = 0
    doomed: set[str] = set()
    for container in containers:
        job_id = container.job_id
        if container.deployment not in (None, deployment):
            state = JobState.FOREIGN
        else:
            state = states.get(job_id, JobState.UNKNOWN) if job_id else JobState.UNKNOWN
        decision = decide(container, state, job_id in live, now)
        if decision.action is Action.KEEP:
            continue
        if decision.action is Action.KILL and not await services.sandbox.kill_container(
            container.id
        ):
            continue  # gone meanwhile (its worker's cleanup came first), or refused: logged
        _removed(container, decision.kind, decision.why)
        removed += 1
        if decision.action is Action.REMOVE_JOB and job_id:
            doomed.add(job_id)
    for job_id in sorted(doomed):
        await services.sandbox.cleanup(job_id)
    return removed


def _removed(container: Watched, kind: str, why: str) -> None:
    log.warning(
        "watchdog removed a container",
        extra={"job_id": container.job_id, "container": container.name, "why": why},
    )
    metrics.ORPHANS_REMOVED.labels(kind).inc()


async def _jobs(services: Services, job_ids: list[str]) -> tuple[set[str], dict[str, JobState]]:
    """Which of the jobs a live attempt holds, and what the record of each other says. Live: a
    lease runs, arq's delivery (its in-progress key) or the attempt's own (store/jobs.py
    `claim`), both renewed while their worker lives and lapsing within seconds of its death."""
    if not job_ids:
        return set(), {}
    async with services.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(in_progress_key_prefix + job_id, lease_key(job_id))
        held = await pipe.execute()
    live = {job_id for job_id, exists in zip(job_ids, held, strict=True) if exists}
    states = {}
    for job_id in job_ids:
        if job_id not in live:
            job = await services.store.get(job_id)
            if job is None:
                states[job_id] = JobState.GONE
            else:
                states[job_id] = JobState.ENDED if job.status.terminal else JobState.ACTIVE
    return live, states


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
