"""The arq worker: one task, `run_job(job_id)`, and beside it the webhook sender
(jobs/callbacks.py) and the heartbeat. Used standalone (`dockguard worker`) and inside
`dockguard serve`.

A job's delivery is a lease: arq's in-progress key, set for `LEASE_S` (not arq's default, the
longest job timeout) and renewed by the heartbeat every `BEAT_S` while the job runs. A worker
that dies stops renewing, and within `LEASE_S` another worker takes the job again (its first
step removes what the dead attempt left in the engine); the job store fences the two attempts
(store/jobs.py). Every delivery ends in a terminal status: past `MAX_TRIES` the job is failed
`worker_lost` by us, not dropped by arq. A Redis outage pauses the worker (`serve_jobs`).
A job that no attempt will take again (cancelled, reaped or expired while its worker was dead)
and a container past its deadline are left to no worker: every worker's heartbeat runs the
watchdog (jobs/sweeper.py `watch`) over the whole engine.

Stopping (`request_stop`, then `stop_worker`): at the first SIGTERM or SIGINT a worker takes no
new job; its running jobs get `DOCKGUARD_WORKER_SHUTDOWN_GRACE_S` to finish; those still running
then (or at once, on a second signal) are cancelled, which hands them back to the queue for
another worker, and their cleanup is awaited for up to `_DRAIN_TIMEOUT_S`. The grace a
deployment must give a worker (Kubernetes' terminationGracePeriodSeconds, compose's
stop_grace_period) is therefore `DOCKGUARD_WORKER_SHUTDOWN_GRACE_S + 120 s + a margin` (10 s):
190 s with the defaults. A worker killed before that loses its jobs' cleanup to the watchdog and
their redelivery to the lease (`LEASE_S`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq import Retry, Worker, func
from arq.constants import in_progress_key_prefix
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dockguard import metrics
from dockguard.jobs.callbacks import CallbackSender
from dockguard.jobs.dbrefresh import refresh_cron
from dockguard.jobs.pipeline import ARQ_MARGIN_S, give_up, job_timeout_s, run_job
from dockguard.jobs.sweeper import reap_cron, sweep_cron, watch
from dockguard.sandbox import names
from dockguard.services import Services, deserialize, serialize
from dockguard.store.callbacks import CallbackOutbox
from dockguard.store.keys import QUEUE_NAME
from dockguard.store.workers import BEAT_S, Heartbeats, deployment_id

log = logging.getLogger(__name__)

TASK = "run_job"
# A job whose worker stopped mid-way is taken again (the pipeline is safe to run twice), at most
# this many times in all; the delivery after that fails it (`worker_lost`).
MAX_TRIES = 3
# arq's own limit, only a backstop far past ours: at it arq drops a job without calling us.
_ARQ_MAX_TRIES = 1000
# How long a delivery stays a worker's without its heartbeat renewing it (arq's in-progress key).
LEASE_S = 20.0
# A worker that lost Redis polls again after this, doubling up to the maximum.
_REDIS_RETRY_FIRST_S = 1.0
_REDELIVER_S = 2.0  # a job whose start Redis failed is delivered again after this
_REDIS_RETRY_MAX_S = 5.0  # an idle worker's try every 5 s costs nothing; a longer wait idles it
_DRAIN_TIMEOUT_S = 120.0  # the longest a stopping worker waits for its jobs' cleanup
# arq's own record of a finished task; dockguard's verdict lives in the job record, not here.
KEEP_RESULT_S = 60
# How often an idle worker looks at the queue: the delay before a new job is picked up.
POLL_DELAY_S = 0.1
# How often a stopping worker looks for a second signal while its jobs finish.
_STOP_CHECK_S = 0.2


async def _task(ctx: dict[str, Any], job_id: str, trace_parent: str | None = None) -> str:
    services: Services = ctx["services"]
    tries = int(ctx.get("job_try") or 1)
    if tries > MAX_TRIES:
        why = f"the job was interrupted {tries - 1} times (its worker stopped or was lost)"
        log.warning("job given up", extra={"job_id": job_id, "tries": tries - 1})
        return await give_up(services, job_id, why)
    if tries == 1 and isinstance(enqueued := ctx.get("enqueue_time"), datetime):
        metrics.QUEUE_WAIT.observe(max((datetime.now(UTC) - enqueued).total_seconds(), 0.0))
    try:
        return await run_job(services, job_id, trace_parent)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # Before the job's own retried writes take over (reading it, claiming it): arq would
        # count the task done and drop the job; it is delivered again instead (a try).
        log.warning(
            "redis failed as the job started; it is delivered again",
            extra={"job_id": job_id, "why": type(exc).__name__, "retry_in_s": _REDELIVER_S},
        )
        raise Retry(defer=_REDELIVER_S) from exc


def _arq_timeout_s(services: Services) -> float:
    return job_timeout_s(services.settings) + ARQ_MARGIN_S


async def _start_background(ctx: dict[str, Any]) -> None:
    """Beside the jobs: the webhook sender and the worker's heartbeat (once: arq calls this
    again when `serve_jobs` restarts its poll loop after a Redis outage)."""
    services: Services = ctx["services"]
    if "deployment" not in ctx:
        ctx["deployment"] = await deployment_id(services.redis)
    # Every Docker object of this worker's jobs names the deployment (names.py): arq calls this
    # in its poll loop's task, whose job tasks inherit it; a restarted loop is a new task.
    names.deployment_var.set(ctx["deployment"])
    if ctx.get("background"):
        return
    sender = CallbackSender(services.settings, services.store, CallbackOutbox(services.redis))
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    ctx["worker_id"] = worker_id
    heartbeat = _heartbeat(services, worker_id, ctx["arq_worker"], ctx["deployment"])
    ctx["background"] = [
        asyncio.create_task(sender.run(), name="callback-sender"),
        asyncio.create_task(heartbeat, name="heartbeat"),
    ]


async def _heartbeat(services: Services, worker_id: str, worker: Worker, deployment: str) -> None:
    """At once and every BEAT_S: this worker is alive (for /readyz), its deliveries' leases are
    renewed, the queue's gauges are fresh on its own metrics endpoint, and a round of the
    watchdog starts (jobs/sweeper.py `watch`), unless the last one is still going: in a task of
    its own, so that removing a job's objects never delays a lease. A stopping worker takes no
    job: from its next beat it no longer counts as alive, though its leases are still renewed
    while its running jobs finish."""
    heartbeats = Heartbeats(services.redis)
    stop: _Stop = worker.ctx["stop"]
    watching: asyncio.Task[int] | None = None
    try:
        while True:
            try:
                if stop.requested_at is None:
                    await heartbeats.beat(worker_id)
                else:
                    await heartbeats.forget(worker_id)
                await renew_leases(services, worker)
                await metrics.refresh_queue(services.redis)
            except Exception:  # noqa: BLE001 -- Redis down: /readyz says so; beat again later
                log.warning("heartbeat failed", extra={"worker_id": worker_id, "why": "redis"})
            if watching is None or watching.done():
                watching = asyncio.create_task(watch(services, deployment), name="watchdog")
            await asyncio.sleep(BEAT_S)
    finally:
        if watching is not None:  # what it left is the next round's (any worker's)
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)


async def renew_leases(services: Services, worker: Worker) -> None:
    """Set the in-progress key of every delivery this worker is still running for `LEASE_S`
    more. Set, not only extended: after a Redis outage longer than the lease the key has lapsed,
    and a key left lapsed would let arq hand the running job out again (and count a try). (A
    delivery that ended just now may get its key back for one lease: harmless, its job has left
    the queue.)"""
    running = [job_id for job_id, task in list(worker.tasks.items()) if not task.done()]
    if not running:
        return
    async with services.redis.pipeline(transaction=False) as pipe:
        for arq_job_id in running:
            pipe.set(in_progress_key_prefix + arq_job_id, b"1", px=int(LEASE_S * 1000))
        await pipe.execute()


async def _stop_background(ctx: dict[str, Any]) -> None:
    """A webhook attempt cut short here is made again when its claim runs out (see
    store/callbacks.py); the jobs' shielded cleanup is awaited; the worker stops counting as
    alive at once."""
    tasks: list[asyncio.Task[None]] = ctx.pop("background", [])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    services: Services = ctx["services"]
    await services.drain(_DRAIN_TIMEOUT_S)
    with contextlib.suppress(Exception):
        await Heartbeats(services.redis).forget(ctx.get("worker_id", ""))


def create_worker(services: Services, *, handle_signals: bool) -> Worker:
    ctx: dict[str, Any] = {"services": services}
    function = func(_task, name=TASK, max_tries=_ARQ_MAX_TRIES, timeout=_arq_timeout_s(services))
    worker = Worker(
        functions=[function],
        cron_jobs=[*refresh_cron(services), sweep_cron(), reap_cron()],
        redis_pool=services.redis,
        queue_name=QUEUE_NAME,
        ctx=ctx,
        on_startup=_start_background,
        on_shutdown=_stop_background,
        max_jobs=services.settings.worker_concurrency,
        keep_result=KEEP_RESULT_S,
        poll_delay=POLL_DELAY_S,
        handle_signals=handle_signals,
        allow_abort_jobs=True,
        job_serializer=serialize,
        job_deserializer=deserialize,
        log_results=False,
    )
    # arq sets the in-progress key for the longest timeout of any function (over an hour): the
    # lease a dead worker's job waited out. The heartbeat renews this short one instead.
    worker.in_progress_timeout_s = LEASE_S
    ctx["arq_worker"] = worker
    ctx["stop"] = _Stop()
    _WORKERS.add(worker)
    return worker


@dataclass
class _Stop:
    """A worker's stop signals: plain attributes, so that a signal handler may set them."""

    requested_at: float | None = None  # time.monotonic() of the first
    now: bool = False  # a second came: hand the running jobs back without waiting


