"""`dockguard serve | worker | scanner` (parse arguments, load settings, start things) and the
client's commands, `submit | status | logs | cancel | jobs`, which talk to dockguard only through
`dockguard.client`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import prometheus_client
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from dockguard import logs
from dockguard.client import (
    DEFAULT_URL,
    URL_ENV,
    AsyncClient,
    Client,
    DockguardError,
    LogEvent,
    WaitTimeout,
)
from dockguard.embedded_redis import EmbeddedRedisError, embedded_redis
from dockguard.models import Job, JobStatus, ScanReport
from dockguard.settings import Settings

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Scan, build and run untrusted Dockerfiles in a hardened sandbox.",
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            # A check of several settings together (no `loc`) names them in its message.
            f"DOCKGUARD_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        typer.echo(f"dockguard: invalid configuration: {problems}", err=True)
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, settings.log_format)
    return settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    worker: Annotated[bool, typer.Option(help="Run a worker in the same process.")] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="API processes (default DOCKGUARD_API_WORKERS, 1). More than 1: uvicorn's "
            "supervisor runs them on one port; needs --no-worker and DOCKGUARD_REDIS_URL.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the HTTP API (and, unless --no-worker, a worker). Without DOCKGUARD_REDIS_URL, a private
    redis-server is started and stopped with it.

    On SIGTERM it stops accepting connections, lets open requests finish for
    DOCKGUARD_API_SHUTDOWN_GRACE_S, and exits 0; its worker (if any) takes no new job from the
    signal on and stops as `dockguard worker` does."""
    settings = _settings()
    _check_runtime(settings)
    processes = settings.api_workers if workers is None else workers
    host_ = host or settings.host
    port_ = settings.port if port is None else port
    # DOCKGUARD_API_METRICS_PORT listens where the API does.
    settings = settings.model_copy(update={"host": host_})
    if problem := serve_problem(settings, processes=processes, run_worker=worker, port=port_):
        raise typer.BadParameter(problem)
    if settings.api_metrics_port:  # (its processes listen on it themselves, later)
        _listen(host_, settings.api_metrics_port, "DOCKGUARD_API_METRICS_PORT").close()
    sock = _listen(host_, port_, "DOCKGUARD_PORT or --port")
    if processes > 1:
        _serve_processes(settings, sock, processes)
        return
    # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit(0) it unwinds through
    # the `with` below (so the private redis-server is stopped too), and a clean stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if settings.redis_url is not None:
        _serve_one(settings, sock, run_worker=worker)
        return
    try:
        with embedded_redis() as url:
            _serve_one(settings.model_copy(update={"redis_url": url}), sock, worker)
    except EmbeddedRedisError as exc:
        typer.echo(f"dockguard: {exc}", err=True)
        raise typer.Exit(1) from exc


def _check_runtime(settings: Settings) -> None:
    """Refuse to start (exit 2) when the engine answers without DOCKGUARD_RUNTIME, or runs would
    be under gVisor with too few DOCKGUARD_RUN_PIDS for it (services.check_runtime)."""
    from dockguard.sandbox import connect
    from dockguard.services import RuntimeUnavailable, check_runtime

    async def check() -> None:
        docker = connect(settings.docker_url, settings.docker_timeout_s)
        try:
            await check_runtime(settings.runtime, docker, run_pids=settings.run_pids, warn=False)
        finally:
            await docker.close()

    try:
        asyncio.run(check())
    except RuntimeUnavailable as exc:
        typer.echo(f"dockguard: {exc}", err=True)
        raise typer.Exit(2) from None


def _listen(host: str, port: int, setting: str) -> socket.socket:
    """A socket listening on host:port, or a refusal to start (exit 2) naming `setting`. Not
    shared (no SO_REUSEPORT): a port anything else listens on, even another dockguard, is
    refused."""
    from dockguard.api.sockets import PortUnavailable, listening_socket

    try:
        return listening_socket(host, port)
    except PortUnavailable as exc:
        typer.echo(f"dockguard: {exc}; set {setting} to a free port", err=True)
        raise typer.Exit(2) from None


