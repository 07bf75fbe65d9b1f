"""What bench/pipeline.py, throughput.py and memory.py share: a private redis-server, the
`dockguard serve` / `dockguard worker` processes started against it (as
tests/e2e/test_reliability.py's `Stack` does), a generated Trivy DB, submitting and long-polling
jobs, /metrics and /proc readings, and the machine's description. Not a benchmark itself.

Everything listens on 127.0.0.1; every process started here is stopped by `Stack.stop`, and every
Docker object a job makes is the job's own (dockguard labels and removes them).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.trivydb import write_db  # noqa: E402  (the test suite's DB generator)

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
TERMINAL = frozenset({"succeeded", "failed", "rejected", "cancelled"})
WAIT_S = 60  # the server's longest `?wait=` long-poll
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A trivial job: busybox (the engine's local image), writes its result and ends.
TRIVIAL = r"""FROM busybox:latest
# {nonce}
USER 1000
CMD ["sh", "-c", "echo '{{\"perf\": 0.87}}' > /data/perf.json"]
"""


# --- the machine ---------------------------------------------------------------------------------


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg has them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> Iterator[str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    meminfo = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    mem_kb = int(meminfo.group(1)) if meminfo else 0
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    trivy = subprocess.run(
        [str(BIN / "trivy"), "--version"], capture_output=True, text=True, timeout=30
    ).stdout.splitlines()
    nproc = len(os.sched_getaffinity(0))
    yield f"machine: nproc {nproc}, CPU {cpu}, memory {mem_kb / 2**20:.1f} GiB"
    trivy_version = trivy[0].replace("Version: ", "trivy ") if trivy else "trivy ?"
    yield f"kernel {platform.release()}, Docker Engine {docker or '?'}, {trivy_version}"
    yield f"python {platform.python_version()}; load average at start {loadavg()}"


# --- processes -----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all bound at once, so none is repeated)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_until(check: Callable[[], bool], what: str, process: subprocess.Popen[bytes],
               log: Path | None = None, timeout_s: float = 60) -> None:  # fmt: skip
    """Until `check()` holds; raises (with the end of `log`) if `process` exits or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, httpx.TransportError):
            if check():
                return
        failed = None
        if process.poll() is not None:
            failed = f"{what} exited with status {process.returncode}"
        elif time.monotonic() > deadline:
            failed = f"{what} did not start within {timeout_s:g} s"
        if failed is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{failed}\n{tail}")
        time.sleep(0.1)


def _redis_ping(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=5) as conn:
        conn.sendall(b"*1\r\n$4\r\nPING\r\n")
        return conn.recv(64) == b"+PONG\r\n"


@dataclass
class Stack:
    """A private redis-server, a generated Trivy DB and the dockguard processes started on them,
    each writing its JSON log lines (INFO) to `<workdir>/<name>.log`."""

    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)  # extra DOCKGUARD_* for every process
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis_port, self.api_port = free_ports(2)
        self.base_url = f"http://{HOST}:{self.api_port}"
        self.trivy_db = self.workdir / "trivy"
        write_db(self.trivy_db, [], updated_at=datetime.now(UTC))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKGUARD_")}
        env.update(
            DOCKGUARD_REDIS_URL=f"redis://{HOST}:{self.redis_port}/0",
            DOCKGUARD_SCANNER_CACHE_DIR=str(self.trivy_db),  # the image scan runs, as deployed
            DOCKGUARD_SCANNER_DB_REFRESH_H="0",  # offline machine
            DOCKGUARD_BUILD_NETWORK="none",  # the jobs' Dockerfiles have no RUN: no proxy needed
            DOCKGUARD_WORKER_METRICS_PORT="0",
            DOCKGUARD_LOG_FORMAT="json",
            DOCKGUARD_LOG_LEVEL="INFO",
            DOCKGUARD_MAX_QUEUED=str(10**6),
        )
        env.update(self.settings)
        env.update(extra)
        return env

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(args, env=env, stdout=out, stderr=out, cwd=self.workdir)
        self.started.append(process)
        self.logs[name], self.pids[name] = log, process.pid
        return process

    def start_redis(self) -> None:
        redis = self._start(
            "redis",
            ["redis-server", "--bind", HOST, "--port", str(self.redis_port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            dict(os.environ),
        )  # fmt: skip
        wait_until(lambda: _redis_ping(self.redis_port), "redis-server", redis, self.logs["redis"])

    def start_api(self, *, worker: bool, **extra: str) -> int:
        """`dockguard serve` (with its in-process worker unless `worker` is False); its pid, once
        it answers: /readyz with a worker, /healthz without (its /readyz waits for a worker)."""
        args = [sys.executable, "-m", "dockguard", "serve", "--host", HOST,
                "--port", str(self.api_port)]  # fmt: skip
        api = self._start("api", args if worker else [*args, "--no-worker"], self.env(**extra))
        probe = "readyz" if worker else "healthz"
        wait_until(
            lambda: httpx.get(f"{self.base_url}/{probe}", timeout=5).status_code == 200,
            "dockguard serve",
            api,
            self.logs["api"],
        )
        return api.pid

    def start_worker(self, name: str, concurrency: int, **extra: str) -> int:
        """A standalone `dockguard worker` with `concurrency` slots; its pid, once it is alive
        (its heartbeat is in Redis: the API's /metrics counts it)."""
        env = self.env(DOCKGUARD_WORKER_CONCURRENCY=str(concurrency), **extra)
        worker = self._start(name, [sys.executable, "-m", "dockguard", "worker"], env)
        before = len([n for n in self.pids if n.startswith("worker")]) - 1
        wait_until(lambda: workers_alive(self.base_url) > before, name, worker, self.logs[name])
        return worker.pid

    def stop(self) -> None:
        """Every process, in reverse order (workers before the API, Redis last)."""
        stop_processes(self.started, grace_s=60)
        self.started.clear()


def stop_processes(started: list[subprocess.Popen[bytes]], *, grace_s: float) -> None:
    """SIGTERM each process still running, the last started first; SIGKILL past `grace_s`."""
    for process in reversed(started):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- jobs ----------------------------------------------------------------------------------------


async def submit(client: httpx.AsyncClient, dockerfile: str) -> tuple[str, float]:
    """POST the Dockerfile; the job id and the wall-clock time (epoch s) just before the POST."""
    sent = time.time()
    answer = await client.post(
        "/v1/jobs", content=dockerfile, headers={"Content-Type": "text/plain"}
    )
    if answer.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:500]}")
    job_id: str = answer.json()["id"]
    return job_id, sent


