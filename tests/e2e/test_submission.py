"""Submissions that must be refused at once, with a problem document and a stable code."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Dockguard

HAPPY = 'FROM busybox:latest\nUSER 1000\nCMD ["sh", "-c", "echo {} > /data/perf.json"]\n'


def assert_problem(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    problem: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    return problem


async def test_garbage_text_is_invalid(dockguard: Dockguard) -> None:
    response = await dockguard.submit("this is not a dockerfile\njust some prose\n")
    problem = assert_problem(response, 400, "dockerfile_invalid")
    assert "line 1" in str(problem["detail"])


async def test_missing_from_is_invalid(dockguard: Dockguard) -> None:
    response = await dockguard.submit("# only a comment\nRUN echo hi\n")
    assert_problem(response, 400, "dockerfile_invalid")


@pytest.mark.parametrize("body", [b"", b"   \n\n\t\n", b"# just a comment\n"])
async def test_empty_dockerfile(dockguard: Dockguard, body: bytes) -> None:
    response = await dockguard.submit(body)
    # A comment-only file is not empty bytes, but it has no instruction: no FROM.
    expected = "dockerfile_invalid" if body.strip() else "dockerfile_empty"
    assert_problem(response, 400, expected)


@pytest.mark.parametrize(
    "body", [b"FROM busybox\nRUN echo \xff\xfe\n", b"FROM busybox\nRUN echo \x00\n"]
)
async def test_bad_encoding(dockguard: Dockguard, body: bytes) -> None:
    assert_problem(await dockguard.submit(body), 400, "dockerfile_encoding")


async def test_nul_in_json_body(dockguard: Dockguard) -> None:
    body = json.dumps({"dockerfile": "FROM busybox\nRUN echo \u0000\n"})
    response = await dockguard.submit(body, "application/json")
    assert_problem(response, 400, "dockerfile_encoding")


async def test_oversized_dockerfile(dockguard: Dockguard) -> None:
    limit = dockguard.settings.max_dockerfile_bytes
    body = "FROM busybox\n" + "# padding\n" * (limit // 10 + 1)
    assert_problem(await dockguard.submit(body), 413, "dockerfile_too_large")
    wrapped = json.dumps({"dockerfile": body})
    assert_problem(await dockguard.submit(wrapped, "application/json"), 413, "dockerfile_too_large")


async def test_exactly_at_the_limit_is_accepted(dockguard: Dockguard) -> None:
    limit = dockguard.settings.max_dockerfile_bytes
    body = HAPPY + "#" * (limit - len(HAPPY) - 1) + "\n"
    assert len(body.encode()) == limit
    response = await dockguard.submit(body)
    assert response.status_code == 202, response.text
    await dockguard.wait(response.json()["id"])


@pytest.mark.parametrize("content_type", ["application/xml", "application/octet-stream", ""])
async def test_wrong_content_type(dockguard: Dockguard, content_type: str) -> None:
    response = await dockguard.submit(HAPPY, content_type)
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("body", ['{"dockerfile": 3}', '{"docker": "FROM x"}', "[1, 2]", "{"])
async def test_malformed_json_body(dockguard: Dockguard, body: str) -> None:
    response = await dockguard.submit(body, "application/json")
    assert_problem(response, 400, "request_invalid")


async def test_json_submission_is_accepted(dockguard: Dockguard) -> None:
    response = await dockguard.submit(json.dumps({"dockerfile": HAPPY}), "application/json")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["error"] is None and job["result"] is None
    await dockguard.wait(job["id"])
    # The id must be all of the path segment: not even a final newline (which `$` lets by).
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/logs")):
        answer = await dockguard.client.request(method, f"/v1/jobs/{job['id']}%0A{suffix}")
        assert_problem(answer, 404, "job_not_found")


async def test_unknown_job_is_404(dockguard: Dockguard) -> None:
    assert_problem(await dockguard.client.get("/v1/jobs/" + "0" * 32), 404, "job_not_found")
    assert_problem(await dockguard.client.get("/v1/jobs/not-an-id"), 404, "job_not_found")


async def test_unknown_route_is_a_problem_document(dockguard: Dockguard) -> None:
    assert_problem(await dockguard.client.get("/v2/nothing"), 404, "not_found")


async def test_health_readiness_and_docs(dockguard: Dockguard) -> None:
    assert (await dockguard.client.get("/healthz")).json() == {"status": "ok"}
    ready = await dockguard.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["checks"]["workers"] >= 1
    assert (await dockguard.client.get("/docs")).status_code == 200
    spec = (await dockguard.client.get("/openapi.json")).json()
    post = spec["paths"]["/v1/jobs"]["post"]
    assert set(post["requestBody"]["content"]) == {
        "application/json",
        "text/plain",
        "multipart/form-data",
    }
    assert {"400", "413", "415"} <= set(post["responses"])
    assert {"Job", "Problem", "ScanReport", "SubmitRequest"} <= set(spec["components"]["schemas"])