_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()  # this process's, for `request_stop_all`


def request_stop(worker: Worker) -> None:
    """A stop signal for `worker`. The first: it takes no new job from now on, and the jobs it
    is running get `DOCKGUARD_WORKER_SHUTDOWN_GRACE_S` from now to finish (`stop_worker` waits
    for them). A second: `stop_worker` hands them back at once. Only sets attributes (no
    logging, no event loop call): safe in a signal handler installed with `signal.signal`, as
    uvicorn's are."""
    stop: _Stop = worker.ctx["stop"]
    if stop.requested_at is None:
        stop.requested_at = time.monotonic()
        worker.allow_pick_jobs = False  # arq's poll loop reads it before each queue read
    else:
        stop.now = True


def request_stop_all() -> None:
    """`request_stop` for every worker of this process (`serve`'s own, at uvicorn's signal)."""
    for worker in list(_WORKERS):
        request_stop(worker)


async def serve_jobs(worker: Worker) -> None:
    """Run `worker` until it is stopped (a signal, `close`): a Redis outage pauses its poll loop,
    backing off, instead of ending it; its running jobs go on (their writes wait Redis out)."""
    stopped = asyncio.Event()
    worker.on_stop = lambda _signal: stopped.set()
    delay_s = _REDIS_RETRY_FIRST_S
    restarted = False
    while not stopped.is_set():
        started = time.monotonic()
        try:
            if restarted:
                await _before_polling_again(worker)
            restarted = True
            await worker.async_run()
            return
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if time.monotonic() - started > 60:
                delay_s = _REDIS_RETRY_FIRST_S  # it had been working: a new outage
            log.warning(
                "redis unavailable; the worker polls again later",
                extra={"why": type(exc).__name__, "retry_in_s": delay_s},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), delay_s)
        delay_s = min(delay_s * 2, _REDIS_RETRY_MAX_S)


