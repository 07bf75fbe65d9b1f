"""Resident memory (VmRSS) of the API and of a worker process: idle, over N jobs, and while a
container prints about 1 MB/s of logs. Prints the series; asserts nothing.

    .venv/bin/python bench/memory.py [--jobs 1000] [--every 50] [--flood-s 20] [--cold]
    bash bench/all.sh        # every benchmark, this one included

The stack: a private redis-server, `dockguard serve --no-worker` and one `dockguard worker`
(`DOCKGUARD_WORKER_CONCURRENCY` at its default, 4), a generated Trivy DB (so the image scan
runs), JSON logs at INFO to files, `DOCKGUARD_BUILD_NETWORK=none`. RSS is VmRSS from
/proc/<pid>/status of each process (redis-server's too: it keeps every job until its TTL).

1. idle: 5 s after the worker's heartbeat is seen;
2. jobs: N trivial jobs (busybox, writes perf.json; the same Dockerfile, so its scan comes from
   the cache after the first: `--cold` makes each one new), submitted `--every` at a time and
   long-polled to their end; RSS after each batch. The slope is a least-squares fit, in MB per
   100 jobs; a leak shows as a slope that does not fall as N grows;
3. log flood: one job whose container prints 10,000 lines of 100 bytes, sleeps 1 s, `--flood-s`
   times over, while a client follows its log stream (`GET /v1/jobs/{id}/logs`, SSE); RSS every
   second. The worker's line buffers, the Redis stream (`DOCKGUARD_LOG_MAX_LINES`) and the API's
   stream are bounded, so the series should be flat once the flood runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field

import httpx
from harness import TRIVIAL, Stack, loadavg, machine, rss_kb, submit, wait_job, workdir

LINE = "x" * 99  # + newline: 100 bytes a line
FLOOD = """FROM busybox:latest
USER 1000
CMD {cmd}
"""
SCRIPT = (
    "i=0; while [ $i -lt {seconds} ]; do yes {line} | head -n 10000; sleep 1; i=$((i+1)); done; "
    "echo '{{\"perf\": 1}}' > /data/perf.json"
)
IDLE_S = 5


@dataclass
class Sample:
    at: float  # jobs done, or seconds into the flood
    api_kb: int
    worker_kb: int
    redis_kb: int
    load: str


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def take(self, stack: Stack, at: float) -> Sample:
        pids = stack.pids
        sample = Sample(
            at, rss_kb(pids["api"]), rss_kb(pids["worker"]), rss_kb(pids["redis"]), loadavg()
        )
        self.samples.append(sample)
        return sample


def slope_mb(xs: list[float], ys: list[int], per: float) -> float:
    """Least-squares slope of ys (kB) over xs, in MB per `per` of x."""
    if len(xs) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope * per / 1024


async def jobs(stack: Stack, total: int, every: int, cold: bool, series: Series) -> int:
    """Run `total` jobs `every` at a time; RSS after each batch. Returns how many failed."""
    failed = 0
    async with httpx.AsyncClient(
        base_url=stack.base_url, timeout=120, limits=httpx.Limits(max_connections=every + 10)
    ) as client:
        done = 0
        while done < total:
            batch = min(every, total - done)
            dockerfiles = [
                TRIVIAL.format(nonce=uuid.uuid4().hex if cold else "memory") for _ in range(batch)
            ]
            submitted = await asyncio.gather(*(submit(client, d) for d in dockerfiles))
            ended = await asyncio.gather(*(wait_job(client, job_id) for job_id, _ in submitted))
            failed += sum(job["status"] != "succeeded" for job, _ in ended)
            done += batch
            sample = series.take(stack, done)
            print(
                f"  {done:>5} jobs: api {sample.api_kb / 1024:6.1f} MB, worker "
                f"{sample.worker_kb / 1024:6.1f} MB (load {sample.load})",
                flush=True,
            )
    return failed


async def follow(client: httpx.AsyncClient, job_id: str) -> int:
    """Read the job's SSE log stream to its end; the bytes received."""
    received = 0
    headers = {"Accept": "text/event-stream"}
    async with client.stream("GET", f"/v1/jobs/{job_id}/logs", headers=headers) as answer:
        async for chunk in answer.aiter_bytes():
            received += len(chunk)
    return received


