"""`POST /v1/jobs` as a form, with an Idempotency-Key and against a full queue, and
`GET /v1/jobs`, through HTTP on a real dockguard instance, its Redis and (for the jobs that run)
the Docker Engine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from dockguard.api.multipart import FRAMING_BYTES
from dockguard.models import Job, JobStatus
from dockguard.store import RedisDockerfileStore, RedisJobStore
from dockguard.store.keys import JOBS, QUEUE_NAME, job_key
from dockguard.store.listing import SCAN_MAX, created_us
from tests.e2e.conftest import Dockguard, Instances
from tests.e2e.test_submission import HAPPY, assert_problem

FAILING = 'FROM busybox:latest\nUSER 1000\nCMD ["sh", "-c", "exit 3"]\n'


@pytest_asyncio.fixture
async def full(instances: Instances) -> Dockguard:
    """No worker, and room for one job in the queue."""
    instance = await instances.get(run_worker=False, max_queued=1)
    await instance.services.redis.flushdb()
    return instance


def dockerfile(n: int) -> str:
    return HAPPY + f"# submission {n}\n"


async def post_form(instance: Dockguard, body: str | bytes, **headers: str) -> httpx.Response:
    files = {"dockerfile": ("Dockerfile", body, "application/octet-stream")}
    response = await instance.client.post("/v1/jobs", files=files, headers=headers)
    if response.status_code == 202:
        instance.submitted.append(response.json()["id"])
    return response


async def post_text(instance: Dockguard, body: str, **headers: str) -> httpx.Response:
    headers = {"Content-Type": "text/plain", **headers}
    response = await instance.client.post("/v1/jobs", content=body.encode(), headers=headers)
    if response.status_code == 202:
        instance.submitted.append(response.json()["id"])
    return response


async def list_all(instance: Dockguard, **params: Any) -> list[dict[str, Any]]:
    """Every page of GET /v1/jobs, followed to the end."""
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await instance.client.get("/v1/jobs", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"jobs", "next_cursor"}
        jobs += page["jobs"]
        if (cursor := page["next_cursor"]) is None:
            return jobs


# --- multipart/form-data ------------------------------------------------------------------


async def test_a_form_is_a_submission_like_any_other(dockguard: Dockguard) -> None:
    response = await post_form(dockguard, HAPPY)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["dockerfile_sha256"] == hashlib.sha256(HAPPY.encode()).hexdigest()
    assert job["dockerfile_bytes"] == len(HAPPY)
    ended = await dockguard.wait(job["id"])
    assert ended["status"] == "succeeded", ended["error"]


async def test_a_plain_form_field_is_accepted(idle: Dockguard) -> None:
    response = await idle.client.post("/v1/jobs", files={"dockerfile": (None, HAPPY)})
    assert response.status_code == 202, response.text
    assert response.json()["dockerfile_sha256"] == hashlib.sha256(HAPPY.encode()).hexdigest()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_form_as_the_readme_shows(idle: Dockguard, tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(HAPPY)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-F", f"dockerfile=@{path}", f"{idle.client.base_url}/v1/jobs",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    job = json.loads(out)
    assert job["status"] == "queued" and job["dockerfile_bytes"] == len(HAPPY)


async def test_a_form_over_the_limit_is_413(dockguard: Dockguard) -> None:
    limit = dockguard.settings.max_dockerfile_bytes
    too_big = HAPPY + "#" * (limit - len(HAPPY)) + "\n"
    assert_problem(await post_form(dockguard, too_big), 413, "dockerfile_too_large")
    at_limit = too_big[: limit - 1] + "\n"
    response = await post_form(dockguard, at_limit)
    assert response.status_code == 202, response.text
    await dockguard.wait(response.json()["id"])


async def _raw_exchange(instance: Dockguard, head: bytes, *chunks: bytes) -> tuple[int, Any]:
    """Send a request's head and some of its body, never the rest; read the answer."""
    url = instance.client.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head)
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        async with asyncio.timeout(10):
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            return status, json.loads(await reader.readexactly(length))
    finally:
        writer.close()