async def _before_polling_again(worker: Worker) -> None:
    """After a Redis outage: the running deliveries' leases first (they may have lapsed, and the
    poll would take those jobs again), and the job slots recounted from the tasks still running
    (arq takes a slot before its Redis calls and gives it back only when Redis refuses, not when
    the connection breaks: each outage could leak one)."""
    running = sum(not task.done() for task in worker.tasks.values())
    worker.job_counter = running
    worker.sem = asyncio.BoundedSemaphore(worker.max_jobs + 1)
    for _ in range(running):  # (never waits: running <= max_jobs)
        await worker.sem.acquire()
    await renew_leases(worker.ctx["services"], worker)  # a Redis error: the next try's


async def stop_worker(worker: Worker) -> None:
    """Stop `worker`: it takes no new job; if a stop signal came (`request_stop`), its running
    jobs get until `DOCKGUARD_WORKER_SHUTDOWN_GRACE_S` after it to finish, or until a second
    signal; without one (a program stopping its worker), no time. The jobs still running then
    are cancelled (arq puts them back on the queue, for another worker) and their shielded
    cleanup is awaited (at most `_DRAIN_TIMEOUT_S`), even when Redis is gone."""
    services: Services = worker.ctx["services"]
    stop: _Stop = worker.ctx["stop"]
    worker.allow_pick_jobs = False
    if stop.requested_at is not None:
        await _let_jobs_finish(worker, stop, services.settings.worker_shutdown_grace_s)
    if running := _running(worker):
        log.info("worker stopping: jobs handed back to the queue", extra={"jobs": running})
    # arq's `close` awaits the tasks it cancelled (a job, a cron job such as the sweep at
    # start): their CancelledError is that stop, not a failure; a Redis error there must not
    # skip the cleanup either.
    with contextlib.suppress(asyncio.CancelledError, RedisConnectionError, RedisTimeoutError):
        await worker.close()
    await services.drain(_DRAIN_TIMEOUT_S)


def _running(worker: Worker) -> list[str]:
    """The arq job ids of the deliveries (jobs and cron jobs) `worker` is running."""
    return [job_id for job_id, task in list(worker.tasks.items()) if not task.done()]


async def _let_jobs_finish(worker: Worker, stop: _Stop, grace_s: float) -> None:
    """Wait until `worker` runs nothing, `grace_s` after the first stop signal at most, or a
    second signal. The poll loop goes on meanwhile (taking nothing): the jobs' leases are
    renewed, and a cancel through the API still stops one."""
    assert stop.requested_at is not None
    deadline = stop.requested_at + grace_s
    if running := _running(worker):
        log.info(
            "worker stopping: takes no new job, lets its running jobs finish",
            extra={"jobs": running, "grace_s": round(max(deadline - time.monotonic(), 0.0), 1)},
        )
    while not stop.now and (tasks := [t for t in list(worker.tasks.values()) if not t.done()]):
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            log.warning("worker stopping: the grace is over", extra={"grace_s": grace_s})
            return
        # Woken by a task's end, and every _STOP_CHECK_S for a second signal (a flag: it may
        # have been set by a plain signal handler, which cannot wake the loop).
        await asyncio.wait(
            tasks, timeout=min(left_s, _STOP_CHECK_S), return_when=asyncio.FIRST_COMPLETED
        )
    if stop.now and _running(worker):
        log.info("worker stopping: a second signal, the running jobs are handed back now")
