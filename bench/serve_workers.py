"""Requests/s of the API at 1 and 2 processes: `dockguard serve --workers N --no-worker`
(uvicorn's supervisor) and, when gunicorn is given, gunicorn with uvicorn's worker class running
the same app with the same options. Prints a table; asserts nothing.

    .venv/bin/python bench/serve_workers.py [--duration 5] [--rounds 2] [--connections 16,64]
                                            [--processes 1,2] [--gunicorn DIR]

`--gunicorn DIR`: a directory gunicorn is installed in (`pip install --target DIR gunicorn`;
it is no dependency of dockguard); its processes run `dockguard.api.server:app_from_env()` with
`UVICORN_OPTIONS` (loop, parser, no access log, as `serve`) and the same shared metrics.

Endpoints: `healthz` (GET /healthz, answered before the middleware stack) and `get` (GET
/v1/jobs/{id} of a queued job: a Redis read and a JSON answer). Load: wrk (bench/api.py's
`wrk`), servers taking turns round by round. wrk runs on the same machine, so on a small one it
competes with the server processes for the CPUs (the machine line says how many there are).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from api import Processes, Round, comma_list, create_job, http_ok, machine, redis_command, wrk
from harness import free_ports, wait_until

HOST = "127.0.0.1"
ENDPOINTS = ("healthz", "get")
# gunicorn's worker class: uvicorn's, with the options `dockguard serve` gives uvicorn.
GUNICORN_WORKER = """from uvicorn.workers import UvicornWorker

from dockguard.api.server import UVICORN_OPTIONS


class Worker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "auto", **UVICORN_OPTIONS}
"""


@dataclass
class Row:
    server: str
    processes: int
    endpoint: str
    connections: int
    rounds: list[Round] = field(default_factory=list)


Starter = Callable[[int, int, dict[str, str], Path], list[str]]


def uvicorn_args(processes: int, port: int, env: dict[str, str], workdir: Path) -> list[str]:
    return [sys.executable, "-m", "dockguard", "serve", "--no-worker", "--host", HOST,
            "--port", str(port), "--workers", str(processes)]  # fmt: skip


def gunicorn_starter(path: Path) -> Starter:
    def args(processes: int, port: int, env: dict[str, str], workdir: Path) -> list[str]:
        (workdir / "dgworker.py").write_text(GUNICORN_WORKER)
        env["PYTHONPATH"] = os.pathsep.join([str(path), str(workdir)])
        if processes > 1:  # as `serve --workers N` does (metrics.shared_between_processes)
            metrics_dir = workdir / f"metrics-{processes}"
            metrics_dir.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        return [sys.executable, "-m", "gunicorn", "--workers", str(processes), "--worker-class",
                "dgworker.Worker", "--bind", f"{HOST}:{port}", "--graceful-timeout", "10",
                "dockguard.api.server:app_from_env()"]  # fmt: skip

    return args


def run(args: argparse.Namespace, workdir: Path, procs: Processes) -> list[Row]:
    (redis_port,) = free_ports(1)
    redis = procs.start(
        ["redis-server", "--bind", HOST, "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: redis_command(redis_port, "PING") == b"+PONG\r\n", "redis-server", redis)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKGUARD_")}
    base_env.update(
        DOCKGUARD_REDIS_URL=f"redis://{HOST}:{redis_port}/0",
        DOCKGUARD_LOG_FORMAT="json",
        DOCKGUARD_LOG_LEVEL="INFO",
        DOCKGUARD_SCANNER_DB_REFRESH_H="0",
        DOCKGUARD_SCAN_IMAGE="false",
    )
    servers: dict[str, Starter] = {"uvicorn": uvicorn_args}
    if args.gunicorn is not None:
        servers["gunicorn"] = gunicorn_starter(args.gunicorn)
    rows: list[Row] = []
    for processes in args.processes:
        running: dict[str, str] = {}
        these = Processes()  # this count's servers, stopped before the next count starts
        for name, starter in servers.items():
            (port,) = free_ports(1)
            env = dict(base_env)
            command = starter(processes, port, env, workdir)
            log = workdir / f"{name}-{processes}.log"
            with log.open("wb") as out:
                server = these.start(command, env=env, stdout=out, stderr=out, cwd=workdir)
            base = f"http://{HOST}:{port}"
            wait_until(functools.partial(http_ok, f"{base}/healthz"), name, server, log)
            running[name] = base
        for connections in args.connections:
            for endpoint in args.only:
                here = {name: Row(name, processes, endpoint, connections) for name in running}
                rows.extend(here.values())
                for base in running.values():  # warm-ups (every process), not counted
                    wrk(f"{base}/healthz", connections, 1, None)
                for _ in range(args.rounds):
                    for name, base in running.items():
                        url = f"{base}/healthz"
                        if endpoint == "get":
                            url = f"{base}/v1/jobs/{create_job(base)}"
                        here[name].rounds.append(wrk(url, connections, args.duration, None))
                print(f"  done: {processes} process(es), {endpoint}, c={connections}", flush=True)
        these.stop()
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> None:
    header = (
        f"{'server':<9} {'procs':>5} {'endpoint':<8} {'conns':>5} {'req/s':>8} {'vs 1 proc':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
    )
    print()
    print(f"{args.rounds} round(s) of {args.duration} s each; req/s: mean of the rounds")
    print(header)
    print("-" * len(header))
    single = {
        (r.server, r.endpoint, r.connections): statistics.fmean(x.rps for x in r.rounds)
        for r in rows
        if r.processes == 1
    }
    for row in sorted(rows, key=lambda r: (r.endpoint, r.connections, r.server, r.processes)):
        rps = statistics.fmean(r.rps for r in row.rounds)
        one = single.get((row.server, row.endpoint, row.connections))
        scale = f"{rps / one:.2f}x" if one else "-"
        errors = sum(r.non_2xx + r.socket_errors for r in row.rounds)
        print(
            f"{row.server:<9} {row.processes:>5} {row.endpoint:<8} {row.connections:>5} "
            f"{rps:>8.0f} {scale:>9} {statistics.median(r.p50_ms for r in row.rounds):>7.2f} "
            f"{max(r.p99_ms for r in row.rounds):>7.2f} {errors:>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server and load")
    parser.add_argument(
        "--connections", type=lambda v: [int(c) for c in comma_list(v)], default=[16, 64]
    )
    parser.add_argument(
        "--processes", type=lambda v: [int(c) for c in comma_list(v)], default=[1, 2]
    )
    parser.add_argument("--only", type=comma_list, default=list(ENDPOINTS))
    parser.add_argument("--gunicorn", type=Path, help="a directory gunicorn is installed in")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (apt-get install wrk)")
    for line in machine():
        print(line)
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-bench-workers-"))
    procs = Processes()
    try:
        rows = run(args, workdir, procs)
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, args)


if __name__ == "__main__":
    main()
