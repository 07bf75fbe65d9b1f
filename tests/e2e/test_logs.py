"""Live logs, end to end (`GET /v1/jobs/{id}/logs`): Server-Sent Events of the build's and the
run's lines as they are printed, the status changes, then `end`; a resume with Last-Event-ID;
hostile output cleaned; the plain-text log; and the errors."""

from __future__ import annotations

import json
from typing import Any

import aiodocker
import pytest

from tests.e2e.conftest import Dockguard, Instances, assert_no_leftovers

FAST = {"build_timeout_s": 60, "build_memory_mb": 128, "scan_image": False}
# A run that prints, pauses (the job is `running` meanwhile), prints again and writes its result.
TALKING = (
    "FROM busybox:latest\n"
    "RUN echo built-line-1 && echo built-line-2\n"
    "USER 1000\n"
    'CMD ["sh", "-c", "echo run-first; sleep 4; echo run-second >&2; '
    'echo \'{\\"perf\\": 1}\' > /data/perf.json"]\n'
)
SSE = {"Accept": "text/event-stream"}


async def events(
    dockguard: Dockguard, job_id: str, headers: dict[str, str] | None = None, on_event: Any = None
) -> list[dict[str, Any]]:
    """Every event of the job's stream until it closes: id, event, data (parsed)."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with dockguard.client.stream(
        "GET", f"/v1/jobs/{job_id}/logs", headers=SSE | (headers or {}), timeout=120
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                if "event" in current:
                    found.append(current)
                    if on_event is not None:
                        await on_event(current)
                current = {}
            elif line.startswith(":"):
                continue  # a ping
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                current[name] = json.loads(value) if name == "data" else value
    return found


async def submit(dockguard: Dockguard, dockerfile: str) -> str:
    response = await dockguard.submit(dockerfile)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_lines_arrive_while_the_job_runs_then_the_end(
    instances: Instances, docker: aiodocker.Docker
) -> None:
    dockguard = await instances.get(**FAST)
    job_id = await submit(dockguard, TALKING)
    status_when_first_line: list[str] = []

    async def check(event: dict[str, Any]) -> None:
        if event["event"] == "log" and event["data"]["line"] == "run-first":
            job = (await dockguard.client.get(f"/v1/jobs/{job_id}")).json()
            status_when_first_line.append(job["status"])

    seen = await events(dockguard, job_id, on_event=check)
    assert status_when_first_line == ["running"]  # it came while the container still ran

    kinds = [(e["event"], e["data"].get("status") or e["data"].get("stage")) for e in seen]
    statuses = [e["data"]["status"] for e in seen if e["event"] == "status"]
    assert statuses == ["queued", "scanning", "building", "running", "succeeded"]
    assert kinds[-1] == ("end", "succeeded")
    lines = [(e["data"]["stage"], e["data"]["line"]) for e in seen if e["event"] == "log"]
    assert ("build", "built-line-1") in lines and ("build", "built-line-2") in lines
    assert ("run", "run-first") in lines and ("run", "run-second") in lines  # stderr too
    # Build lines come between `building` and `running`, run lines between `running` and the end.
    first_run = kinds.index(("status", "running"))
    assert all(stage == "build" for kind, stage in kinds[:first_run] if kind == "log")
    assert all(stage == "run" for kind, stage in kinds[first_run:] if kind == "log")
    assert len({e["id"] for e in seen}) == len(seen)  # every event has its own id

    job = await dockguard.wait(job_id)
    assert job["status"] == "succeeded", job["error"]
    plain = await dockguard.client.get(f"/v1/jobs/{job_id}/logs")
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain")
    assert "build | built-line-1\n" in plain.text
    assert "run | run-first\nrun | run-second\n" in plain.text
    await assert_no_leftovers(docker, [job_id])


async def test_last_event_id_resumes_without_loss_or_repeats(instances: Instances) -> None:
    dockguard = await instances.get(**FAST)
    job_id = await submit(dockguard, TALKING)
    first_part: list[dict[str, Any]] = []

    class Cut(Exception):
        pass

    async def cut_after_first_run_line(event: dict[str, Any]) -> None:
        first_part.append(event)
        if event["event"] == "log" and event["data"]["stage"] == "run":
            raise Cut  # the client goes away mid-job

    with pytest.raises(Cut):
        await events(dockguard, job_id, on_event=cut_after_first_run_line)
    rest = await events(dockguard, job_id, headers={"Last-Event-ID": first_part[-1]["id"]})
    whole = await events(dockguard, job_id)  # from the start, after the end
    assert first_part + rest == whole
    assert rest[-1]["event"] == "end"
    assert (await dockguard.wait(job_id))["status"] == "succeeded"


async def test_hostile_output_is_cleaned(instances: Instances) -> None:
    dockguard = await instances.get(**FAST)
    long_line = "x" * 3000
    dockerfile = (
        "FROM busybox:latest\n"
        "RUN printf 'b\\033[31mred\\033[0m \\033]0;title\\007t\\n'\n"
        "USER 1000\n"
        'CMD ["sh", "-c", "printf \'esc\\\\033[2Jx \\\\377\\\\376 bytes\\\\rover\\\\n\'; '
        f'echo {long_line}; echo \'{{\\"perf\\": 1}}\' > /data/perf.json"]\n'
    )
    job_id = await submit(dockguard, dockerfile)
    seen = await events(dockguard, job_id)
    lines = [e["data"]["line"] for e in seen if e["event"] == "log"]
    assert "bred t" in lines  # SGR and OSC sequences gone
    assert "over" in lines  # what the carriage return overwrote is gone, as on a terminal
    caps = [line for line in lines if line.startswith("xxx")]
    assert caps == ["x" * 999 + "…"]
    assert not any("\x1b" in line or "\r" in line for line in lines)
    job = await dockguard.wait(job_id)
    assert job["status"] == "succeeded", job["error"]


async def test_invalid_utf8_is_replaced_not_dropped(instances: Instances) -> None:
    dockguard = await instances.get(**FAST)
    dockerfile = (
        "FROM busybox:latest\nUSER 1000\n"
        'CMD ["sh", "-c", "printf \'a\\\\377b\\\\n\'; '
        'echo \'{\\"perf\\": 1}\' > /data/perf.json"]\n'
    )
    job_id = await submit(dockguard, dockerfile)
    seen = await events(dockguard, job_id)
    run = [e["data"]["line"] for e in seen if e["event"] == "log" and e["data"]["stage"] == "run"]
    assert run == ["a\ufffdb"]


async def test_errors(instances: Instances) -> None:
    dockguard = await instances.get(**FAST)
    missing = await dockguard.client.get("/v1/jobs/" + "0" * 32 + "/logs", headers=SSE)
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"
    job_id = await submit(dockguard, TALKING)
    bad = await dockguard.client.get(
        f"/v1/jobs/{job_id}/logs", headers=SSE | {"Last-Event-ID": "not-an-id"}
    )
    assert bad.status_code == 422 and bad.json()["code"] == "request_invalid"
    assert (await dockguard.wait(job_id))["status"] == "succeeded"


async def test_the_stream_expires_with_the_job(instances: Instances) -> None:
    dockguard = await instances.get(**FAST)
    job_id = await submit(dockguard, TALKING)
    await dockguard.wait(job_id)
    redis = dockguard.services.redis
    job_ttl = await redis.pttl(f"dockguard:job:{job_id}")
    log_ttl = await redis.pttl(f"dockguard:logs:{job_id}")
    assert 0 < log_ttl <= job_ttl + 1000, (log_ttl, job_ttl)