async def wait_job(client: httpx.AsyncClient, job_id: str) -> tuple[dict[str, Any], float]:
    """Long-poll `GET /v1/jobs/{id}?wait=` until the job ends; the job and the wall-clock time
    (epoch s) its terminal state reached this client."""
    while True:
        answer = await client.get(f"/v1/jobs/{job_id}", params={"wait": WAIT_S})
        seen = time.time()
        if answer.status_code != 200:
            raise RuntimeError(f"GET job answered {answer.status_code}: {answer.text[:500]}")
        job: dict[str, Any] = answer.json()
        if job["status"] in TERMINAL:
            return job, seen


def at(value: str) -> float:
    """An RFC 3339 timestamp of the job record, as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- /metrics ------------------------------------------------------------------------------------

_STAGE_LINE = re.compile(
    r'^dockguard_stage_duration_seconds_(sum|count)\{stage="(\w+)"\} ([0-9.e+-]+)$', re.MULTILINE
)
_WORKERS_ALIVE = re.compile(r"^dockguard_workers_alive ([0-9.e+-]+)$", re.MULTILINE)


def stage_totals(base_url: str) -> dict[str, tuple[float, float]]:
    """Per stage, the `dockguard_stage_duration_seconds` histogram's (sum, count) now."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for kind, stage, value in _STAGE_LINE.findall(text):
        (sums if kind == "sum" else counts)[stage] = float(value)
    return {stage: (sums[stage], counts.get(stage, 0.0)) for stage in sums}


def workers_alive(base_url: str) -> int:
    match = _WORKERS_ALIVE.search(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return int(float(match.group(1))) if match else 0


# --- /proc ---------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of the process, from /proc/<pid>/status."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class Cpu:
    own_s: float  # utime + stime
    children_s: float  # cutime + cstime: children it waited for (trivy runs as its child)


def cpu(pid: int) -> Cpu:
    """CPU time of a process and of its reaped children, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return Cpu((utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS)


def pids_named(*names: str) -> list[int]:
    """The pids whose command name (/proc/<pid>/comm) is one of `names`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds spent busy and in all, over every core, since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


class CpuByCommand:
    """CPU seconds used over a window by every process on the machine, by command name: each pid's
    /proc/<pid>/stat is read every `interval_s` in a thread, and a pid's use is its last reading
    minus its first (zero for a pid born in the window). A process that lives less than
    `interval_s` is missed, but for what its parent's cutime/cstime holds (see `cpu`)."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self._interval_s = interval_s
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, int, float]] = {}  # command, parent pid, CPU s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuByCommand:
        self._read(first=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._read(first=False)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._read(first=False)

    def _read(self, *, first: bool) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            fields = tail.split()
            used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            if first:
                self._first[pid] = used
            else:
                self._first.setdefault(pid, 0.0)
            self._last[pid] = (head.split("(", 1)[1], int(fields[1]), used)

    def by_command(self, without: Collection[int] = ()) -> dict[str, float]:
        """CPU s by command, leaving out the pids `without` and their children."""
        used: dict[str, float] = {}
        for pid, (command, parent, last) in self._last.items():
            if pid in self._first and pid not in without and parent not in without:
                used[command] = used.get(command, 0.0) + last - self._first[pid]
        return used