async def flood(stack: Stack, seconds: int, series: Series) -> tuple[dict[str, object], int]:
    """The log-flood job, RSS every second while it runs; the job and the SSE bytes read."""
    script = SCRIPT.format(seconds=seconds, line=LINE)
    dockerfile = FLOOD.format(cmd=json.dumps(["sh", "-c", script]))
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
        job_id, _ = await submit(client, dockerfile)
        follower = asyncio.create_task(follow(client, job_id))
        waiter = asyncio.create_task(wait_job(client, job_id))
        started = time.monotonic()
        while not waiter.done():
            series.take(stack, round(time.monotonic() - started))
            await asyncio.wait({waiter}, timeout=1)
        job, _ = await waiter
        received = await asyncio.wait_for(follower, timeout=30)
        stored = await client.get(f"/v1/jobs/{job_id}/logs")
        job["stored_lines"] = stored.text.count("\n")
    return job, received


def print_series(title: str, unit: str, series: Series) -> None:
    print()
    print(title)
    print(f"{unit:>8} {'api MB':>8} {'worker MB':>10} {'redis MB':>9}  load average")
    for s in series.samples:
        print(
            f"{s.at:>8g} {s.api_kb / 1024:>8.1f} {s.worker_kb / 1024:>10.1f} "
            f"{s.redis_kb / 1024:>9.1f}  {s.load}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the series (default 1000)")
    parser.add_argument("--every", type=int, default=50, help="jobs per batch and sample")
    parser.add_argument("--flood-s", type=int, default=20, help="seconds of ~1 MB/s output")
    parser.add_argument("--cold", action="store_true", help="a new Dockerfile for every job")
    args = parser.parse_args()
    for line in machine():
        print(line)
    idle, over_jobs, flooding = Series(), Series(), Series()
    with workdir("dockguard-bench-memory-") as work:
        stack = Stack(work)
        try:
            stack.start_redis()
            stack.start_api(worker=False)
            stack.start_worker("worker", 4)
            time.sleep(IDLE_S)
            idle.take(stack, 0)
            print(f"jobs, {args.every} at a time:")
            over_jobs.take(stack, 0)
            failed = asyncio.run(jobs(stack, args.jobs, args.every, args.cold, over_jobs))
            job, received = asyncio.run(flood(stack, args.flood_s, flooding))
        finally:
            stack.stop()
    first = idle.samples[0]
    print()
    print(
        f"idle: api {first.api_kb / 1024:.1f} MB, worker {first.worker_kb / 1024:.1f} MB, "
        f"redis {first.redis_kb / 1024:.1f} MB (load {first.load})"
    )
    print_series(f"RSS over {args.jobs} jobs ({failed} did not succeed)", "jobs", over_jobs)
    xs = [s.at for s in over_jobs.samples]
    for name, key in (("api", "api_kb"), ("worker", "worker_kb"), ("redis", "redis_kb")):
        ys = [getattr(s, key) for s in over_jobs.samples]
        tail = [getattr(s, key) for s in over_jobs.samples if s.at >= args.jobs / 2]
        print(
            f"slope {name}: {slope_mb(xs, ys, 100):+.2f} MB per 100 jobs over all, "
            f"{slope_mb(xs[-len(tail) :], tail, 100):+.2f} over the second half"
        )
    print_series(
        f"RSS during the log flood (job {job['status']}; SSE client read "
        f"{received / 1e6:.1f} MB; {job['stored_lines']} lines kept in Redis)",
        "second",
        flooding,
    )
    running = [s for s in flooding.samples if 3 <= s.at <= args.flood_s]
    for name, key in (("api", "api_kb"), ("worker", "worker_kb")):
        values = [getattr(s, key) / 1024 for s in running]
        if values:
            print(
                f"{name} during the flood (s 3-{args.flood_s}): min {min(values):.1f} MB, "
                f"max {max(values):.1f} MB, slope "
                f"{slope_mb([s.at for s in running], [getattr(s, key) for s in running], 1):+.3f} "
                "MB/s"
            )


if __name__ == "__main__":
    main()
