"""Prometheus metrics (prometheus-client, its default registry: the process's own CPU, memory and
file descriptors come with it). Every label takes a bounded set of values: route templates,
known methods, HTTP statuses, job statuses and error codes, stage and reason names; never a job
id, a path or anything a client chose.

Who counts what: the API process counts HTTP requests and the jobs it ends (cancel); a worker
counts the jobs it ends, its stages, the sandbox's kills, scan cache hits, and what the sweeper
and the watchdog removed. `dockguard serve` runs both in one process and serves them all on
`/metrics`; a standalone `dockguard worker` serves its own on `DOCKGUARD_WORKER_METRICS_PORT`.
The queue's depth and oldest age, and the workers alive, are read from Redis, so any replica
reports them.

`serve --workers N` (N > 1) runs N API processes behind one port: each counts in files of its
own in a private directory (prometheus-client's multiprocess mode, `shared_between_processes`),
and `/metrics`, whichever process answers, adds them all up (`exposition`). Gauges say how: the
ones read from Redis at a scrape take the most recent value, the in-progress one sums the live
processes. (That mode has no process or Python collectors.) With one process none of it runs:
the metrics are the plain in-memory ones."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from redis.asyncio import Redis

from dockguard import tracing
from dockguard.errors import JobFailure
from dockguard.inherited_dir import inherited_dir
from dockguard.store.keys import QUEUE_NAME

log = logging.getLogger(__name__)

Stage = Literal["scan", "build", "image_scan", "prepare", "run", "collect", "cleanup"]
STAGES: tuple[Stage, ...] = ("scan", "build", "image_scan", "prepare", "run", "collect", "cleanup")
_METHODS = frozenset({"GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# prometheus-client reads it when it is first imported: a process started with it set keeps its
# metrics in files there (set by `shared_between_processes` in the parent of the API processes).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_MULTIPROC_DIR = os.environ.get(MULTIPROC_ENV) or None

HTTP_REQUESTS = Counter(
    "dockguard_http_requests_total", "HTTP requests answered.", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "dockguard_http_request_duration_seconds",
    "Time to answer an HTTP request (a long-poll's wait and a log stream included).",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
JOBS = Counter(
    "dockguard_jobs_total", "Jobs ended, by final status and error code.", ["status", "code"]
)
STAGE_DURATION = Histogram(
    "dockguard_stage_duration_seconds",
    "Time a job's stage took (a stage that failed included).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "dockguard_queue_wait_seconds",
    "Time from a job's submission to a worker taking it (first deliveries only).",
    buckets=_LATENCY_BUCKETS,
)
JOBS_IN_PROGRESS = Gauge(
    "dockguard_jobs_in_progress",
    "Jobs this process's worker is running.",
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    "dockguard_queue_depth",
    "Jobs in the queue: waiting, or taken and not finished (Redis).",
    multiprocess_mode="mostrecent",
)
QUEUE_OLDEST_AGE = Gauge(
    "dockguard_queue_oldest_age_seconds",
    "How long the oldest job in the queue has been there.",
    multiprocess_mode="mostrecent",
)
SANDBOX_KILLS = Counter(
    "dockguard_sandbox_kills_total", "Run containers the sandbox ended, by why.", ["reason"]
)
SCAN_CACHE_HITS = Counter(
    "dockguard_scan_cache_hits_total", "Scans answered from the scan cache.", ["target"]
)
SWEEPER_REMOVED = Counter(
    "dockguard_sweeper_removed_total", "What the sweeper and reaper removed or ended.", ["kind"]
)
# Why the watchdog removed a container (sandbox/watchdog.py `decide`).
ORPHAN_KINDS = ("past_deadline", "job_ended", "job_gone")
ORPHANS_REMOVED = Counter(
    "dockguard_orphans_removed_total",
    "Containers the watchdog removed: alive past their deadline, or of a job that ended (or "
    "whose record is gone) with no worker holding it.",
    ["kind"],
)
WORKERS_ALIVE = Gauge(
    "dockguard_workers_alive",
    "Workers whose heartbeat was seen in the last 30 s (Redis).",
    multiprocess_mode="mostrecent",
)
SCANNER_DB_AGE = Gauge(
    "dockguard_scanner_db_age_seconds",
    "Age of the vulnerability DB (-1: there is none).",
    multiprocess_mode="mostrecent",
)

for _stage in STAGES:  # every series exists from the start, at zero
    STAGE_DURATION.labels(_stage)
for _reason in ("timeout", "oom"):
    SANDBOX_KILLS.labels(_reason)
for _target in ("dockerfile", "image"):
    SCAN_CACHE_HITS.labels(_target)
for _kind in ORPHAN_KINDS:
    ORPHANS_REMOVED.labels(_kind)
for _kind in ("objects", "lost_jobs"):
    SWEEPER_REMOVED.labels(_kind)
# The endings a dashboard plots (rate() needs a series before its first event to see that event);
# the others appear when they first happen.
for _status, _code in (
    ("succeeded", "none"),
    ("rejected", "dockerfile_rejected"),
    ("rejected", "image_rejected"),
    ("cancelled", "job_cancelled"),
    ("failed", "job_timeout"),
    ("failed", "worker_lost"),
    ("failed", "engine_unavailable"),
    ("failed", "internal_error"),
):
    JOBS.labels(_status, _code)


def exposition() -> bytes:
    """The text of `GET /metrics`: this process's metrics, or with several API processes all of
    theirs (every process's files, counters and histograms summed)."""
    if _MULTIPROC_DIR is None:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=_MULTIPROC_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


@contextmanager
def shared_between_processes() -> Iterator[str]:
    """For the parent of several API processes: a private directory for their metric files,
    named in the environment they inherit (set before they start, so before they import
    prometheus-client), removed with everything in it at the end."""
    with inherited_dir(MULTIPROC_ENV, "dockguard-metrics-") as path:
        yield path


def in_several_processes() -> bool:
    """Is this one of several API processes sharing their metrics (`serve --workers N`)?"""
    return _MULTIPROC_DIR is not None


def process_exiting() -> None:
    """An API process sharing its metrics ends: its live gauges stop counting (its counters
    stay in the sums, as a counter must)."""
    if _MULTIPROC_DIR is not None:
        multiprocess.mark_process_dead(os.getpid(), _MULTIPROC_DIR)  # type: ignore[no-untyped-call]


def http_request(route: str, method: str, status: int, duration_s: float) -> None:
    method = method if method in _METHODS else "OTHER"
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_DURATION.labels(route).observe(duration_s)


def job_ended(status: str, code: str | None) -> None:
    JOBS.labels(status, code or "none").inc()


@contextmanager
def stage(name: Stage) -> Iterator[None]:
    """Observe the block's duration as the stage's, however it ends, and log one line for it:
    `stage`, `outcome` (`ok`, `failed` with the job's error `code`, `cancelled`, `error`) and
    `duration_s` (the job and request ids come from the context)."""
    started = time.perf_counter()
    outcome, code = "error", None
    with tracing.span(name, attributes={"dockguard.stage": name}) as span:
        try:
            yield
            outcome = "ok"
        except JobFailure as failure:
            outcome, code = "failed", failure.code.value
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            duration_s = time.perf_counter() - started
            STAGE_DURATION.labels(name).observe(duration_s)
            extra = {"stage": name, "outcome": outcome, "duration_s": round(duration_s, 3)}
            log.info("stage", extra={**extra, "code": code})
            if span is not None:
                span.set_attribute("dockguard.outcome", outcome)
                if code is not None:
                    span.set_attribute("dockguard.code", code)


async def refresh_queue(redis: Redis) -> None:
    """Queue depth and oldest age from arq's queue (a sorted set scored by enqueue time, ms)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(QUEUE_NAME)
        pipe.zrange(QUEUE_NAME, 0, 0, withscores=True)
        depth, oldest = await pipe.execute()
    QUEUE_DEPTH.set(depth)
    QUEUE_OLDEST_AGE.set(max(time.time() - oldest[0][1] / 1000, 0.0) if oldest else 0.0)
