"""Requests/s and latency of dockguard's API against a bare uvicorn "hello" on this machine.
Prints a table; asserts nothing.

    .venv/bin/python bench/api.py [--duration 5] [--rounds 3] [--connections 1,16,64]
                                  [--only get,post,healthz]

(`bash bench/all.sh` runs it with every other benchmark.)

Only the API is measured: `dockguard serve --no-worker` (so a submitted job stays queued) against
a private redis-server on a free loopback port, with the production log settings (JSON lines at
INFO, one access line per request) written to a file, as deployed. The baseline is a minimal
ASGI app (`async def app(scope, receive, send)` answering 200 "hello") run by the same
`uvicorn.run(...)` options `dockguard serve` uses (one process, the same loop and HTTP
implementation), started by this benchmark in the same run.

Endpoints (each against the hello server with the same method and body):
- `get`: GET /v1/jobs/{id} of one job created (queued) by a POST just before the round;
- `post`: POST /v1/jobs with a small valid JSON body; DOCKGUARD_MAX_QUEUED is raised so every
  submission is accepted (202) rather than refused (429), and Redis is flushed after each round;
- `healthz`: GET /healthz.

Load: `wrk -t<min(2,c)> -c<c> -d<duration>s --latency`, rounds alternating hello, dockguard,
hello, dockguard… so that the machine's noise touches both. Req/s is the mean of the rounds,
p50 the median and p99 the worst; the ratio is dockguard's req/s over hello's. Non-2xx answers
(and socket errors) are counted from wrk's output: a round of errors would measure nothing.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import free_ports, stop_processes, wait_until

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
ENDPOINTS = ("get", "post", "healthz")
# The targets: dockguard's share of hello's req/s, and p99 at 16 connections.
TARGET_RATIO = {"get": 0.50, "post": 0.35, "healthz": 0.80}
TARGET_P99_MS_AT_16 = 50.0
DOCKERFILE = 'FROM busybox:latest\nUSER 1000\nCMD ["sh", "-c", "echo {} > /data/perf.json"]\n'
POST_BODY = json.dumps({"dockerfile": DOCKERFILE})
POST_LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""

# --- the bare hello server (run as `bench/api.py --serve-hello PORT`) ----------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def hello(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """The smallest ASGI app: read the body (a POST's too), answer 200 "hello"."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        more = bool((await receive()).get("more_body", False))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


def serve_hello(port: int) -> None:
    """`uvicorn.run` exactly as `dockguard serve` calls it (src/dockguard/cli.py, with
    api/server.py's options), but for `hello`: one process, the same loop and HTTP parser."""
    import uvicorn

    from dockguard.api.server import UVICORN_OPTIONS

    uvicorn.run(hello, host=HOST, port=port, **UVICORN_OPTIONS)


def uvicorn_implementation() -> tuple[str, str]:
    """The loop uvicorn's "auto" resolves to in this interpreter, and the HTTP protocol `serve`
    passes (api/server.py)."""
    import importlib.util

    from dockguard.api.server import UVICORN_OPTIONS

    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return loop, UVICORN_OPTIONS["http"].__name__


# --- processes -----------------------------------------------------------------------------------


def redis_command(port: int, *args: str) -> bytes:
    """One RESP command to the private redis-server; its raw reply."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((HOST, port), timeout=10) as conn:
        conn.sendall(b"".join(parts))
        return conn.recv(65536)


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


@dataclass
class Processes:
    """Everything the benchmark started, stopped in reverse order by `stop`."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, **kwargs)
        self.started.append(process)
        return process

    def stop(self) -> None:
        stop_processes(self.started, grace_s=20)


# --- wrk -----------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"unknown wrk latency {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Round:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or p50 is None or p99 is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return Round(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk(url: str, connections: int, duration_s: int, script: Path | None) -> Round:
    args = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration_s}s"]
    args += ["--latency", "--timeout", "10s"]
    if script is not None:
        args += ["-s", str(script)]
    done = subprocess.run([*args, url], check=True, capture_output=True, text=True)
    return parse_wrk(done.stdout)


# --- the benchmark -------------------------------------------------------------------------------


@dataclass
class Row:
    endpoint: str
    connections: int
    hello: list[Round] = field(default_factory=list)
    dockguard: list[Round] = field(default_factory=list)


def mean_rps(rounds: list[Round]) -> float:
    return statistics.fmean(r.rps for r in rounds)