def _head(extra: str) -> bytes:
    return (
        "POST /v1/jobs HTTP/1.1\r\nHost: dockguard\r\n"
        "Content-Type: multipart/form-data; boundary=dgtest\r\n" + extra + "\r\n"
    ).encode()


_PART = b'--dgtest\r\nContent-Disposition: form-data; name="dockerfile"; filename="D"\r\n\r\n'


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_an_oversized_form_is_refused_while_it_streams(dockguard: Dockguard) -> None:
    limit = dockguard.settings.max_dockerfile_bytes
    # A chunked body (no length declared) whose part passes the limit, and never ends: the
    # answer can only come from the part's own count, before the body is over.
    status, problem = await _raw_exchange(
        dockguard,
        _head("Transfer-Encoding: chunked\r\n"),
        _chunk(_PART + b"FROM busybox:latest\n"),
        *[_chunk(b"#" * 4096) for _ in range(limit // 4096 + 1)],
    )
    assert (status, problem["code"]) == (413, "dockerfile_too_large"), problem
    assert "Dockerfile is larger" in problem["detail"]
    # A body that declares 10 GB: refused at its head, nothing of it read.
    status, problem = await _raw_exchange(dockguard, _head(f"Content-Length: {10**10}\r\n"), _PART)
    assert (status, problem["code"]) == (413, "dockerfile_too_large"), problem
    assert str(limit + FRAMING_BYTES) in problem["detail"]


@pytest.mark.parametrize(
    "files",
    [
        [("other", ("D", HAPPY))],
        [("dockerfile", ("D", HAPPY)), ("extra", ("x", "1"))],
        [("dockerfile", ("D", HAPPY)), ("dockerfile", ("D", HAPPY))],
        [("limits", (None, "{}"))],
    ],
    ids=["missing", "extra", "twice", "plain-other"],
)
async def test_a_form_must_be_one_dockerfile_field(
    idle: Dockguard, files: list[tuple[str, tuple[str | None, str]]]
) -> None:
    response = await idle.client.post("/v1/jobs", files=files)
    assert "dockerfile" in str(assert_problem(response, 400, "request_invalid")["detail"])
    assert await idle.services.redis.dbsize() == 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n"),  # no boundary
        ("multipart/form-data; boundary=x", b"this is not a form"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="d'),
    ],
)
async def test_a_broken_form_is_invalid(idle: Dockguard, content_type: str, body: bytes) -> None:
    response = await idle.client.post(
        "/v1/jobs", content=body, headers={"Content-Type": content_type}
    )
    assert_problem(response, 400, "request_invalid")


# --- GET /v1/jobs -------------------------------------------------------------------------


async def test_the_list_is_newest_first_page_by_page(idle: Dockguard) -> None:
    ids = []
    for n in range(5):
        response = await post_text(idle, dockerfile(n))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    newest_first = ids[::-1]
    everything = (await idle.client.get("/v1/jobs")).json()  # default limit 20
    assert [job["id"] for job in everything["jobs"]] == newest_first
    assert everything["next_cursor"] is None
    assert everything["jobs"][0] == (await idle.client.get(f"/v1/jobs/{ids[-1]}")).json()

    pages = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await idle.client.get("/v1/jobs", params=params)).json()
        pages.append([job["id"] for job in page["jobs"]])
        if (cursor := page["next_cursor"]) is None:
            break
        if len(pages) == 1:  # a job submitted mid-walk comes first next time, not here
            assert (await post_text(idle, dockerfile(99))).status_code == 202
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]


