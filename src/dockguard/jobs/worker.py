"""The arq worker: one task, `run_job(job_id)`, and beside it the webhook sender
(jobs/callbacks.py). Used standalone (`dockguard worker`) and inside `dockguard serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

from arq import Worker, func

from dockguard import metrics
from dockguard.jobs.callbacks import CallbackSender
from dockguard.jobs.dbrefresh import refresh_cron
from dockguard.jobs.pipeline import ARQ_MARGIN_S, job_timeout_s, run_job
from dockguard.jobs.sweeper import reap_cron, sweep_cron
from dockguard.services import Services, deserialize, serialize
from dockguard.store.callbacks import CallbackOutbox
from dockguard.store.keys import QUEUE_NAME
from dockguard.store.workers import BEAT_S, Heartbeats

log = logging.getLogger(__name__)

TASK = "run_job"
# A job whose worker stopped mid-way is taken again (the pipeline is safe to run twice), at most
# this many times in all; then arq gives up and the reaper fails it (`worker_lost`).
MAX_TRIES = 3
# arq's own record of a finished task; dockguard's verdict lives in the job record, not here.
KEEP_RESULT_S = 60
# How often an idle worker looks at the queue: the delay before a new job is picked up.
POLL_DELAY_S = 0.1


async def _task(ctx: dict[str, Any], job_id: str, trace_parent: str | None = None) -> str:
    services: Services = ctx["services"]
    return await run_job(services, job_id, trace_parent)


def _arq_timeout_s(services: Services) -> float:
    return job_timeout_s(services.settings) + ARQ_MARGIN_S


async def _start_background(ctx: dict[str, Any]) -> None:
    """Beside the jobs: the webhook sender and the worker's heartbeat."""
    services: Services = ctx["services"]
    sender = CallbackSender(services.settings, services.store, CallbackOutbox(services.redis))
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    ctx["worker_id"] = worker_id
    ctx["background"] = [
        asyncio.create_task(sender.run(), name="callback-sender"),
        asyncio.create_task(_heartbeat(services, worker_id), name="heartbeat"),
    ]


async def _heartbeat(services: Services, worker_id: str) -> None:
    """Every BEAT_S: this worker is alive (for /readyz), and the queue's gauges are fresh on its
    own metrics endpoint."""
    heartbeats = Heartbeats(services.redis)
    while True:
        try:
            await heartbeats.beat(worker_id)
            await metrics.refresh_queue(services.redis)
        except Exception:  # noqa: BLE001 -- Redis down: /readyz says so; beat again later
            log.warning("heartbeat failed", extra={"worker_id": worker_id, "why": "redis"})
        await asyncio.sleep(BEAT_S)


async def _stop_background(ctx: dict[str, Any]) -> None:
    """A webhook attempt cut short here is made again when its claim runs out (see
    store/callbacks.py); the worker stops counting as alive at once."""
    tasks: list[asyncio.Task[None]] = ctx.pop("background", [])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    services: Services = ctx["services"]
    with contextlib.suppress(Exception):
        await Heartbeats(services.redis).forget(ctx.get("worker_id", ""))


def create_worker(services: Services, *, handle_signals: bool) -> Worker:
    return Worker(
        functions=[func(_task, name=TASK, max_tries=MAX_TRIES, timeout=_arq_timeout_s(services))],
        cron_jobs=[*refresh_cron(services), sweep_cron(), reap_cron()],
        redis_pool=services.redis,
        queue_name=QUEUE_NAME,
        ctx={"services": services},
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
