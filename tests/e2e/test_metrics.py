"""`/metrics` (Prometheus text format) through real HTTP: every family is exposed, the job, stage
and HTTP counters move when a job runs, no label carries a job id or a path; and a standalone
`dockguard worker` serves its own metrics and beats its heartbeat."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from dockguard.store.workers import Heartbeats
from tests.e2e.conftest import WORKER_DB, Dockguard, Instances, _free_socket

FAMILIES = {
    "dockguard_http_requests": "counter",
    "dockguard_http_request_duration_seconds": "histogram",
    "dockguard_jobs": "counter",
    "dockguard_stage_duration_seconds": "histogram",
    "dockguard_jobs_in_progress": "gauge",
    "dockguard_queue_depth": "gauge",
    "dockguard_queue_oldest_age_seconds": "gauge",
    "dockguard_sandbox_kills": "counter",
    "dockguard_scan_cache_hits": "counter",
    "dockguard_sweeper_removed": "counter",
    "dockguard_scanner_db_age_seconds": "gauge",
    "dockguard_workers_alive": "gauge",
    "dockguard_queue_wait_seconds": "histogram",
    "dockguard_orphans_removed": "counter",
}
SCRIPT = "echo '{\"perf\": 1}' > /data/perf.json"
HAPPY = f"FROM busybox:latest\nUSER 1000\nCMD {json.dumps(['sh', '-c', SCRIPT])}\n"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(dg: Dockguard) -> str:
    answer = await dg.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return answer.text


async def test_every_family_is_exposed_and_the_counters_move(dockguard: Dockguard) -> None:
    text = await scrape(dockguard)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert {name: families.get(name) for name in FAMILIES} == FAMILIES
    before = samples(text)
    job = await dockguard.run(HAPPY)
    assert job["status"] == "succeeded"
    after = samples(await scrape(dockguard))
    assert value(after, "dockguard_jobs_total", status="succeeded", code="none") >= (
        value(before, "dockguard_jobs_total", status="succeeded", code="none") + 1
    )
    for stage in ("scan", "build", "image_scan", "prepare", "run", "collect", "cleanup"):
        count = "dockguard_stage_duration_seconds_count"
        assert value(after, count, stage=stage) >= value(before, count, stage=stage) + 1, stage
    waited = "dockguard_queue_wait_seconds_count"
    assert value(after, waited) >= value(before, waited) + 1
    posted = {"route": "/v1/jobs", "method": "POST", "status": "202"}
    assert value(after, "dockguard_http_requests_total", **posted) >= (
        value(before, "dockguard_http_requests_total", **posted) + 1
    )
    read = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "200"}
    assert value(after, "dockguard_http_requests_total", **read) > 0
    assert value(after, "dockguard_scanner_db_age_seconds") > 0  # the test DB is an hour old
    assert value(after, "dockguard_workers_alive") >= 1  # the instance's own worker
    labels = {v for (_, pairs) in after for _, v in pairs}
    assert job["id"] not in "".join(labels) and not any(v.startswith("/v1/jobs/0") for v in labels)


async def test_an_unknown_method_is_one_bounded_label(dockguard: Dockguard) -> None:
    refused = await dockguard.client.request("BREW", "/v1/jobs")
    # An unknown method: the HTTP parser (httptools) refuses it, with a problem document.
    assert refused.status_code == 400 and refused.json()["code"] == "request_invalid"
    found = samples(await scrape(dockguard))
    methods = {
        dict(pairs).get("method")
        for (name, pairs) in found
        if name.startswith("dockguard_http_requests")
    }
    assert "BREW" not in methods and "OTHER" in methods


async def test_a_standalone_worker_serves_its_metrics_and_beats(
    redis_port: int, trivy_db: Path
) -> None:
    with _free_socket() as sock:
        port = sock.getsockname()[1]
    redis_url = f"redis://127.0.0.1:{redis_port}/{WORKER_DB}"
    env = {
        **os.environ,
        "DOCKGUARD_REDIS_URL": redis_url,
        "DOCKGUARD_WORKER_METRICS_PORT": str(port),
        "DOCKGUARD_SCANNER_CACHE_DIR": str(trivy_db),
        "DOCKGUARD_SCANNER_DB_REFRESH_H": "0",
        "DOCKGUARD_BUILD_NETWORK": "none",
        "DOCKGUARD_LOG_FORMAT": "text",
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dockguard", "worker", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    redis = Redis.from_url(redis_url)
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    answer = await client.get(f"http://127.0.0.1:{port}/metrics")
                    break
                except httpx.ConnectError:
                    assert worker.returncode is None, "the worker exited"
                    assert time.monotonic() < deadline, "no metrics endpoint"
                    await asyncio.sleep(0.1)
        assert answer.status_code == 200
        families = {f.name for f in text_string_to_metric_families(answer.text)}
        assert {"dockguard_jobs_in_progress", "dockguard_stage_duration_seconds"} <= families
        while await Heartbeats(redis).alive() < 1:  # it beats into its Redis at start
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.1)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, errors = await worker.communicate()
        await redis.aclose()
    assert worker.returncode == 0, errors.decode()[-2000:]
    redis = Redis.from_url(redis_url)
    try:
        assert await Heartbeats(redis).alive() == 0  # a clean stop forgets it at once
    finally:
        await redis.aclose()


async def test_the_api_metrics_port_serves_the_metrics_and_nothing_else(
    instances: Instances,
) -> None:
    with _free_socket() as sock:
        port = sock.getsockname()[1]
    dg = await instances.get(api_metrics_port=port, run_worker=False)
    queued = await dg.submit(HAPPY)  # no worker here: it stays in the queue
    assert queued.status_code == 202, queued.text
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as side:
        answer = await side.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(answer.text)
        assert {f.name for f in text_string_to_metric_families(answer.text)} >= set(FAMILIES)
        # The same metrics as the API's port, the gauges read from Redis at the scrape.
        depth = value(found, "dockguard_queue_depth")
        assert depth >= 1
        assert value(samples(await scrape(dg)), "dockguard_queue_depth") == depth
        # Nothing of the API: a client let through to this port can only scrape.
        job_path = f"/v1/jobs/{queued.json()['id']}"
        for path in ("/v1/jobs", job_path, "/healthz", "/readyz", "/docs", "/openapi.json"):
            assert (await side.get(path)).status_code == 404, path
        submit = await side.post("/v1/jobs", content=HAPPY)
        assert submit.status_code == 404
        assert (await side.delete(job_path)).status_code == 404
        assert (await side.post("/metrics")).status_code == 405
    assert (await dg.client.get(job_path)).json()["status"] == "queued"  # nothing cancelled it
