"""The correlation id, followed through HTTP, the worker's log lines and the engine: a request's
`X-Request-ID` (or its `traceparent`'s trace id) comes back on the answer and in problem
documents, is recorded on the job it submits, is on every log line the worker writes for that
job and on the labels of the job's Docker objects; and each API call writes one log line."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import aiodocker
import pytest
import pytest_asyncio

from dockguard.sandbox import names
from tests.e2e.conftest import Dockguard, Instances

FAST: dict[str, Any] = {"run_timeout_s": 30, "build_timeout_s": 60, "build_network": "none"}
SCRIPT = "sleep 3; echo '{\"perf\": 1}' > /data/perf.json"
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SLOW = f"FROM busybox:latest\nUSER 1000\nCMD {json.dumps(['sh', '-c', SCRIPT])}\n"


@pytest_asyncio.fixture
async def dg(instances: Instances) -> Dockguard:
    return await instances.get(**FAST)


async def labels_while_running(docker: aiodocker.Docker, job_id: str) -> list[dict[str, str]]:
    """The labels of the job's container, volumes and image, read while its run goes on."""
    filters = names.label_filter(job_id)
    deadline = time.monotonic() + 60
    while True:
        containers = await docker.containers.list(filters=filters)
        if any(c["State"] == "running" and "-data-holder" not in c["Names"][0] for c in containers):
            break
        assert time.monotonic() < deadline, "the job's run never started"
        await asyncio.sleep(0.1)
    found = [c["Labels"] for c in containers]
    volumes = (await docker.volumes.list(filters=filters)).get("Volumes") or []
    found += [v["Labels"] for v in volumes]
    found += [i["Labels"] for i in await docker.images.list(filters=filters)]
    return found


async def test_a_request_id_follows_the_job_everywhere(
    dg: Dockguard, docker: aiodocker.Docker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    request_id = f"e2e-{uuid.uuid4()}"
    response = await dg.client.post(
        "/v1/jobs", content=SLOW, headers={"Content-Type": "text/plain", "X-Request-ID": request_id}
    )
    assert response.status_code == 202, response.text
    assert response.headers["X-Request-ID"] == request_id
    job = response.json()
    dg.submitted.append(job["id"])
    assert job["request_id"] == request_id
    labels = await labels_while_running(docker, job["id"])
    assert len(labels) >= 4  # run container, /data holder, /data volume, image
    assert all(found.get(names.REQUEST_LABEL) == request_id for found in labels), labels
    final = await dg.wait(job["id"])
    assert final["status"] == "succeeded" and final["request_id"] == request_id
    worker_lines = [
        r for r in caplog.records if getattr(r, "job_id", None) == job["id"]
        and not r.name.startswith("dockguard.api") and r.name != "dockguard.access"
    ]  # fmt: skip
    assert any(r.getMessage() == "job finished" for r in worker_lines)
    assert {getattr(r, "request_id", None) for r in worker_lines} == {request_id}
    access = [
        r for r in caplog.records
        if r.name == "dockguard.access" and getattr(r, "request_id", None) == request_id
    ]  # fmt: skip
    assert len(access) == 1
    line = access[0]
    assert (line.method, line.route, line.status, line.job_id) == (  # type: ignore[attr-defined]
        "POST",
        "/v1/jobs",
        202,
        job["id"],
    )
    assert line.duration_ms >= 0 and line.client.startswith("127.0.0.1:")  # type: ignore[attr-defined]


async def test_each_call_logs_its_route_template_not_its_path(
    dg: Dockguard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    missing = "0" * 32
    answer = await dg.client.get(f"/v1/jobs/{missing}", headers={"X-Request-ID": "look-me-up"})
    assert answer.status_code == 404
    assert answer.headers["X-Request-ID"] == "look-me-up"
    assert answer.json()["request_id"] == "look-me-up"  # in the problem document too
    (line,) = [r for r in caplog.records if getattr(r, "request_id", None) == "look-me-up"
               and r.name == "dockguard.access"]  # fmt: skip
    assert (line.route, line.status, line.job_id) == ("/v1/jobs/{job_id}", 404, missing)  # type: ignore[attr-defined]
    await dg.client.get("/no/such/" + "x" * 50, headers={"X-Request-ID": "unmatched-path"})
    (line,) = [r for r in caplog.records if getattr(r, "request_id", None) == "unmatched-path"
               and r.name == "dockguard.access"]  # fmt: skip
    assert line.route == "unmatched" and "x" * 50 not in line.getMessage()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": PARENT}, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ({"X-Request-ID": "given", "traceparent": PARENT}, "given"),
        ({"X-Request-ID": "x" * 65}, None),  # too long: a new one
        ({"X-Request-ID": "tab\there"}, None),
        ({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, None),
        ({"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}, None),
    ],
)  # fmt: skip
async def test_where_the_request_id_comes_from(
    dg: Dockguard, headers: dict[str, str], expected: str | None
) -> None:
    answer = await dg.client.get("/healthz", headers=headers)
    request_id = answer.headers["X-Request-ID"]
    if expected is None:
        assert len(request_id) == 32 and request_id not in headers.values()
    else:
        assert request_id == expected
