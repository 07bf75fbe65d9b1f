"""Per-job run limits (`limits` in JSON, the same names as form fields) through HTTP on a real
dockguard instance, its Redis and the Docker Engine: applied to the run and recorded on the job,
refused (and nothing stored) above the operator's settings."""

from __future__ import annotations

from typing import Any

import aiodocker
import httpx

from dockguard.store.keys import QUEUE_NAME
from tests.e2e.conftest import Dockguard, assert_failed, assert_gone
from tests.e2e.test_submission import HAPPY, assert_problem

SLEEPER = 'FROM busybox:latest\nUSER 1000\nCMD ["sleep", "60"]\n'


async def post_json(instance: Dockguard, body: dict[str, Any]) -> httpx.Response:
    response = await instance.client.post("/v1/jobs", json=body)
    if response.status_code == 202:
        instance.submitted.append(response.json()["id"])
    return response


async def post_form(instance: Dockguard, dockerfile: str, **fields: str) -> httpx.Response:
    files = {"dockerfile": ("Dockerfile", dockerfile.encode(), "application/octet-stream")}
    response = await instance.client.post("/v1/jobs", files=files, data=fields)
    if response.status_code == 202:
        instance.submitted.append(response.json()["id"])
    return response


async def assert_nothing_stored(instance: Dockguard) -> None:
    listed = await instance.client.get("/v1/jobs")
    assert listed.status_code == 200, listed.text
    assert listed.json()["jobs"] == []
    assert await instance.services.redis.zcard(QUEUE_NAME) == 0


async def test_a_requested_run_timeout_ends_a_longer_run(
    dockguard: Dockguard, docker: aiodocker.Docker
) -> None:
    assert dockguard.settings.run_timeout_s > 2
    response = await post_json(dockguard, {"dockerfile": SLEEPER, "limits": {"run_timeout_s": 2}})
    assert response.status_code == 202, response.text
    assert response.json()["requested_limits"] == {
        "run_timeout_s": 2.0,
        "run_memory_mb": None,
        "run_cpus": None,
    }
    job = await dockguard.wait(response.json()["id"])
    assert_failed(job, "run_timeout")
    assert job["run"]["timed_out"] is True
    assert job["run"]["limits"]["timeout_s"] == 2
    assert job["run"]["limits"]["memory_mb"] == dockguard.settings.run_memory_mb
    await assert_gone(docker, job)


async def test_requested_memory_and_cpus_are_applied(dockguard: Dockguard) -> None:
    limits = {"run_memory_mb": 64, "run_cpus": 0.5}
    response = await post_json(dockguard, {"dockerfile": HAPPY, "limits": limits})
    assert response.status_code == 202, response.text
    job = await dockguard.wait(response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    applied = job["run"]["limits"]
    assert (applied["memory_mb"], applied["cpus"]) == (64, 0.5)
    assert applied["timeout_s"] == dockguard.settings.run_timeout_s


async def test_memory_above_the_setting_is_refused_and_nothing_stored(idle: Dockguard) -> None:
    maximum = idle.settings.run_memory_mb
    body = {"dockerfile": HAPPY, "limits": {"run_memory_mb": maximum * 2}}
    problem = assert_problem(await post_json(idle, body), 400, "limits_exceed_policy")
    assert "run_memory_mb" in str(problem["detail"])
    assert str(maximum) in str(problem["detail"]), problem
    await assert_nothing_stored(idle)


async def test_bad_limit_values_are_invalid(idle: Dockguard) -> None:
    for limits in ({"run_timeout_s": 0}, {"run_cpus": -1}, {"run_memory_mb": "lots"}, {"x": 1}):
        response = await post_json(idle, {"dockerfile": HAPPY, "limits": limits})
        assert_problem(response, 422, "request_invalid")
    assert_problem(await post_form(idle, HAPPY, run_timeout_s="soon"), 422, "request_invalid")
    await assert_nothing_stored(idle)


async def test_form_fields_are_limits_too(
    dockguard: Dockguard, idle: Dockguard, docker: aiodocker.Docker
) -> None:
    maximum = idle.settings.run_cpus
    response = await post_form(idle, HAPPY, run_cpus=str(maximum + 1))
    problem = assert_problem(response, 400, "limits_exceed_policy")
    assert "run_cpus" in str(problem["detail"])
    await assert_nothing_stored(idle)

    response = await post_form(dockguard, SLEEPER, run_timeout_s="2", run_memory_mb="64")
    assert response.status_code == 202, response.text
    job = await dockguard.wait(response.json()["id"])
    assert_failed(job, "run_timeout")
    assert (job["run"]["limits"]["timeout_s"], job["run"]["limits"]["memory_mb"]) == (2, 64)
    await assert_gone(docker, job)


async def test_the_limits_are_part_of_an_idempotent_submission(idle: Dockguard) -> None:
    headers = {"Idempotency-Key": "limits-test"}
    body: dict[str, Any] = {"dockerfile": HAPPY, "limits": {"run_timeout_s": 5}}
    first = await idle.client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.text
    idle.submitted.append(first.json()["id"])
    again = await post_form(idle, HAPPY, run_timeout_s="5.0")
    assert again.status_code == 202  # no key: another job
    files = {"dockerfile": ("Dockerfile", HAPPY.encode(), "application/octet-stream")}
    same = await idle.client.post(
        "/v1/jobs", files=files, data={"run_timeout_s": "5"}, headers=headers
    )
    assert same.status_code == 200, same.text
    assert same.json()["id"] == first.json()["id"]
    other = {"dockerfile": HAPPY, "limits": {"run_timeout_s": 6}}
    response = await idle.client.post("/v1/jobs", json=other, headers=headers)
    assert_problem(response, 422, "idempotency_key_reused")
