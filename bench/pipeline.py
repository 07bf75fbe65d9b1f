"""Wall time of one happy-path job through dockguard vs the same steps by hand with the `trivy`
and `docker` CLIs, on this machine. Prints a table; asserts nothing.

    .venv/bin/python bench/pipeline.py [--runs 5]

dockguard is started as `dockguard serve` (API + in-process worker + private redis-server) on a
free loopback port; the manual baseline runs `trivy config`, `docker build`, a `docker build`
for /data ownership, `docker run` with the same sandbox flags, `docker cp` of perf.json, and the
removals, one after the other.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

DOCKERFILE = r"""FROM busybox:latest
USER 1000
CMD ["sh", "-c", "echo '{\"perf\": 0.87}' > /data/perf.json"]
"""
TERMINAL = {"succeeded", "failed", "rejected", "cancelled"}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def through_dockguard(client: httpx.Client) -> dict[str, float]:
    started = time.perf_counter()
    job = client.post("/v1/jobs", content=DOCKERFILE, headers={"Content-Type": "text/plain"}).json()
    while job["status"] not in TERMINAL:
        time.sleep(0.02)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    total = time.perf_counter() - started
    assert job["status"] == "succeeded", job["error"]
    return {
        "total": total,
        "scan": job["scan"]["dockerfile"]["duration_s"],
        "build": job["build"]["duration_s"],
        "run": job["run"]["duration_s"],
    }


def sh(*args: str, **kwargs: object) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs).stdout  # type: ignore[call-overload]


def by_hand(workdir: Path) -> dict[str, float]:
    name = uuid.uuid4().hex
    context = workdir / name
    (context / "data").mkdir(parents=True)
    (context / "Dockerfile").write_text(DOCKERFILE)
    times: dict[str, float] = {}
    started = time.perf_counter()
    sh(str(BIN / "trivy"), "config", "--format", "json", "--quiet", "--skip-check-update",
       "--cache-backend", "memory", "--cache-dir", str(workdir / "trivy"),
       str(context))  # fmt: skip
    times["scan"] = time.perf_counter() - started
    mark = time.perf_counter()
    sh(
        "docker",
        "build",
        "-q",
        "--no-cache",
        "--force-rm",
        "-t",
        f"bench/{name}:build",
        str(context),
    )
    (context / "Dockerfile.final").write_text(
        f"FROM bench/{name}:build\nCOPY --chown=1000:1000 data /data\n"
    )
    sh("docker", "build", "-q", "--no-cache", "--network", "none",
       "-f", str(context / "Dockerfile.final"), "-t", f"bench/{name}:final",
       str(context))  # fmt: skip
    times["build"] = time.perf_counter() - mark
    mark = time.perf_counter()
    sh("docker", "volume", "create", f"bench-{name}")
    sh("docker", "run", "--name", f"bench-{name}", "--network", "none", "--read-only",
       "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--user", "1000:1000",
       "--memory", "512m", "--memory-swap", "512m", "--cpus", "1", "--pids-limit", "128",
       "--tmpfs", "/tmp:rw,nosuid,nodev,noexec,size=64m", "-v", f"bench-{name}:/data",
       f"bench/{name}:final")  # fmt: skip
    times["run"] = time.perf_counter() - mark
    sh("docker", "cp", f"bench-{name}:/data/perf.json", str(context / "perf.json"))
    sh("docker", "rm", "-f", f"bench-{name}")
    sh("docker", "volume", "rm", f"bench-{name}")
    sh("docker", "rmi", f"bench/{name}:final", f"bench/{name}:build")
    times["total"] = time.perf_counter() - started
    return times


def summarize(label: str, runs: list[dict[str, float]]) -> None:
    cells = "  ".join(
        f"{key} {statistics.median(r[key] for r in runs):6.2f}s"
        for key in ("total", "scan", "build", "run")
    )
    print(f"{label:<12} median of {len(runs)}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKGUARD_")}
    env["DOCKGUARD_LOG_LEVEL"] = "WARNING"
    server = subprocess.Popen([str(BIN / "dockguard"), "serve", "--port", str(port)], env=env)
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-bench-"))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "dockguard did not become ready"
                time.sleep(0.1)
            through_dockguard(client)  # warm-up: first Trivy run, connection pools
            ours = [through_dockguard(client) for _ in range(args.runs)]
        by_hand(workdir)
        manual = [by_hand(workdir) for _ in range(args.runs)]
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    summarize("dockguard", ours)
    summarize("by hand", manual)
    overhead = statistics.median(r["total"] for r in ours) - statistics.median(
        r["total"] for r in manual
    )
    print(f"overhead of dockguard (median total difference): {overhead:+.2f}s")


if __name__ == "__main__":
    main()