def serve_problem(
    settings: Settings, *, processes: int, run_worker: bool, port: int | None = None
) -> str | None:
    """Why `serve` cannot start with these options (`port`: the API's), or None."""
    if settings.api_metrics_port and settings.api_metrics_port == port:
        return (
            f"DOCKGUARD_API_METRICS_PORT={port} is the API's own port: give the metrics another "
            "one, or 0 for none"
        )
    if processes > 1 and run_worker:
        # One worker per API process would tie job capacity (and each host's sandboxes) to the
        # HTTP processes, and make every API stop wait for jobs: workers scale on their own.
        return (
            f"--workers {processes} runs the API only: add --no-worker, and run `dockguard "
            "worker` beside it"
        )
    if settings.redis_url is None and (processes > 1 or not run_worker):
        what = "--no-worker" if processes == 1 else f"--workers {processes}"
        return f"{what} needs a shared Redis: set DOCKGUARD_REDIS_URL"
    return None


_STARTUP_FAILURE = uvicorn.config.STARTUP_FAILURE  # (3) a process whose app did not start


def _serve_one(settings: Settings, sock: socket.socket, run_worker: bool) -> None:
    from dockguard.api import create_app, startup
    from dockguard.api.server import Server, uvicorn_options

    api = create_app(settings, run_worker=run_worker)
    server = Server(uvicorn.Config(api, **uvicorn_options(settings)))
    with startup.reporting() as reason:
        try:
            server.run(sockets=[sock])  # uvicorn exits (3) itself when the app's startup fails
        finally:
            if (why := reason()) is not None:
                _startup_failed(why)
        if not server.started:
            _startup_failed(None)


def _serve_processes(settings: Settings, sock: socket.socket, processes: int) -> None:
    """uvicorn's supervisor: `processes` API processes on one socket, each built by
    `app_from_env`, restarted when one dies; SIGTERM stops them all (each within the grace), then
    the supervisor returns and `serve` exits 0. One that fails to start stops them all, and
    `serve` exits 3 with its reason (api/startup.py); one that fails while a SIGHUP replaces
    the processes leaves the old one serving, and is no reason for a later exit 3. Their
    metrics are shared through a private directory."""
    from uvicorn.supervisors import Multiprocess

    from dockguard import metrics
    from dockguard.api import startup
    from dockguard.api.server import APP_FACTORY, uvicorn_options

    options = uvicorn_options(settings)
    config = uvicorn.Config(APP_FACTORY, factory=True, workers=processes, **options)
    os.environ["DOCKGUARD_HOST"] = settings.host  # each process's settings: where it listens
    with metrics.shared_between_processes(), startup.reporting() as reason:
        supervisor = Multiprocess(config, sockets=[sock])  # (as uvicorn.run does)
        supervisor.run()
        # It returns the same after a signal and after a process failed to start; only in the
        # second case is that process, with uvicorn's startup failure status, among its own.
        if any(process.exitcode == _STARTUP_FAILURE for process in supervisor.processes):
            _startup_failed(reason())


def _startup_failed(why: str | None) -> NoReturn:
    logs.stop_writer()  # what is queued for the log is written first: this line ends it
    typer.echo(f"dockguard: the API did not start: {why or 'see the log above'}", err=True)
    sys.exit(_STARTUP_FAILURE)


