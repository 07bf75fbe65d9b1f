"""Wall time of one happy-path job through dockguard vs the same steps by hand with the `trivy`
and `docker` CLIs, on this machine. Prints a table; asserts nothing.

    .venv/bin/python bench/pipeline.py [--runs 5]

dockguard runs as `dockguard serve` (API + in-process worker + private redis-server) on a free
loopback port, with a freshly generated vulnerability DB so the image scan runs as in
production. Series:
- `cold`: every Dockerfile is new (a nonce comment), so nothing comes from the scan cache;
- `cached`: the same Dockerfile again, so its Trivy scan comes from the cache;
- `by hand`: `trivy config`, `docker build`, `docker save` + `trivy image`, a `docker build` for
  /data ownership, `docker run` with the same sandbox flags, `docker cp` of perf.json, and the
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
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.trivydb import write_db  # the test suite's DB generator

TEMPLATE = r"""FROM busybox:latest
# {nonce}
USER 1000
CMD ["sh", "-c", "echo '{{\"perf\": 0.87}}' > /data/perf.json"]
"""
TERMINAL = {"succeeded", "failed", "rejected", "cancelled"}
BIN = Path(sys.executable).parent
STEPS = ("total", "scan", "build", "image_scan", "run")
OFFLINE = (
    "--skip-db-update", "--skip-java-db-update", "--offline-scan", "--skip-version-check",
    "--disable-telemetry", "--cache-backend", "memory", "--quiet", "--format", "json",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def through_dockguard(client: httpx.Client, dockerfile: str) -> dict[str, float]:
    started = time.perf_counter()
    job = client.post("/v1/jobs", content=dockerfile, headers={"Content-Type": "text/plain"}).json()
    while job["status"] not in TERMINAL:
        time.sleep(0.01)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    total = time.perf_counter() - started
    assert job["status"] == "succeeded", job["error"]
    return {
        "total": total,
        "scan": job["scan"]["dockerfile"]["duration_s"],
        "build": job["build"]["duration_s"],
        "image_scan": job["scan"]["image"]["duration_s"],
        "run": job["run"]["duration_s"],
    }


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def by_hand(workdir: Path, db: Path) -> dict[str, float]:
    name = uuid.uuid4().hex
    context = workdir / name
    (context / "data").mkdir(parents=True)
    (context / "Dockerfile").write_text(TEMPLATE.format(nonce=name))
    times: dict[str, float] = {}
    started = mark = time.perf_counter()

    def step(key: str) -> None:
        nonlocal mark
        times[key] = time.perf_counter() - mark
        mark = time.perf_counter()

    trivy = str(BIN / "trivy")
    sh(trivy, "config", "--format", "json", "--quiet", "--skip-check-update",
       "--cache-backend", "memory", "--cache-dir", str(workdir / "cache"),
       str(context))  # fmt: skip
    step("scan")
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
    step("build")
    sh("docker", "save", "-o", str(context / "image.tar"), f"bench/{name}:build")
    sh(trivy, "image", "--input", str(context / "image.tar"), "--cache-dir", str(db), *OFFLINE)
    step("image_scan")
    final = context / "Dockerfile.final"
    final.write_text(f"FROM bench/{name}:build\nCOPY --chown=1000:1000 data /data\n")
    sh("docker", "build", "-q", "--no-cache", "--network", "none", "-f", str(final),
       "-t", f"bench/{name}:final", str(context))  # fmt: skip
    sh("docker", "volume", "create", f"bench-{name}")
    mark = time.perf_counter()
    sh("docker", "run", "--name", f"bench-{name}", "--network", "none", "--read-only",
       "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--user", "1000:1000",
       "--memory", "512m", "--memory-swap", "512m", "--cpus", "1", "--pids-limit", "128",
       "--tmpfs", "/tmp:rw,nosuid,nodev,noexec,size=64m", "-v", f"bench-{name}:/data",
       f"bench/{name}:final")  # fmt: skip
    step("run")
    sh("docker", "cp", f"bench-{name}:/data/perf.json", str(context / "perf.json"))
    sh("docker", "rm", "-f", f"bench-{name}")
    sh("docker", "volume", "rm", f"bench-{name}")
    sh("docker", "rmi", f"bench/{name}:final", f"bench/{name}:build")
    times["total"] = time.perf_counter() - started
    return times


def summarize(label: str, runs: list[dict[str, float]]) -> float:
    median = {key: statistics.median(r[key] for r in runs) for key in STEPS}
    cells = "  ".join(f"{key} {median[key]:5.2f}s" for key in STEPS)
    print(f"{label:<18} median of {len(runs)}: {cells}")
    return median["total"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-bench-"))
    db = workdir / "trivy"
    write_db(db, [], updated_at=datetime.now(UTC))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKGUARD_")}
    env.update(
        DOCKGUARD_LOG_LEVEL="WARNING",
        DOCKGUARD_SCANNER_CACHE_DIR=str(db),
        DOCKGUARD_SCANNER_DB_REFRESH_H="0",
    )
    port = free_port()
    server = subprocess.Popen([str(BIN / "dockguard"), "serve", "--port", str(port)], env=env)
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
            repeated = TEMPLATE.format(nonce="repeated")
            through_dockguard(client, repeated)  # warm-up; fills the cache for `cached`
            cold = [
                through_dockguard(client, TEMPLATE.format(nonce=uuid.uuid4().hex))
                for _ in range(args.runs)
            ]
            cached = [through_dockguard(client, repeated) for _ in range(args.runs)]
        by_hand(workdir, db)  # warm-up
        manual = [by_hand(workdir, db) for _ in range(args.runs)]
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    ours = summarize("dockguard, cold", cold)
    summarize("dockguard, cached", cached)
    theirs = summarize("by hand", manual)
    print(f"overhead of dockguard, cold (median total difference): {ours - theirs:+.2f}s")


if __name__ == "__main__":
    main()
