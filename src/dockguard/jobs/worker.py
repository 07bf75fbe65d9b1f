"""The arq worker: one task, `run_job(job_id)`. Used standalone (`dockguard worker`) and inside
`dockguard serve`."""

from __future__ import annotations

from typing import Any

from arq import Worker, func

from dockguard.jobs.dbrefresh import refresh_cron
from dockguard.jobs.pipeline import run_job
from dockguard.jobs.sweeper import reap_cron, sweep_cron
from dockguard.services import ARQ_MARGIN_S, Services, deserialize, job_timeout_s, serialize
from dockguard.store.keys import QUEUE_NAME

TASK = "run_job"


async def _task(ctx: dict[str, Any], job_id: str) -> str:
    services: Services = ctx["services"]
    return await run_job(services, job_id)


def _arq_timeout_s(services: Services) -> float:
    return job_timeout_s(services.settings) + ARQ_MARGIN_S


def create_worker(services: Services, *, handle_signals: bool) -> Worker:
    return Worker(
        functions=[func(_task, name=TASK, max_tries=3, timeout=_arq_timeout_s(services))],
        cron_jobs=[*refresh_cron(services), sweep_cron(), reap_cron()],
        redis_pool=services.redis,
        queue_name=QUEUE_NAME,
        ctx={"services": services},
        max_jobs=services.settings.worker_concurrency,
        keep_result=60,
        poll_delay=0.1,
        handle_signals=handle_signals,
        allow_abort_jobs=True,
        job_serializer=serialize,
        job_deserializer=deserialize,
        log_results=False,
    )