@app.command("worker")
def worker_command() -> None:
    """Run a standalone worker against DOCKGUARD_REDIS_URL (scale by starting more).

    On SIGTERM or SIGINT it takes no new job and lets its running jobs finish for
    DOCKGUARD_WORKER_SHUTDOWN_GRACE_S; a second signal, or the grace's end, hands the rest back
    to the queue. Their cleanup takes up to 120 s more: give the process that grace + 130 s."""
    from dockguard.jobs.worker import create_worker, request_stop, serve_jobs, stop_worker
    from dockguard.services import Services

    settings = _settings()
    if settings.redis_url is None:
        raise typer.BadParameter("a standalone worker needs DOCKGUARD_REDIS_URL")
    _check_runtime(settings)

    if settings.worker_metrics_port:
        # prometheus-client's own server, in a thread: GET /metrics on the port.
        try:
            prometheus_client.start_http_server(settings.worker_metrics_port, addr=settings.host)
        except OSError as exc:
            where = f"{settings.host}:{settings.worker_metrics_port}"
            typer.echo(
                f"dockguard: cannot serve metrics on {where} ({exc.strerror}); set "
                "DOCKGUARD_WORKER_METRICS_PORT to a free port, or 0 for none",
                err=True,
            )
            raise typer.Exit(2) from None

    async def main() -> None:
        services = await Services.open(settings)
        # Our handlers, not arq's: arq's cancels the running jobs at the first signal.
        worker = create_worker(services, handle_signals=False)
        signalled = asyncio.Event()

        def on_signal(signum: signal.Signals) -> None:
            log.info("worker stop signal", extra={"signal": signum.name})
            request_stop(worker)
            signalled.set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        serving = asyncio.create_task(serve_jobs(worker))
        waiting = asyncio.create_task(signalled.wait())
        try:
            await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            await stop_worker(worker)
            serving.cancel()
            (ended,) = await asyncio.gather(serving, return_exceptions=True)
            await services.close()
        if isinstance(ended, Exception):  # the poll loop failed (not a stop): say so, exit 1
            raise ended

    asyncio.run(main())


scanner_app = typer.Typer(help="The Trivy scanner and its vulnerability DB.")
app.add_typer(scanner_app, name="scanner")


def _with_scanner(settings: Settings, action: str) -> None:
    """Run one scanner action with a Docker client and (for the scan cache) no Redis needed."""
    from dockguard.errors import JobFailure
    from dockguard.sandbox import connect
    from dockguard.services import trivy_scanner
    from dockguard.store.scan_cache import ScanCache

    async def main() -> None:
        docker = connect(settings.docker_url, settings.docker_timeout_s)
        try:
            scanner = trivy_scanner(settings, docker, _NoCache())
            if action == "update-db":
                db = await scanner.update_db()
                typer.echo(f"vulnerability DB updated: {db.model_dump_json()}")
            status = await scanner.status()
            typer.echo(status.model_dump_json(indent=2))
            if not status.db_usable:
                raise typer.Exit(1)
        except JobFailure as failure:
            typer.echo(f"dockguard: {failure.message}", err=True)
            raise typer.Exit(1) from failure
        finally:
            await docker.close()

    class _NoCache(ScanCache):
        def __init__(self) -> None:
            super().__init__(None, 0)  # type: ignore[arg-type]

    asyncio.run(main())


@scanner_app.command("status")
def scanner_status() -> None:
    """Print the scanner, its DB and whether image scans can run (exit 1 if they cannot)."""
    _with_scanner(_settings(), "status")


@scanner_app.command("update-db")
def scanner_update_db() -> None:
    """Download a fresh vulnerability DB into DOCKGUARD_SCANNER_CACHE_DIR (needs network, or
    DOCKGUARD_SCANNER_DB_REPOSITORY pointing at a reachable mirror)."""
    _with_scanner(_settings(), "update-db")


# --- the client's commands: submit, status, logs, cancel, jobs (HTTP only through the client) ----

EXIT_SUCCEEDED = 0
EXIT_NOT_SUCCEEDED = 1  # the job ended failed, rejected or cancelled; cancel: job_finished
EXIT_ERROR = 2  # refused, no such job, or dockguard could not be reached
EXIT_NOT_ENDED = 3  # the job had not ended within the wait (or, for status, has not ended yet)

UrlOption = Annotated[
    str, typer.Option("--url", envvar=URL_ENV, help="dockguard's base URL.", show_envvar=True)
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON only: no progress, no table (for scripts).")
]
JobIdArgument = Annotated[str, typer.Argument(help="The job's id.", show_default=False)]


