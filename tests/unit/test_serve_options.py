"""`serve`'s options (--workers and what it needs), uvicorn's grace, and a worker's stop: the
first signal stops it taking jobs and gives the running ones the grace, a second hands them back
at once, no signal gives them no time (against tests/unit/fakes.py's services; the real thing,
processes and signals: tests/e2e/test_shutdown.py)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

import pytest
import uvicorn
from arq import Worker
from pydantic import ValidationError
from sse_starlette.sse import AppStatus

from dockguard.api.server import UVICORN_OPTIONS, Server, uvicorn_options
from dockguard.api.sockets import PortUnavailable, listening_socket
from dockguard.cli import serve_problem
from dockguard.jobs.worker import create_worker, request_stop, request_stop_all, stop_worker
from dockguard.settings import Settings
from tests.unit.fakes import fakes

REDIS = "redis://127.0.0.1:6379/0"


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("redis_url", "processes", "run_worker", "problem"),
    [
        (None, 1, True, None),  # a private redis-server, API and worker in one process
        (REDIS, 1, True, None),
        (REDIS, 1, False, None),
        (REDIS, 4, False, None),
        (None, 1, False, "--no-worker needs a shared Redis: set DOCKGUARD_REDIS_URL"),
        (None, 2, False, "--workers 2 needs a shared Redis: set DOCKGUARD_REDIS_URL"),
        (REDIS, 2, True, "--workers 2 runs the API only: add --no-worker"),
        (None, 3, True, "--workers 3 runs the API only: add --no-worker"),
    ],
)
def test_serve_refuses_what_cannot_work(
    redis_url: str | None, processes: int, run_worker: bool, problem: str | None
) -> None:
    found = serve_problem(settings(redis_url=redis_url), processes=processes, run_worker=run_worker)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_the_metrics_port_cannot_be_the_apis() -> None:
    same = settings(redis_url=REDIS, api_metrics_port=8000)
    found = serve_problem(same, processes=1, run_worker=True, port=8000)
    assert found is not None and found.startswith("DOCKGUARD_API_METRICS_PORT=8000 is the API's")
    assert serve_problem(same, processes=1, run_worker=True, port=8001) is None
    assert serve_problem(settings(redis_url=REDIS), processes=1, run_worker=True, port=0) is None


def test_the_metrics_port_is_off_by_default_and_a_port() -> None:
    assert settings().api_metrics_port == 0
    with pytest.raises(ValidationError):
        settings(api_metrics_port=65536)


def test_a_port_in_use_is_refused_unless_shared() -> None:
    with listening_socket("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with pytest.raises(PortUnavailable, match=f"127.0.0.1:{port} .*in use"):
            listening_socket("127.0.0.1", port)
    # The API processes of `serve --workers N` each listen on the metrics port.
    with listening_socket("127.0.0.1", 0, shared=True) as first:
        port = first.getsockname()[1]
        with listening_socket("127.0.0.1", port, shared=True) as second:
            assert second.getsockname()[1] == port
        # What `serve` checks first is not shared: a port they hold is refused to another.
        with pytest.raises(PortUnavailable, match="in use"):
            listening_socket("127.0.0.1", port)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_name_is_listened_on_in_ipv4_as_uvicorn_does(host: str) -> None:
    with listening_socket(host, 0) as sock:
        assert sock.family == socket.AF_INET
        assert sock.getsockname()[0] == "127.0.0.1"


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(PortUnavailable, match=re.escape("cannot listen on no-such-host.invalid")):
        listening_socket("no-such-host.invalid", 9100)


def test_api_workers_is_at_least_one() -> None:
    assert settings().api_workers == 1
    with pytest.raises(ValidationError):
        settings(api_workers=0)


def test_uvicorn_gets_the_settings_grace_and_the_same_options_otherwise() -> None:
    options = uvicorn_options(settings(api_shutdown_grace_s=7))
    assert options["timeout_graceful_shutdown"] == 7
    assert {k: v for k, v in options.items() if k != "timeout_graceful_shutdown"} == {
        k: v for k, v in UVICORN_OPTIONS.items() if k != "timeout_graceful_shutdown"
    }


def worker(grace_s: float = 30.0) -> Worker:
    return create_worker(
        fakes(settings(worker_shutdown_grace_s=grace_s)).services, handle_signals=False
    )


def test_the_first_signal_stops_taking_jobs_and_a_second_asks_for_now() -> None:
    w = worker()
    assert w.allow_pick_jobs
    request_stop(w)
    assert not w.allow_pick_jobs
    assert w.ctx["stop"].requested_at is not None and not w.ctx["stop"].now
    request_stop(w)
    assert w.ctx["stop"].now


def test_uvicorns_signal_reaches_the_processes_workers() -> None:
    w = worker()
    server = Server(uvicorn.Config(app="dockguard.api.server:app_from_env"))
    try:
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit
        assert not w.allow_pick_jobs
    finally:
        # sse-starlette's handle_exit hook marks the whole process as exiting (every log stream
        # then ends at once): undo it, or the rest of the session's streams would end unread.
        AppStatus.should_exit = False


async def test_a_job_that_ends_within_the_grace_is_waited_for_not_cancelled() -> None:
    w = worker(grace_s=30)
    job = asyncio.create_task(asyncio.sleep(0.3, result="done"))
    w.tasks["job"] = job
    request_stop(w)
    started = time.monotonic()
    await stop_worker(w)
    assert job.result() == "done"
    assert time.monotonic() - started < 5  # at its end, not the grace's


async def test_a_job_still_running_when_the_grace_ends_is_cancelled() -> None:
    w = worker(grace_s=0.3)
    job = asyncio.create_task(asyncio.sleep(30))
    w.tasks["job"] = job
    request_stop(w)
    started = time.monotonic()
    await stop_worker(w)
    await asyncio.gather(job, return_exceptions=True)
    assert job.cancelled()  # arq puts a cancelled delivery back on the queue
    assert 0.25 < time.monotonic() - started < 5


async def test_a_second_signal_cuts_the_grace_short() -> None:
    w = worker(grace_s=30)
    job = asyncio.create_task(asyncio.sleep(30))
    w.tasks["job"] = job
    request_stop(w)
    stopping = asyncio.create_task(stop_worker(w))
    await asyncio.sleep(0.1)
    assert not stopping.done()
    request_stop_all()  # the second signal
    await asyncio.wait_for(stopping, 5)
    await asyncio.gather(job, return_exceptions=True)
    assert job.cancelled()


async def test_without_a_signal_the_jobs_are_handed_back_at_once() -> None:
    w = worker(grace_s=30)
    job = asyncio.create_task(asyncio.sleep(30))
    w.tasks["job"] = job
    await asyncio.wait_for(stop_worker(w), 5)
    await asyncio.gather(job, return_exceptions=True)
    assert job.cancelled() and not w.allow_pick_jobs