def machine() -> Iterator[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    loop, http = uvicorn_implementation()
    import uvicorn

    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout
    yield f"machine: nproc {usable} (os.cpu_count {os.cpu_count()}), CPU {cpu}"
    yield f"python {platform.python_version()} ({sys.executable}), uvicorn {uvicorn.__version__}"
    yield f"uvicorn (both servers): loop={loop}, http={http} (httptools), 1 process, no access log"
    yield f"{wrk_version.splitlines()[0] if wrk_version else 'wrk ?'}; {redis_version.strip()}"


def create_job(base: str) -> str:
    answer = httpx.post(
        f"{base}/v1/jobs",
        content=POST_BODY,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    if answer.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text}")
    job_id: str = answer.json()["id"]
    return job_id


def run(args: argparse.Namespace, workdir: Path, procs: Processes) -> list[Row]:
    redis_port, api_port, hello_port = free_ports(3)
    redis = procs.start(
        ["redis-server", "--bind", HOST, "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def ping() -> bool:
        return redis_command(redis_port, "PING") == b"+PONG\r\n"

    wait_until(ping, "redis-server", redis, workdir / "redis.log")

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKGUARD_")}
    env.update(
        DOCKGUARD_REDIS_URL=f"redis://{HOST}:{redis_port}/0",
        DOCKGUARD_LOG_FORMAT="json",  # the production defaults, spelled out
        DOCKGUARD_LOG_LEVEL="INFO",
        DOCKGUARD_MAX_QUEUED=str(10**9),  # never 429 queue_full: every POST makes a job
        DOCKGUARD_SCANNER_DB_REFRESH_H="0",  # offline machine (a worker's job; none runs here)
        DOCKGUARD_SCAN_IMAGE="false",  # as scripts/serve.sh does offline; not on these paths
    )
    access_log = workdir / "dockguard.stderr.log"
    with access_log.open("wb") as stderr:
        server = procs.start(
            [str(BIN / "dockguard"), "serve", "--no-worker", "--host", HOST,
             "--port", str(api_port)],
            env=env, stdout=stderr, stderr=stderr, cwd=workdir,
        )  # fmt: skip
    hello_server = procs.start(
        [sys.executable, str(Path(__file__).resolve()), "--serve-hello", str(hello_port)],
        cwd=workdir,
    )
    base, hello_base = f"http://{HOST}:{api_port}", f"http://{HOST}:{hello_port}"
    wait_until(lambda: http_ok(f"{base}/healthz"), "dockguard serve", server, access_log)
    wait_until(lambda: http_ok(f"{hello_base}/"), "the hello server", hello_server)
    print(f"dockguard pid {server.pid} on {base}, hello on {hello_base}, redis on {redis_port}")
    print(f"dockguard's stderr (access log): {access_log}")

    post_lua = workdir / "post.lua"
    post_lua.write_text(POST_LUA.format(body=json.dumps(POST_BODY)))
    rows: list[Row] = []
    for connections in args.connections:
        for endpoint in args.only:
            row = Row(endpoint, connections)
            rows.append(row)
            script = post_lua if endpoint == "post" else None
            wrk(f"{hello_base}/", connections, 1, script)  # warm-ups, not counted
            wrk(f"{base}/healthz", connections, 1, None)
            for _ in range(args.rounds):
                row.hello.append(wrk(f"{hello_base}/", connections, args.duration, script))
                if endpoint == "get":
                    url = f"{base}/v1/jobs/{create_job(base)}"
                elif endpoint == "post":
                    url = f"{base}/v1/jobs"
                else:
                    url = f"{base}/healthz"
                row.dockguard.append(wrk(url, connections, args.duration, script))
                if endpoint == "post":
                    redis_command(redis_port, "FLUSHDB")  # keep Redis small between rounds
            print(f"  done: {endpoint} at {connections} connections", flush=True)
    lines = access_log.read_bytes().count(b"\n")
    print(f"dockguard wrote {lines} log lines ({access_log.stat().st_size / 1e6:.1f} MB)")
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> None:
    header = (
        f"{'endpoint':<8} {'conns':>5} {'hello req/s':>11} {'dockguard req/s':>15} "
        f"{'ratio':>6} {'target':>6} {'p50 ms':>7} {'p99 ms':>7} {'hello p99':>9} "
        f"{'non-2xx':>7} {'sock err':>8}"
    )
    print()
    print(f"{args.rounds} round(s) of {args.duration} s each, alternating hello and dockguard")
    print(header)
    print("-" * len(header))
    for row in rows:
        ours, theirs = mean_rps(row.dockguard), mean_rps(row.hello)
        p99 = max(r.p99_ms for r in row.dockguard)
        print(
            f"{row.endpoint:<8} {row.connections:>5} {theirs:>11.0f} {ours:>15.0f} "
            f"{ours / theirs:>6.1%} {TARGET_RATIO[row.endpoint]:>6.0%} "
            f"{statistics.median(r.p50_ms for r in row.dockguard):>7.2f} {p99:>7.2f} "
            f"{max(r.p99_ms for r in row.hello):>9.2f} "
            f"{sum(r.non_2xx for r in row.dockguard):>7} "
            f"{sum(r.socket_errors for r in row.dockguard):>8}"
        )
    print()
    print(
        "ratio: dockguard req/s / hello req/s (means of the rounds); p50: median of the rounds; "
        f"p99: worst round (target < {TARGET_P99_MS_AT_16:g} ms at 16 connections); non-2xx and "
        "socket errors: dockguard's, summed over the rounds"
    )
    for row in rows:
        per_round = ", ".join(
            f"{d.rps / h.rps:.0%}" for h, d in zip(row.hello, row.dockguard, strict=True)
        )
        hello_bad = sum(r.non_2xx + r.socket_errors for r in row.hello)
        note = f"; hello errors {hello_bad}" if hello_bad else ""
        print(f"  {row.endpoint} c={row.connections}: ratio per round {per_round}{note}")


def comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per endpoint and load")
    parser.add_argument(
        "--connections",
        type=lambda v: [int(c) for c in comma_list(v)],
        default=[1, 16, 64],
        help="comma-separated connection counts (default 1,16,64)",
    )
    parser.add_argument(
        "--only",
        type=comma_list,
        default=list(ENDPOINTS),
        help="comma-separated endpoints: get,post,healthz (default all)",
    )
    parser.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hello is not None:
        serve_hello(args.serve_hello)
        return
    unknown = set(args.only) - set(ENDPOINTS)
    if unknown:
        parser.error(f"unknown endpoint(s) {', '.join(sorted(unknown))}; use {','.join(ENDPOINTS)}")
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (apt-get install wrk)")
    for line in machine():
        print(line)
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-bench-api-"))
    procs = Processes()
    try:
        rows = run(args, workdir, procs)
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, args)


if __name__ == "__main__":
    main()