@app.command()
def submit(
    dockerfile: Annotated[Path, typer.Argument(help="Dockerfile to submit ('-' for stdin).")],
    url: UrlOption = DEFAULT_URL,
    wait: Annotated[bool, typer.Option(help="Wait for the job to end.")] = True,
    timeout_s: Annotated[float, typer.Option(help="How long to wait, in seconds.")] = 1800,
    as_json: JsonOption = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retry-safe: the same key and Dockerfile give the same job.")
    ] = None,
    run_timeout_s: Annotated[float | None, typer.Option(help="Seconds the run may take.")] = None,
    run_memory_mb: Annotated[int | None, typer.Option(help="The run's memory, in MiB.")] = None,
    run_cpus: Annotated[float | None, typer.Option(help="CPUs the run may use.")] = None,
) -> None:
    """Submit a Dockerfile, wait for the job to end and print it as JSON.

    On a terminal (without --json), stderr shows the job's stages and its build and run output
    as they happen. Exit status: 0 the job succeeded (with --no-wait: it was queued), 1 it
    ended otherwise, 2 the submission was refused or dockguard could not be reached, 3 it had
    not ended within --timeout-s (the job as it was is printed)."""
    body = _read_dockerfile(dockerfile)
    asked = {"run_timeout_s": run_timeout_s, "run_memory_mb": run_memory_mb, "run_cpus": run_cpus}
    limits = {name: value for name, value in asked.items() if value is not None}
    console = Console(stderr=True, highlight=False)
    watch = console if wait and not as_json and console.is_terminal else None
    try:
        job = asyncio.run(
            _submit(url, body, limits or None, idempotency_key, wait, timeout_s, watch)
        )
    except WaitTimeout as exc:
        typer.echo(_job_json(exc.job))
        _fail(exc, EXIT_NOT_ENDED)
    except DockguardError as exc:
        _fail(exc)
    typer.echo(_job_json(job))
    raise typer.Exit(_job_exit(job) if wait else EXIT_SUCCEEDED)


async def _submit(
    url: str,
    body: bytes,
    limits: dict[str, float] | None,
    idempotency_key: str | None,
    wait: bool,
    timeout_s: float,
    watch: Console | None,
) -> Job:
    async with AsyncClient(url) as client:
        job = await client.submit(body, limits=limits, idempotency_key=idempotency_key)
        if not wait:
            return job
        if watch is None:
            return await client.wait(job.id, timeout_s=timeout_s)
        return await _watch(client, job, timeout_s, watch)


async def _watch(client: AsyncClient, job: Job, timeout_s: float, console: Console) -> Job:
    """Wait for the job to end, showing its stages and output (its log events) on `console`."""
    deadline = time.monotonic() + timeout_s
    view = _JobView(job)
    with Live(view, console=console, refresh_per_second=8):
        try:
            async with asyncio.timeout(timeout_s):
                async with contextlib.aclosing(client.logs(job.id)) as events:
                    async for event in events:
                        view.show(event, console)
        except TimeoutError:
            raise WaitTimeout(await client.get(job.id), timeout_s) from None
        except asyncio.CancelledError:  # Ctrl-C: the job goes on without us
            console.print(f"stopped watching; job {job.id} goes on (dockguard status {job.id})")
            raise
        # `end` comes in the transaction that ends the job, so this answers at once.
        view.job = await client.wait(job.id, timeout_s=max(deadline - time.monotonic(), 0))
    return view.job


_STAGES = (JobStatus.QUEUED, JobStatus.SCANNING, JobStatus.BUILDING, JobStatus.RUNNING)
_VERDICT_STYLE = {JobStatus.SUCCEEDED: ("✓", "green"), JobStatus.CANCELLED: ("✗", "yellow")}