async def test_status_filters_the_list(dockguard: Dockguard) -> None:
    good, bad = await asyncio.gather(post_text(dockguard, HAPPY), post_text(dockguard, FAILING))
    good_job, bad_job = await asyncio.gather(
        dockguard.wait(good.json()["id"]), dockguard.wait(bad.json()["id"])
    )
    assert (good_job["status"], bad_job["status"]) == ("succeeded", "failed")
    succeeded = await list_all(dockguard, status="succeeded", limit=100)
    failed = await list_all(dockguard, status="failed", limit=100)
    assert {job["status"] for job in succeeded} == {"succeeded"}
    assert {job["status"] for job in failed} == {"failed"}
    assert good_job["id"] in {job["id"] for job in succeeded}
    assert bad_job["id"] in {job["id"] for job in failed}
    assert bad_job["id"] not in {job["id"] for job in succeeded}
    created = [job["created_at"] for job in await list_all(dockguard, limit=7)]
    assert created == sorted(created, reverse=True)


async def test_status_filter_on_queued_jobs(idle: Dockguard) -> None:
    for n in range(3):
        assert (await post_text(idle, dockerfile(n))).status_code == 202
    assert len(await list_all(idle, status="queued", limit=1)) == 3
    assert await list_all(idle, status="running") == []


async def test_expired_jobs_leave_the_list(idle: Dockguard) -> None:
    redis = idle.services.redis
    kept, gone = [(await post_text(idle, dockerfile(n))).json()["id"] for n in range(2)]
    await redis.delete(job_key(gone))  # as its TTL would
    assert [job["id"] for job in await list_all(idle)] == [kept]
    assert await redis.zscore(JOBS, gone) is None  # skipped, and removed from the index
    # Entries older than the TTL are trimmed by the next submission.
    ancient = datetime.now(UTC) - timedelta(seconds=idle.settings.job_ttl_s + 3600)
    await redis.zadd(JOBS, {"0" * 32: created_us(ancient)})
    assert (await post_text(idle, dockerfile(3))).status_code == 202
    assert await redis.zscore(JOBS, "0" * 32) is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"status": "sleeping"},
        {"cursor": "not-a-cursor"},
        {"cursor": "x" * 500},
    ],
)
async def test_bad_list_parameters_are_problems(idle: Dockguard, params: dict[str, Any]) -> None:
    response = await idle.client.get("/v1/jobs", params=params)
    problem = assert_problem(response, 422, "request_invalid")
    assert next(iter(params)) in str(problem["detail"])


# --- Idempotency-Key ----------------------------------------------------------------------


async def test_a_retry_with_the_same_key_gets_the_same_job(idle: Dockguard) -> None:
    first = await post_text(idle, HAPPY, **{"Idempotency-Key": "retry-1"})
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    for again in (
        await post_text(idle, HAPPY, **{"Idempotency-Key": "retry-1"}),
        await post_form(idle, HAPPY, **{"Idempotency-Key": "retry-1"}),  # same Dockerfile
    ):
        assert again.status_code == 200, again.text
        assert again.headers["location"] == f"/v1/jobs/{job_id}"
        assert again.json() == (await idle.client.get(f"/v1/jobs/{job_id}")).json()
    other = await post_text(idle, dockerfile(2), **{"Idempotency-Key": "retry-1"})
    assert_problem(other, 422, "idempotency_key_reused")
    fresh = await post_text(idle, HAPPY, **{"Idempotency-Key": "retry-2"})
    assert fresh.status_code == 202 and fresh.json()["id"] != job_id
    assert len(await list_all(idle)) == 2
    assert await idle.services.redis.zcard(QUEUE_NAME) == 2


