"""`dockguard serve | worker | submit`: parse arguments, load settings, start things."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from pydantic import ValidationError

from dockguard import logs
from dockguard.embedded_redis import EmbeddedRedisError, embedded_redis
from dockguard.settings import Settings

app = typer.Typer(
    help="Scan, build and run untrusted Dockerfiles in a hardened sandbox.",
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"DOCKGUARD_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
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
) -> None:
    """Run the HTTP API (and, unless --no-worker, a worker). Without DOCKGUARD_REDIS_URL, a private
    redis-server is started and stopped with it."""
    from dockguard.api import create_app

    settings = _settings()
    if settings.redis_url is None and not worker:
        raise typer.BadParameter("--no-worker needs a shared Redis: set DOCKGUARD_REDIS_URL")

    def run(settings: Settings) -> None:
        api = create_app(settings, run_worker=worker)
        uvicorn.run(
            api,
            host=host or settings.host,
            port=settings.port if port is None else port,
            log_config=None,
            proxy_headers=False,
            timeout_graceful_shutdown=10,
        )

    if settings.redis_url is not None:
        run(settings)
        return
    # uvicorn re-raises SIGTERM after a graceful shutdown; as SystemExit it unwinds through the
    # `with` below, so the private redis-server is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with embedded_redis() as url:
            run(settings.model_copy(update={"redis_url": url}))
    except EmbeddedRedisError as exc:
        typer.echo(f"dockguard: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("worker")
def worker_command() -> None:
    """Run a standalone worker against DOCKGUARD_REDIS_URL (scale by starting more)."""
    from dockguard.jobs.worker import create_worker
    from dockguard.services import Services

    settings = _settings()
    if settings.redis_url is None:
        raise typer.BadParameter("a standalone worker needs DOCKGUARD_REDIS_URL")

    async def main() -> None:
        services = await Services.open(settings)
        worker = create_worker(services, handle_signals=True)
        try:
            await worker.async_run()
        finally:
            await worker.close()
            await services.close()

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


@app.command()
def submit(
    dockerfile: Annotated[Path, typer.Argument(help="Dockerfile to submit ('-' for stdin).")],
    url: Annotated[str, typer.Option(help="dockguard's base URL.")] = "http://127.0.0.1:8000",
    wait: Annotated[bool, typer.Option(help="Wait for the job to end.")] = True,
    timeout_s: Annotated[float, typer.Option(help="How long to wait, in seconds.")] = 1800,
) -> None:
    """Submit a Dockerfile and print the job as JSON (exit status 0 only if it succeeded)."""
    body = sys.stdin.buffer.read() if str(dockerfile) == "-" else dockerfile.read_bytes()
    try:
        job = _submit_and_wait(body, url, wait, timeout_s)
    except httpx.HTTPError as exc:
        typer.echo(f"dockguard: talking to {url} failed: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(job, indent=2))
    if wait and job["status"] != "succeeded":
        raise typer.Exit(1)


def _submit_and_wait(body: bytes, url: str, wait: bool, timeout_s: float) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            "/v1/jobs", content=body, headers={"Content-Type": "text/plain; charset=utf-8"}
        )
        if response.status_code != 202:
            typer.echo(response.text, err=True)
            raise typer.Exit(2)
        job: dict[str, Any] = response.json()
        deadline = time.monotonic() + timeout_s
        while wait and job["status"] not in ("succeeded", "failed", "rejected", "cancelled"):
            if time.monotonic() > deadline:
                typer.echo(f"dockguard: job {job['id']} still {job['status']}", err=True)
                raise typer.Exit(3)
            time.sleep(0.5)
            job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    return job
