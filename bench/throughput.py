"""Jobs per minute of trivial jobs submitted all at once, by worker configuration, and where the
CPU went. Prints a table; asserts nothing.

    .venv/bin/python bench/throughput.py [--jobs 100] [--configs 1x1,1x2,1x4,2x4] [--cached]
    bash bench/all.sh        # every benchmark, this one included

Each configuration `PxS` gets a fresh stack: a private redis-server, `dockguard serve
--no-worker` and P `dockguard worker` processes with `DOCKGUARD_WORKER_CONCURRENCY=S`, a
generated Trivy DB (so the image scan runs), JSON logs at INFO to files,
`DOCKGUARD_BUILD_NETWORK=none`. The N jobs (busybox, `USER 1000`, writes perf.json) are POSTed
concurrently, then long-polled (`GET /v1/jobs/{id}?wait=60`) until every one has ended.
Each Dockerfile is new (a nonce comment), so every job runs its Trivy Dockerfile scan; with
`--cached` they are all the same Dockerfile, scanned once by a warm-up job first.

jobs/min: N over the client's window (first POST sent → last job seen ended). Scaling: over the
1x1 figure of the same run. CPU, in cores busy on average over the window (the machine has
`nproc` of them), from /proc/<pid>/stat: the workers (their own and their reaped children's:
`trivy` runs as a worker's child), the API, redis-server, dockerd and containerd; `machine` is
/proc/stat's busy time over all cores, `rest` what the listed processes do not explain (runc and
the containerd shims, the jobs' containers, and other work on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx
from harness import (
    TRIVIAL,
    Cpu,
    CpuByCommand,
    Stack,
    cpu,
    loadavg,
    machine,
    machine_busy_s,
    submit,
    wait_job,
    workdir,
)

# The engine's processes by command name (/proc/<pid>/comm is cut at 15 characters).
ENGINE = {
    "dockerd": ("dockerd",),
    "containerd": ("containerd",),
    "shims+runc": ("containerd-shim", "containerd-shi", "runc", "runc:[2:INIT]", "docker-init"),
}


@dataclass
class Outcome:
    config: str
    jobs: int
    window_s: float
    statuses: Counter[str]
    cores: dict[str, float]  # average cores busy over the window, by who
    load: str  # /proc/loadavg just before the jobs were submitted
    top_rest: list[tuple[str, float]]  # the busiest other commands: CPU s over the window

    @property
    def per_minute(self) -> float:
        return self.jobs / self.window_s * 60


def parse_config(value: str) -> tuple[int, int]:
    processes, _, slots = value.partition("x")
    return int(processes), int(slots)


def snapshot(pids: dict[str, list[int]]) -> dict[str, Cpu]:
    """CPU times of each group of processes, summed."""
    taken = {}
    for name, group in pids.items():
        readings = [cpu(pid) for pid in group]
        taken[name] = Cpu(sum(r.own_s for r in readings), sum(r.children_s for r in readings))
    return taken


async def run_jobs(stack: Stack, dockerfiles: list[str]) -> tuple[float, Counter[str]]:
    """Submit every Dockerfile at once, wait for every job; the client's window and statuses."""
    limits = httpx.Limits(max_connections=len(dockerfiles) + 10, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120, limits=limits) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        submitted = await asyncio.gather(*(submit(client, d) for d in dockerfiles))
        ended = await asyncio.gather(*(wait_job(client, job_id) for job_id, _ in submitted))
        window_s = loop.time() - started
    return window_s, Counter(job["status"] for job, _ in ended)


def measure(config: str, jobs: int, cached: bool) -> Outcome:
    processes, slots = parse_config(config)
    with workdir(f"dockguard-bench-throughput-{config}-") as work:
        stack = Stack(work)
        try:
            stack.start_redis()
            api = stack.start_api(worker=False)
            workers = [stack.start_worker(f"worker{i}", slots) for i in range(processes)]
            if cached:  # the scan cache holds the Dockerfile's verdict before the clock starts
                asyncio.run(run_jobs(stack, [TRIVIAL.format(nonce="cached")]))
            dockerfiles = [
                TRIVIAL.format(nonce="cached" if cached else uuid.uuid4().hex) for _ in range(jobs)
            ]
            ours = {"workers": workers, "api": [api], "redis": [stack.pids["redis"]]}
            load = loadavg()
            cpu_before, (busy_before, _) = snapshot(ours), machine_busy_s()
            with CpuByCommand() as sampled:
                window_s, statuses = asyncio.run(run_jobs(stack, dockerfiles))
            cpu_after, (busy_after, _) = snapshot(ours), machine_busy_s()
        finally:
            stack.stop()
    cores = {}
    for name in ours:
        before, after = cpu_before[name], cpu_after[name]
        cores[name] = (after.own_s - before.own_s) / window_s
        if name == "workers":
            cores["trivy"] = (after.children_s - before.children_s) / window_s
    # Ours and their children (trivy) are counted above, exactly.
    commands = sampled.by_command(without=[pid for group in ours.values() for pid in group])
    for name, group in ENGINE.items():
        cores[name] = sum(commands.pop(c, 0.0) for c in group) / window_s
    cores["machine"] = (busy_after - busy_before) / window_s
    cores["rest"] = cores["machine"] - sum(v for k, v in cores.items() if k != "machine")
    top = sorted(commands.items(), key=lambda item: -item[1])[:6]
    return Outcome(config, jobs, window_s, statuses, cores, load, top)


def report(outcomes: list[Outcome]) -> None:
    base = next((o.per_minute for o in outcomes if o.config == "1x1"), outcomes[0].per_minute)
    columns = list(outcomes[0].cores)
    print()
    header = (
        f"{'config':<6} {'jobs':>5} {'window s':>8} {'jobs/min':>8} {'scaling':>7} "
        + " ".join(f"{c.split(' ')[0]:>9}" for c in columns)
        + f"  {'load before':<14} statuses"
    )
    print("CPU columns: cores busy on average over the window")
    print(header)
    print("-" * len(header))
    for o in outcomes:
        cells = " ".join(f"{o.cores[c]:>9.2f}" for c in columns)
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(o.statuses.items()))
        print(
            f"{o.config:<6} {o.jobs:>5} {o.window_s:>8.1f} {o.per_minute:>8.1f} "
            f"{o.per_minute / base:>6.2f}x {cells}  {o.load:<14} {statuses}"
        )
    print("config PxS: P worker processes with S slots each; scaling: jobs/min over 1x1's")
    print("busiest other commands over each window (CPU s; the jobs' own are sh, sleep):")
    for o in outcomes:
        busiest = ", ".join(f"{command} {used:.1f}" for command, used in o.top_rest)
        print(f"  {o.config}: {busiest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100, help="jobs per configuration")
    parser.add_argument(
        "--configs",
        type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
        default=["1x1", "1x2", "1x4", "2x4"],
        help="comma-separated PROCESSESxSLOTS (default 1x1,1x2,1x4,2x4)",
    )
    parser.add_argument(
        "--cached", action="store_true", help="one Dockerfile for all: scans from the cache"
    )
    args = parser.parse_args()
    for config in args.configs:
        try:
            parse_config(config)
        except ValueError:
            parser.error(f"bad configuration {config!r}: use PROCESSESxSLOTS, e.g. 2x4")
    for line in machine():
        print(line)
    outcomes = []
    for config in args.configs:
        outcomes.append(measure(config, args.jobs, args.cached))
        done = outcomes[-1]
        print(f"  done: {config}: {done.per_minute:.1f} jobs/min ({done.load})", flush=True)
    report(outcomes)


if __name__ == "__main__":
    main()