async def test_concurrent_requests_with_one_key_make_one_job(idle: Dockguard) -> None:
    responses = await asyncio.gather(
        *(post_text(idle, HAPPY, **{"Idempotency-Key": "together"}) for _ in range(12))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 11 + [202], [r.text for r in responses]
    assert len({response.json()["id"] for response in responses}) == 1
    redis = idle.services.redis
    assert len(await redis.keys(job_key("*"))) == 1
    assert await redis.zcard(JOBS) == 1 and await redis.zcard(QUEUE_NAME) == 1


@pytest.mark.parametrize("key", [b"", b"k" * 201, b"caf\xc3\xa9", b"a\x7fb"])
async def test_a_bad_key_is_refused(idle: Dockguard, key: bytes) -> None:
    response = await idle.client.post(
        "/v1/jobs",
        content=HAPPY.encode(),
        headers=[(b"Content-Type", b"text/plain"), (b"Idempotency-Key", key)],
    )
    problem = assert_problem(response, 400, "request_invalid")
    # DEL is no header character (RFC 9110): the HTTP parser refuses the request itself, with a
    # problem document too (api/server.py), before the API reads the key.
    expected = "not valid HTTP" if key == b"a\x7fb" else "Idempotency-Key"
    assert expected in str(problem["detail"])
    assert await idle.services.redis.dbsize() == 0


# --- backpressure ---------------------------------------------------------------------------


async def test_a_full_queue_refuses_with_429_and_stores_nothing(full: Dockguard) -> None:
    redis = full.services.redis
    first = await post_text(full, HAPPY, **{"Idempotency-Key": "first"})
    assert first.status_code == 202, first.text
    keys_before = await redis.dbsize()
    started = time.monotonic()
    for refused in (await post_text(full, dockerfile(2)), await post_form(full, dockerfile(3))):
        problem = assert_problem(refused, 429, "queue_full")
        assert "1 jobs" in str(problem["detail"])
        assert refused.headers["retry-after"].isdigit()
        assert int(refused.headers["retry-after"]) >= 1
    assert time.monotonic() - started < 5
    assert await redis.dbsize() == keys_before
    assert [job["id"] for job in await list_all(full)] == [first.json()["id"]]
    # A retry of the job that is in the queue is still answered.
    again = await post_text(full, HAPPY, **{"Idempotency-Key": "first"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    # A refused submission claims no key: once there is room, the key makes a job.
    refused = await post_text(full, dockerfile(4), **{"Idempotency-Key": "later"})
    assert_problem(refused, 429, "queue_full")
    await redis.delete(QUEUE_NAME)  # as if a worker had finished the queued job
    later = await post_text(full, dockerfile(4), **{"Idempotency-Key": "later"})
    assert later.status_code == 202, later.text


# --- the index itself, on the real Redis ----------------------------------------------------


def _store(redis: Redis) -> RedisJobStore:
    return RedisJobStore(redis, 3600, RedisDockerfileStore(redis, 3600, fernet=None))


async def _walk(store: RedisJobStore, status: JobStatus | None, limit: int) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = await store.list_jobs(status=status, limit=limit, after=after)
        pages.append([job.id for job in page.jobs])
        if (after := page.next) is None:
            return pages


async def test_jobs_created_in_one_microsecond_are_each_listed_once(redis: Redis) -> None:
    store = _store(redis)
    at = datetime.now(UTC)
    ids = sorted(uuid.uuid4().hex for _ in range(250))  # more than one batch of ties
    for job_id in ids:
        job = Job(id=job_id, dockerfile_sha256="0" * 64, dockerfile_bytes=1, created_at=at)
        await store.create(job, "FROM busybox\n", deadline_s=60)
    pages = await _walk(store, None, 7)
    assert [job_id for page in pages for job_id in page] == ids[::-1]
    assert all(len(page) == 7 for page in pages[:-1])


async def test_a_page_looks_at_a_bounded_number_of_jobs(redis: Redis) -> None:
    store = _store(redis)
    start = datetime.now(UTC) - timedelta(minutes=5)
    oldest = Job(id="f" * 32, dockerfile_sha256="0" * 64, dockerfile_bytes=1, created_at=start)
    oldest.status = JobStatus.FAILED
    await store.create(oldest, "FROM busybox\n", deadline_s=60)
    for n in range(SCAN_MAX + 50):
        at = start + timedelta(milliseconds=n + 1)
        job = Job(
            id=uuid.uuid4().hex, dockerfile_sha256="0" * 64, dockerfile_bytes=1, created_at=at
        )
        await store.create(job, "FROM busybox\n", deadline_s=60)
    pages = await _walk(store, JobStatus.FAILED, 10)
    assert pages == [[], [oldest.id]]  # the first page stopped after SCAN_MAX, with a cursor