class _JobView:
    """What a terminal shows while `submit` waits: each stage with its duration (the one under
    way with a spinner), then the verdict. Rich's Live renders it on each refresh; times are the
    server's, from the event ids."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.started: dict[JobStatus, float] = {}  # stage → when it began (epoch seconds)
        self.ended: tuple[JobStatus, float] | None = None
        self._spinner = Spinner("dots", style="cyan")

    def show(self, event: LogEvent, console: Console) -> None:
        at = event.at.timestamp() if event.at is not None else time.time()
        if event.kind == "log":
            # Text, not markup: the line is the untrusted build's or container's output.
            console.print(Text.assemble((f"{event.stage} | ", "dim"), event.line or ""))
        elif event.status is not None and event.status.terminal:
            self.ended = self.ended or (event.status, at)
        elif event.status is not None:
            self.started.setdefault(event.status, at)

    def __rich__(self) -> RenderableType:
        grid = Table.grid(padding=(0, 1))
        now = self.ended[1] if self.ended else time.time()
        for stage in _STAGES:
            if (start := self.started.get(stage)) is None:
                grid.add_row(Text("·", "dim"), Text(stage.value, "dim"), "")
                continue
            later = [at for s, at in self.started.items() if s.rank > stage.rank]
            took = max(min(later, default=now) - start, 0.0)
            grid.add_row(
                self._mark(last=not later), Text(stage.value), Text(f"{took:.1f} s", "dim")
            )
        if self.ended is not None:
            status, at = self.ended
            sign, style = _VERDICT_STYLE.get(status, ("✗", "red"))
            total = max(at - self.started.get(JobStatus.QUEUED, at), 0.0)
            grid.add_row(
                Text(sign, style), Text(status.value, f"bold {style}"), _verdict(self.job, total)
            )
        return Group(Text(f"job {self.job.id}", "bold"), grid)

    def _mark(self, *, last: bool) -> RenderableType:
        """✓ a stage done, the spinner while it is under way, ✗ where the job ended otherwise."""
        if not last or (self.ended is not None and self.ended[0] is JobStatus.SUCCEEDED):
            return Text("✓", "green")
        if self.ended is None:
            return self._spinner
        return Text("✗", _VERDICT_STYLE.get(self.ended[0], ("✗", "red"))[1])


def _verdict(job: Job, total_s: float) -> Text:
    detail = f"in {total_s:.1f} s"
    if job.result is not None and job.result.perf is not None:
        detail += f", perf {job.result.perf:g}"
    if job.error is not None:
        detail += f", {job.error.code}: {job.error.message}"
    return Text(detail)


@app.command()
def status(
    job_id: JobIdArgument,
    url: UrlOption = DEFAULT_URL,
    wait: Annotated[
        float | None, typer.Option(help="Wait up to this many seconds for the job to end.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a job: a summary, or with --json the job itself.

    Exit status: 0 it succeeded, 1 it ended otherwise, 2 no such job or dockguard could not be
    reached, 3 it has not ended (yet, or within --wait)."""
    try:
        with Client(url) as client:
            job = client.get(job_id) if wait is None else client.wait(job_id, timeout_s=wait)
    except WaitTimeout as exc:
        job = exc.job
    except DockguardError as exc:
        _fail(exc)
    typer.echo(_job_json(job) if as_json else _summary(job))
    raise typer.Exit(_job_exit(job))


