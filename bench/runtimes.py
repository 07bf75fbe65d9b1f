"""Wall time of a container under runc vs runsc (gVisor), with dockguard's run flags, for a few
workloads; optionally also of whole dockguard jobs under each. Prints tables; asserts nothing.

    .venv/bin/python bench/runtimes.py [--repeat 5] [--jobs 5] [--cases reference,cpu,...]

Needs the engine's runtime `runsc` (`scripts/gvisor.sh` installs and registers it) and
busybox:latest. Each timed run is one `docker run` (create, start, attach, wait: what a job's
run stage pays the engine, less the `/data` volume and holder) with the flags
`hardening.container_config` gives a run (read-only root, no capabilities, no-new-privileges,
user 1000:1000, network none, memory = memory+swap 576 MiB, 1 CPU, 128 pids, ulimits core 0,
nofile 1024, fsize 256 MiB, private IPC, a 1 MiB log, a 64 MiB noexec tmpfs /tmp) and a 64 MiB
tmpfs at /data owned by the user in place of dockguard's tmpfs volume; the container is removed
afterwards, outside the timing. Cases (the counts are options):
- `reference`: the reference job's container: writes {"perf": 0.87} to /data/perf.json;
- `cpu`: a shell loop counting to `--cpu-loops` (no system calls: user-space CPU);
- `syscalls`: `dd bs=1` of `--syscall-bytes` bytes from /dev/zero to /dev/null (two tiny system
  calls per byte: what gVisor intercepts);
- `exec`: `--execs` fork+exec of /bin/true (process creation: what builds do all the time).
Each round runs every case under each runtime in turn (runc first in odd rounds, runsc first in
even ones), so that the machine's noise touches both alike; one untimed warm-up round first
checks each container's output. `work` is a case's median minus the reference's median under
the same runtime: an estimate of the workload alone, without the container's start and stop.

`--jobs N` (default 5; 0: skip) also runs N rounds of whole jobs through two dockguard stacks
started side by side (harness.Stack: a private redis-server and `dockguard serve` with its
in-process worker each), one with `DOCKGUARD_RUNTIME` unset (runc), one with
`DOCKGUARD_RUNTIME=runsc`: for each of `--job-cases` (default reference, cpu, syscalls) a job
whose run is that workload and then writes perf.json. Each prints the job's wall time (submit to
seen ended), its run stage (the worker's `dockguard_stage_duration_seconds{stage="run"}`: holder,
container, result and cleanup) and the container's own duration; the same Dockerfile per case
each time (after a warm-up job, its Trivy scan comes from the cache: the difference is the
run's). A job that fails prints its error code and message instead of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from harness import Stack, loadavg, machine, stage_totals, submit, wait_job, workdir

IMAGE = "busybox:latest"
LABEL = "dockguard.bench=gvisor"  # every container this creates; removed after each run
RUNTIMES = ("runc", "runsc")
RESULT = '{"perf": 0.87}'
DOCKER_TIMEOUT_S = 300
# dockguard's defaults (settings.py): memory 512 MiB + /data 64 MiB, 1 CPU, 128 pids…
MIB = 1024 * 1024
RUN_FLAGS = (
    "--network", "none", "--read-only", "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges:true", "--user", "1000:1000",
    "--memory", f"{576 * MIB}", "--memory-swap", f"{576 * MIB}", "--cpus", "1",
    "--pids-limit", "128", "--ipc", "private", "--restart", "no",
    "--ulimit", "core=0:0", "--ulimit", "nofile=1024:1024",
    "--ulimit", f"fsize={256 * MIB}:{256 * MIB}",
    "--log-driver", "json-file", "--log-opt", "max-size=1m", "--log-opt", "max-file=1",
    "--tmpfs", "/tmp:rw,nosuid,nodev,noexec,size=64m",
    "--tmpfs", "/data:rw,nosuid,nodev,size=64m,uid=1000,gid=1000,mode=0700",
    "--label", LABEL,
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    cmd: tuple[str, ...]
    check: Callable[[str], bool]  # on the warm-up's output


def cases(cpu_loops: int, syscall_bytes: int, execs: int) -> dict[str, Case]:
    loop = "i=0; while [ $i -lt {n} ]; do {body}i=$((i+1)); done; echo done $i"
    return {
        case.name: case
        for case in (
            Case(
                "reference",
                "writes perf.json to /data",
                ("sh", "-c", f"echo '{RESULT}' > /data/perf.json && cat /data/perf.json"),
                lambda out: json.loads(out) == json.loads(RESULT),
            ),
            Case(
                "cpu",
                f"shell loop to {cpu_loops:,}",
                ("sh", "-c", loop.format(n=cpu_loops, body="")),
                lambda out: out.strip() == f"done {cpu_loops}",
            ),
            Case(
                "syscalls",
                f"dd bs=1 count={syscall_bytes:,}",
                ("sh", "-c", f"dd if=/dev/zero of=/dev/null bs=1 count={syscall_bytes} 2>&1"),
                lambda out: f"{syscall_bytes}+0 records out" in out,
            ),
            Case(
                "exec",
                f"{execs:,} fork+exec of /bin/true",
                ("sh", "-c", loop.format(n=execs, body="/bin/true; ")),
                lambda out: out.strip() == f"done {execs}",
            ),
        )
    }


def docker(*args: str, timeout_s: float = DOCKER_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def engine_runtimes() -> dict[str, Any]:
    answer = docker("info", "--format", "{{json .Runtimes}}", timeout_s=30)
    found: dict[str, Any] = json.loads(answer.stdout or "{}")
    return found


def run_once(case: Case, runtime: str) -> tuple[float, str]:
    """One `docker run` of the case under `runtime`: its wall time (s) and its output."""
    name = f"bench-gvisor-{uuid.uuid4().hex[:12]}"
    try:
        started = time.perf_counter()
        done = docker("run", "--name", name, "--runtime", runtime, *RUN_FLAGS, IMAGE, *case.cmd)
        elapsed = time.perf_counter() - started
    finally:
        docker("rm", "-f", name, timeout_s=60)
    if done.returncode != 0:
        raise RuntimeError(
            f"{case.name} under {runtime} exited {done.returncode}: "
            f"{(done.stderr or done.stdout)[-500:]}"
        )
    return elapsed, done.stdout


def run_cases(chosen: Sequence[Case], repeat: int) -> dict[tuple[str, str], list[float]]:
    for case in chosen:  # warm-up: the page cache, runsc's binary; and the outputs are right
        for runtime in RUNTIMES:
            _, out = run_once(case, runtime)
            if not case.check(out):
                raise RuntimeError(f"{case.name} under {runtime} printed {out[-300:]!r}")
    times: dict[tuple[str, str], list[float]] = {}
    for round_ in range(1, repeat + 1):
        print(f"  round {round_}: load average {loadavg()}", flush=True)
        order = RUNTIMES if round_ % 2 else tuple(reversed(RUNTIMES))
        for case in chosen:
            for runtime in order:
                elapsed, _ = run_once(case, runtime)
                times.setdefault((case.name, runtime), []).append(elapsed)
    return times


def print_cases(chosen: Sequence[Case], times: dict[tuple[str, str], list[float]]) -> None:
    median = {key: statistics.median(values) for key, values in times.items()}
    header = (
        f"{'case':<10} {'workload':<30} {'runc med':>9} {'min':>7} {'runsc med':>10} "
        f"{'min':>7} {'ratio':>7} {'runc work':>10} {'runsc work':>11} {'ratio':>7}"
    )
    print()
    print(f"docker run wall time, s (median and min of {len(next(iter(times.values())))})")
    print(header)
    print("-" * len(header))
    for case in chosen:
        runc, runsc = (case.name, "runc"), (case.name, "runsc")
        ratio = median[runsc] / median[runc]
        cells = (
            f"{case.name:<10} {case.what:<30} {median[runc]:>9.2f} {min(times[runc]):>7.2f} "
            f"{median[runsc]:>10.2f} {min(times[runsc]):>7.2f} {ratio:>6.2f}x"
        )
        if case.name != "reference" and ("reference", "runc") in median:
            work_runc = median[runc] - median[("reference", "runc")]
            work_runsc = median[runsc] - median[("reference", "runsc")]
            work_ratio = f"{work_runsc / work_runc:>6.2f}x" if work_runc > 0.01 else f"{'-':>7}"
            cells += f" {work_runc:>10.2f} {work_runsc:>11.2f} {work_ratio}"
        print(cells)
    print("ratio: runsc median / runc median; work: the case's median minus the reference's")


# --- whole jobs ----------------------------------------------------------------------------------


@dataclass
class JobSeries:
    case: str
    runtime: str
    stack: Stack
    totals: list[float] = field(default_factory=list)
    run_stage: list[float] = field(default_factory=list)  # /metrics: the `run` stage
    ran: list[float] = field(default_factory=list)  # the job record: the container itself
    failures: list[str] = field(default_factory=list)


def job_dockerfile(case: Case) -> str:
    """A job whose run is the case's workload, then writes the result (the reference case
    writes it itself)."""
    script = case.cmd[2]
    if case.name != "reference":
        script = f"{script} > /dev/null && echo '{RESULT}' > /data/perf.json"
    return (
        f"FROM {IMAGE}\n# bench-runtimes-{case.name}\nUSER 1000\n"
        f"CMD {json.dumps(['sh', '-c', script])}\n"
    )


async def one_job(client: httpx.AsyncClient, series: JobSeries, dockerfile: str) -> None:
    base_url = series.stack.base_url
    before = await asyncio.to_thread(stage_totals, base_url)
    job_id, sent = await submit(client, dockerfile)
    job, seen = await wait_job(client, job_id)
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        series.failures.append(
            f"job {job_id} {job['status']}: {error.get('code')}: {error.get('message')}"
        )
        return
    after = await asyncio.to_thread(stage_totals, base_url)
    series.totals.append(seen - sent)
    series.run_stage.append(after["run"][0] - before.get("run", (0.0, 0.0))[0])
    series.ran.append(float(job["run"]["duration_s"]))


async def run_jobs(
    stacks: dict[str, Stack], job_cases: Sequence[Case], jobs: int
) -> list[JobSeries]:
    all_series = [
        JobSeries(case.name, runtime, stack)
        for case in job_cases
        for runtime, stack in stacks.items()
    ]
    dockerfiles = {case.name: job_dockerfile(case) for case in job_cases}
    clients = {r: httpx.AsyncClient(base_url=s.base_url, timeout=300) for r, s in stacks.items()}
    try:
        for series in all_series:  # warm-up: fills the scan cache; not counted
            await one_job(clients[series.runtime], series, dockerfiles[series.case])
            for figures in (series.totals, series.run_stage, series.ran):
                figures.clear()
        # A series whose warm-up failed is not tried again: once is enough to say why.
        running = [s for s in all_series if not s.failures]
        for round_ in range(1, jobs + 1):
            print(f"  job round {round_}: load average {loadavg()}", flush=True)
            for series in running if round_ % 2 else list(reversed(running)):
                await one_job(clients[series.runtime], series, dockerfiles[series.case])
    finally:
        for client in clients.values():
            await client.aclose()
    return all_series


def print_jobs(all_series: list[JobSeries], job_cases: Sequence[Case]) -> None:
    print()
    print("dockguard jobs (scan cached), s: median / min")
    header = (
        f"{'case':<10} {'runtime':<8} {'jobs':>4} {'job total':>13} {'run stage':>13} "
        f"{'container':>13}"
    )
    print(header)
    print("-" * len(header))
    for s in all_series:
        if not s.totals:
            print(f"{s.case:<10} {s.runtime:<8} {0:>4}  no job succeeded")
            continue
        cells = " ".join(
            f"{statistics.median(v):>6.2f} /{min(v):>5.2f}" for v in (s.totals, s.run_stage, s.ran)
        )
        print(f"{s.case:<10} {s.runtime:<8} {len(s.totals):>4} {cells}")
    by = {(s.case, s.runtime): s for s in all_series}
    for case in job_cases:
        runc, runsc = by[(case.name, "runc")], by[(case.name, "runsc")]
        if runc.totals and runsc.totals:
            total = statistics.median(runsc.totals) / statistics.median(runc.totals)
            stage = statistics.median(runsc.run_stage) / statistics.median(runc.run_stage)
            print(
                f"{case.name}: runsc / runc (medians): job total {total:.2f}x, "
                f"run stage {stage:.2f}x"
            )
    for s in all_series:
        for failure in s.failures[:3]:
            print(f"{s.case} under {s.runtime}: {failure}")


def jobs_under_runtimes(job_cases: Sequence[Case], jobs: int) -> None:
    """Two dockguard stacks side by side, runc's and runsc's, and the cases' jobs on each."""
    with workdir("dockguard-bench-runtimes-") as work:
        stacks: dict[str, Stack] = {}
        all_series: list[JobSeries] = []
        try:
            for runtime in RUNTIMES:
                settings = {} if runtime == "runc" else {"DOCKGUARD_RUNTIME": runtime}
                (work / runtime).mkdir()
                stack = Stack(work / runtime, settings=settings)
                stacks[runtime] = stack
                stack.start_redis()
                stack.start_api(worker=True)
            all_series = asyncio.run(run_jobs(stacks, job_cases, jobs))
        finally:
            for stack in stacks.values():
                stack.stop()
        print_jobs(all_series, job_cases)


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="rounds per case (default 5)")
    parser.add_argument("--cases", default="reference,cpu,syscalls,exec")
    parser.add_argument("--cpu-loops", type=int, default=1_500_000)
    parser.add_argument("--syscall-bytes", type=int, default=50_000)
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=5, help="dockguard job rounds (0: skip)")
    parser.add_argument(
        "--job-cases", default="reference,cpu,syscalls", help="the cases run as whole jobs"
    )
    args = parser.parse_args()
    known = cases(args.cpu_loops, args.syscall_bytes, args.execs)
    wanted = [name.strip() for name in args.cases.split(",") if name.strip()]
    job_wanted = [name.strip() for name in args.job_cases.split(",") if name.strip()]
    unknown = [name for name in (*wanted, *job_wanted) if name not in known]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    runtimes = engine_runtimes()
    if "runsc" not in runtimes:
        raise SystemExit(
            f"the engine has no runtime runsc (it has {', '.join(runtimes) or 'none'}): "
            "run scripts/gvisor.sh first"
        )
    for line in machine():
        print(line)
    print(f"runsc: {runtimes['runsc']}")
    chosen = [known[name] for name in wanted]
    if chosen:
        times = run_cases(chosen, args.repeat)
        print_cases(chosen, times)
    if args.jobs > 0:
        jobs_under_runtimes([known[name] for name in job_wanted], args.jobs)
    print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
