"""The client's own logic against httpx's MockTransport (no network): what it sends, how it
resumes a dropped log stream, how it waits on a server that does not long-poll, and how every
failure becomes a `DockguardError`. Against the real service: tests/e2e/test_client.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import httpx
import pytest

from dockguard.client import (
    DEFAULT_URL,
    AsyncClient,
    Client,
    DockguardError,
    LogEvent,
    WaitTimeout,
)
from dockguard.models import Job, JobStatus, RequestedLimits

JOB_ID = "ab" * 16
T0 = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
Handler = Callable[[httpx.Request], httpx.Response]


def job(status: JobStatus = JobStatus.QUEUED) -> Job:
    return Job(
        id=JOB_ID,
        status=status,
        created_at=T0,
        updated_at=T0,
        dockerfile_sha256="0" * 64,
        dockerfile_bytes=10,
    )


def client(handler: Handler) -> Client:
    return Client("http://dg.test", transport=httpx.MockTransport(handler))


def sse(*events: tuple[str, str, Mapping[str, object]]) -> bytes:
    return b"".join(
        f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        for event_id, kind, data in events
    )


def stream(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})


def test_the_url_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCKGUARD_URL", raising=False)
    assert Client().url == DEFAULT_URL == "http://127.0.0.1:8000"
    monkeypatch.setenv("DOCKGUARD_URL", "http://dg.example:9000/")
    assert Client().url == AsyncClient().url == "http://dg.example:9000"
    assert Client("http://other:1").url == "http://other:1"


def test_submit_sends_json_with_limits_and_the_idempotency_key() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202, content=job().model_dump_json())

    with client(handler) as dg:
        limits = RequestedLimits(run_timeout_s=5)
        assert dg.submit("FROM x\n", limits=limits, idempotency_key="k1", wait=3) == job()
        dg.submit(b"FROM \xc3\xa9\n", limits={"run_cpus": 0.5})
        dg.submit(b"FROM \xff\n")
    first, utf8, raw = sent
    assert json.loads(first.content) == {"dockerfile": "FROM x\n", "limits": {"run_timeout_s": 5}}
    assert first.headers["Idempotency-Key"] == "k1" and first.url.params["wait"] == "3"
    assert first.headers["Content-Type"] == "application/json"
    assert json.loads(utf8.content) == {"dockerfile": "FROM é\n", "limits": {"run_cpus": 0.5}}
    # Not UTF-8: sent as it is, for the server to refuse with its own code.
    assert (raw.headers["Content-Type"], raw.content) == ("text/plain", b"FROM \xff\n")


def test_a_dropped_log_stream_is_resumed_after_the_last_event() -> None:
    asked_after: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked_after.append(request.headers.get("Last-Event-ID"))
        if len(asked_after) == 1:  # closes mid-job, before `end`
            building = ("1-0", "status", {"status": "building"})
            return stream(sse(building, ("1-1", "log", {"stage": "build", "line": "a"})))
        succeeded = ("2-0", "status", {"status": "succeeded"})
        return stream(sse(succeeded, ("2-1", "end", {"status": "succeeded"})))

    with client(handler) as dg:
        events = list(dg.logs(JOB_ID))
    assert asked_after == [None, "1-1"]
    assert events == [
        LogEvent("status", "1-0", status=JobStatus.BUILDING),
        LogEvent("log", "1-1", stage="build", line="a"),
        LogEvent("status", "2-0", status=JobStatus.SUCCEEDED),
        LogEvent("end", "2-1", status=JobStatus.SUCCEEDED),
    ]
    assert str(events[1]) == "build | a"
    assert events[0].at is not None and events[0].at.timestamp() == 0.001


async def test_the_async_stream_resumes_too_and_skips_unknown_events() -> None:
    asked_after: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked_after.append(request.headers.get("Last-Event-ID"))
        if len(asked_after) == 1:
            return stream(sse(("1-0", "log", {"stage": "run", "line": "x"}), ("1-1", "newer", {})))
        return stream(sse(("2-0", "end", {"status": None})))

    transport = httpx.MockTransport(handler)
    async with AsyncClient("http://dg.test", transport=transport) as dg:
        events = [event async for event in dg.logs(JOB_ID, last_event_id="0-9")]
    assert asked_after == ["0-9", "1-0"]
    assert [e.kind for e in events] == ["log", "end"] and events[-1].status is None


def test_a_first_connection_that_fails_is_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    with client(handler) as dg, pytest.raises(DockguardError) as raised:
        next(dg.logs(JOB_ID))
    assert (raised.value.code, raised.value.status, calls) == ("connection_failed", None, 1)
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


def test_wait_polls_a_server_that_does_not_long_poll_until_its_timeout() -> None:
    waits: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        waits.append(float(request.url.params.get("wait", 0)))  # none: the deadline is here
        return httpx.Response(200, content=job(JobStatus.RUNNING).model_dump_json())

    with client(handler) as dg, pytest.raises(WaitTimeout) as raised:
        dg.wait(JOB_ID, timeout_s=1.2)
    assert raised.value.code == "wait_timeout" and raised.value.job.status is JobStatus.RUNNING
    assert 3 <= len(waits) <= 5, waits  # every 0.5 s, not in a busy loop
    assert waits[0] == pytest.approx(1.2, abs=0.05) and all(0 <= w <= 1.2 for w in waits)
    assert waits == sorted(waits, reverse=True)  # never past what is left


@pytest.mark.parametrize(
    ("answer", "code", "status"),
    [
        (httpx.Response(502, text="<html>bad gateway</html>"), "http_error", 502),
        (httpx.Response(200, json={"id": "not a job"}), "response_invalid", 200),
        (httpx.Response(200, text="not json"), "response_invalid", 200),
        (
            httpx.Response(
                429,
                json={"code": "queue_full", "detail": "100 jobs are waiting", "status": 429},
                headers={"Retry-After": "10"},
            ),
            "queue_full",
            429,
        ),
    ],
)
def test_answers_that_are_not_a_job_are_errors(
    answer: httpx.Response, code: str, status: int
) -> None:
    with client(lambda _: answer) as dg, pytest.raises(DockguardError) as raised:
        dg.get(JOB_ID)
    assert (raised.value.code, raised.value.status) == (code, status)
    if code == "queue_full":
        assert raised.value.retry_after_s == 10 and raised.value.message == "100 jobs are waiting"
        assert "queue_full" in str(raised.value) and "reading job" in str(raised.value)


def test_timeouts_and_broken_streams_are_errors_too() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with client(slow) as dg, pytest.raises(DockguardError) as timed_out:
        dg.list()
    assert timed_out.value.code == "timeout"

    with client(lambda _: httpx.Response(200, text="b | x\n")) as dg:
        with pytest.raises(DockguardError) as not_sse:
            next(dg.logs(JOB_ID))
        assert not_sse.value.code == "response_invalid"
        assert list(dg.logs(JOB_ID, follow=False)) == [LogEvent("log", stage="b", line="x")]


def test_an_idempotency_key_a_header_cannot_carry_is_refused_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("sent")

    with client(handler) as dg:
        for key in ("clé", "a\nb"):
            with pytest.raises(DockguardError) as raised:
                dg.submit("FROM x\n", idempotency_key=key)
            assert (raised.value.code, raised.value.status) == ("request_invalid", None)