@app.command("logs")
def logs_command(
    job_id: JobIdArgument,
    url: UrlOption = DEFAULT_URL,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow the live output until the job ends.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Print a job's build and run output, one `<stage> | <line>` per line.

    -f follows the output live until the job ends. --json: one JSON event per line (with -f,
    its status changes and its end too). Exit status 2: no such job, or dockguard could not be
    reached."""
    try:
        with Client(url) as client:
            if not follow and not as_json:
                typer.echo(client.logs_text(job_id), nl=False)
                return
            for event in client.logs(job_id, follow=follow):
                if as_json:
                    typer.echo(_event_json(event))
                elif event.kind == "log":
                    typer.echo(str(event))
    except DockguardError as exc:
        _fail(exc)


@app.command()
def cancel(
    job_id: JobIdArgument, url: UrlOption = DEFAULT_URL, as_json: JsonOption = False
) -> None:
    """Cancel a job and print it, now cancelled.

    Exit status: 1 it had already ended (job_finished), 2 no such job or dockguard could not
    be reached."""
    try:
        with Client(url) as client:
            job = client.cancel(job_id)
    except DockguardError as exc:
        _fail(exc, EXIT_NOT_SUCCEEDED if exc.code == "job_finished" else EXIT_ERROR)
    typer.echo(_job_json(job) if as_json else _summary(job))


@app.command()
def jobs(
    url: UrlOption = DEFAULT_URL,
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Most jobs to list.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Where the previous page ended.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first.

    A table on a terminal, tab-separated lines otherwise (id, status, created, took, perf,
    error), the page itself (`jobs`, `next_cursor`) with --json. Exit status 2: dockguard could
    not be reached."""
    try:
        with Client(url) as client:
            page = client.list(status=status, limit=limit, cursor=cursor)
    except DockguardError as exc:
        _fail(exc)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    console = Console(highlight=False)
    rows = [_job_row(job) for job in page.jobs]
    if console.is_terminal:
        table = Table("id", "status", "created", "took", "perf", "error")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        for row in rows:
            typer.echo("\t".join(row))
    if page.next_cursor is not None:
        typer.echo(f"more: dockguard jobs --cursor {page.next_cursor}", err=True)


def _read_dockerfile(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        typer.echo(f"dockguard: reading {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def _fail(exc: DockguardError, exit_code: int = EXIT_ERROR) -> NoReturn:
    typer.echo(f"dockguard: {exc}", err=True)
    raise typer.Exit(exit_code) from None


def _job_exit(job: Job) -> int:
    if job.status is JobStatus.SUCCEEDED:
        return EXIT_SUCCEEDED
    return EXIT_NOT_SUCCEEDED if job.status.terminal else EXIT_NOT_ENDED


def _job_json(job: Job) -> str:
    return json.dumps(job.model_dump(mode="json"), indent=2)


def _event_json(event: LogEvent) -> str:
    fields = {"kind": event.kind, "id": event.id, "stage": event.stage, "line": event.line}
    fields["status"] = None if event.status is None else event.status.value
    return json.dumps({name: value for name, value in fields.items() if value is not None})


def _took(job: Job) -> str:
    return "" if job.finished_at is None else _seconds(job.finished_at - job.created_at)


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.1f} s"


def _job_row(job: Job) -> tuple[str, str, str, str, str, str]:
    perf = "" if job.result is None or job.result.perf is None else f"{job.result.perf:g}"
    created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
    error = "" if job.error is None else job.error.code
    return job.id, job.status.value, created, _took(job), perf, error


def _summary(job: Job) -> str:
    """A job in a few lines, for people (--json gives all of it)."""
    rows = [("status", job.status.value), ("created", f"{job.created_at:%Y-%m-%d %H:%M:%S %Z}")]
    if job.finished_at is not None:
        rows.append(("finished", f"{job.finished_at:%Y-%m-%d %H:%M:%S %Z} ({_took(job)})"))
    scans = [(name, report) for name, report in job.scan if report is not None]
    if scans:
        rows.append(("scan", ", ".join(_scan(name, report) for name, report in scans)))
    if job.build is not None and job.build.duration_s is not None:
        rows.append(("build", f"{job.build.duration_s:.1f} s"))
    if job.run is not None and job.run.duration_s is not None:
        rows.append(("run", f"exit {job.run.exit_code}, {job.run.duration_s:.1f} s"))
    if job.result is not None:
        rows.append(("perf", "null" if job.result.perf is None else f"{job.result.perf:g}"))
    if job.error is not None:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    return "\n".join([f"job {job.id}", *(f"  {name:<9} {value}" for name, value in rows)])


def _scan(name: str, report: ScanReport) -> str:
    verdict = "passed" if report.passed else "failed"
    return f"{name} {verdict} ({len(report.findings)} findings, {report.duration_s:.1f} s)"
