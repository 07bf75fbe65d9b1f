"""Webhooks' pure parts (callbacks.py: where they may go, how they are signed) and the sender's
retry rules (jobs/callbacks.py) against in-memory fakes and httpx's mock transport."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

import httpx
import pytest

from dockguard import callbacks
from dockguard.errors import SubmissionError
from dockguard.jobs import callbacks as jobs_callbacks
from dockguard.jobs.callbacks import CallbackSender
from dockguard.models import CallbackInfo, Job, JobStatus
from dockguard.settings import Settings
from tests.unit.fakes import FakeDockerfileStore, FakeJobStore


def allow(*entries: str) -> tuple[callbacks.HostPattern, ...]:
    return callbacks.parse_allowlist(list(entries))


@pytest.mark.parametrize("entry", ["a/b", "user@host", "*foo.com", "a.*.com", "host:0", "h:x"])
def test_a_bad_allowlist_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="is not"):
        callbacks.parse_allowlist([entry])


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        (("hooks.example.com",), "https://hooks.example.com/x"),
        (("HOOKS.example.com.",), "https://hooks.Example.com./x"),
        (("*.example.com",), "http://a.b.example.com/x"),
        (("hooks.example.com:8443",), "https://hooks.example.com:8443/x"),
        (("*",), "https://198.51.100.7/x"),
        (("10.1.2.3",), "http://10.1.2.3/x"),  # private addresses are not special
        (("127.0.0.1",), "http://127.0.0.1:5000/x"),  # named: explicitly allowed
        (("localhost",), "http://127.0.0.1:5000/x"),
        (("localhost",), "http://[::1]/x"),
        (("[::1]:8080",), "http://[::1]:8080/x"),
        (("*", "127.0.0.1:5000"), "http://127.0.0.1:5000/x"),  # any matching entry, any order
        (("*", "localhost"), "http://[::1]/x"),
    ],
)
def test_allowed(entries: tuple[str, ...], url: str) -> None:
    assert callbacks.check_url(url, allow(*entries)).url == url


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        ((), "https://hooks.example.com/x"),  # webhooks off
        (("hooks.example.com",), "https://evil.example.com/x"),
        (("*.example.com",), "https://example.com/x"),
        (("*.example.com",), "https://evilexample.com/x"),
        (("hooks.example.com:8443",), "https://hooks.example.com/x"),
        (("*",), "http://127.0.0.1/x"),
        (("*",), "http://127.9.9.9/x"),
        (("*",), "http://[::1]/x"),
        (("*",), "http://[::ffff:127.0.0.1]/x"),
        (("*",), "http://[::ffff:169.254.169.254]/x"),
        (("*",), "http://169.254.169.254/latest/meta-data/"),
        (("*",), "http://[fd00:ec2::254]/x"),
        (("*",), "http://100.100.100.200/x"),
        (("*",), "http://0.0.0.0/x"),
        (("*",), "http://0.1.2.3/x"),
        (("*",), "http://[::]/x"),
        (("*",), "http://224.0.0.1/x"),
        (("*",), "http://[fe80::1]/x"),
        (("*",), "http://[64:ff9b::7f00:1]/x"),  # NAT64 of 127.0.0.1
        (("*",), "http://[2002:7f00:1::]/x"),  # 6to4 of 127.0.0.1
        (("*",), "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x"),  # Teredo
        (("*",), "http://[::7f00:1]/x"),  # IPv4-compatible (deprecated)
        (("127.0.0.1",), "http://127.0.0.2/x"),  # the entry names one address only
        (("localhost",), "http://169.254.169.254/x"),
    ],
)
def test_not_allowed(entries: tuple[str, ...], url: str) -> None:
    with pytest.raises(SubmissionError) as refused:
        callbacks.check_url(url, allow(*entries))
    assert (refused.value.code.value, refused.value.http_status) == ("callback_not_allowed", 400)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "hooks.example.com/x",
        "http://u:p@hooks.example.com/x",
        "http://@hooks.example.com/x",
        "http://hooks.example.com/x#f",
        "http://hooks.example.com:70000/x",
        "http://hooks.example.com/a b",
        "http://hooks.example.com/\u00e9",
        "http://hooks.example.com/\n",
        "http:///x",
        "http://hooks.example.com/" + "x" * 2048,
        "http://a..example.com/x",  # an empty label: the resolver would raise, not answer
        "http://" + "a" * 64 + ".example.com/x",
        "http://./x",
        "http://[fd00:ec2::254%251]/x",  # a zone id hides the address from the checks
        "http://[fe80::1%25eth0]/x",
        "http://host$name/x",
    ],
)
def test_malformed(url: str) -> None:
    with pytest.raises(SubmissionError) as refused:
        callbacks.check_url(url, allow("*"))
    assert (refused.value.code.value, refused.value.http_status) == ("request_invalid", 422)


def test_a_signature_verifies_only_with_its_secret_body_and_time() -> None:
    body = b'{"id": "x"}'
    header = callbacks.sign(b"secret", body)
    assert callbacks.verify(b"secret", header, body)
    assert not callbacks.verify(b"other", header, body)
    assert not callbacks.verify(b"secret", header, body + b" ")
    old = callbacks.sign(b"secret", body, int(time.time()) - 600)
    assert not callbacks.verify(b"secret", old, body)
    assert callbacks.verify(b"secret", old, body, tolerance_s=900)
    t, v1 = header.split(",")
    assert callbacks.verify(b"secret", f"{t},v1=00ff,{v1}", body)  # one of several keys
    stamp = t.partition("=")[2]
    hostile = [
        "",
        v1,
        t,
        "t=abc," + v1,
        f"{t},{t},{v1}",
        "t=\u00b2," + v1,
        "t=" + "9" * 5000 + "," + v1,
        f"{t},v1=\u00e9",
        f"t=\u0661\u0662,{v1}",
        f"t=0{stamp},{v1}",
        "=,=,,",
        "t",
        "v1",
    ]
    for broken in hostile:  # never raises, never True
        assert not callbacks.verify(b"secret", broken, body), broken


def test_embedded_ipv4_is_checked() -> None:
    mapped = ipaddress.ip_address("::ffff:10.0.0.1")
    assert not callbacks.special(mapped)
    assert callbacks.special(ipaddress.ip_address("::ffff:127.0.0.1"))


class FakeQueue:
    def __init__(self) -> None:
        self.due: dict[str, float] = {}
        self.done_ids: list[str] = []

    async def claim(self, *, lease_s: float, limit: int, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        ids = [i for i, at in self.due.items() if at <= now][:limit]
        for job_id in ids:
            self.due[job_id] = now + lease_s
        return ids

    async def retry_at(self, job_id: str, when: float) -> None:
        self.due[job_id] = when

    async def done(self, job_id: str) -> None:
        self.due.pop(job_id, None)
        self.done_ids.append(job_id)


async def sender_with(
    answers: list[int | Exception], **settings: object
) -> tuple[CallbackSender, FakeJobStore, FakeQueue, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        reply = answers.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return httpx.Response(reply)

    store, queue = FakeJobStore(FakeDockerfileStore()), FakeQueue()
    job = Job(
        id="a" * 32,
        status=JobStatus.SUCCEEDED,
        dockerfile_sha256="0" * 64,
        dockerfile_bytes=1,
        callback=CallbackInfo(url="https://198.51.100.7:8443/hook?x=1"),
    )
    await store.create(job, "FROM scratch\n", deadline_s=60)
    queue.due[job.id] = 0
    config = Settings(
        callback_allowed_hosts=["198.51.100.7:8443"],
        callback_secret="k",
        **settings,  # type: ignore[arg-type]
    )
    sender = CallbackSender(config, store, queue, transport=httpx.MockTransport(answer))
    return sender, store, queue, seen


async def test_a_5xx_then_2xx_is_delivered_with_a_doubling_backoff() -> None:
    sender, store, queue, seen = await sender_with([500, 502, 204], callback_backoff_s=10)
    job_id = "a" * 32
    before = time.time()
    await sender.send_due()
    assert before + 10 <= queue.due[job_id] <= time.time() + 10  # 10 s after the first
    queue.due[job_id] = 0
    await sender.send_due()
    assert before + 20 <= queue.due[job_id] <= time.time() + 20  # doubled
    queue.due[job_id] = 0
    await sender.send_due()
    assert queue.done_ids == [job_id]
    job = await store.get(job_id)
    assert job is not None and job.callback is not None and job.callback.delivered
    assert [a.status_code for a in job.callback.attempts] == [500, 502, 204]
    request = seen[0]
    assert str(request.url) == "https://198.51.100.7:8443/hook?x=1"
    assert request.headers["host"] == "198.51.100.7:8443"
    assert callbacks.verify(b"k", request.headers[callbacks.SIGNATURE_HEADER], request.content)


@pytest.mark.parametrize(
    ("answer", "error", "retried"),
    [
        (404, "http_status", False),
        (301, "http_status", False),  # redirects are not followed
        (429, "http_status", True),
        (httpx.ConnectError("refused"), "connection_failed", True),
        (httpx.ReadTimeout("slow"), "timeout", True),
    ],
)
async def test_what_is_tried_again(answer: int | Exception, error: str, retried: bool) -> None:
    sender, store, queue, _ = await sender_with([answer])
    await sender.send_due()
    job = await store.get("a" * 32)
    assert job is not None and job.callback is not None
    assert [a.error for a in job.callback.attempts] == [error]
    assert ("a" * 32 in queue.due) is retried


async def test_the_last_attempt_gives_up() -> None:
    sender, store, queue, seen = await sender_with([500, 500], callback_max_attempts=2)
    for _ in range(2):
        queue.due["a" * 32] = 0
        await sender.send_due()
    assert queue.done_ids == ["a" * 32] and len(seen) == 2
    job = await store.get("a" * 32)
    assert job is not None and job.callback is not None and not job.callback.delivered


async def test_an_allowlist_narrowed_after_submission_stops_the_webhook() -> None:
    sender, store, queue, seen = await sender_with([200])
    job = await store.get("a" * 32)
    assert job is not None
    await store.update(job.id, lambda j: setattr(j.callback, "url", "https://203.0.113.9/x"))
    await sender.send_due()
    assert seen == [] and queue.done_ids == [job.id]
    job = await store.get(job.id)
    assert job is not None and job.callback is not None
    assert job.callback.attempts[0].error == "address_not_allowed"


async def test_an_unexpected_error_still_counts_as_an_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, store, queue, _ = await sender_with([200], callback_max_attempts=2)

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sender, "_attempt", broken)
    for _ in range(3):
        queue.due["a" * 32] = 0
        await sender.send_due()
    job = await store.get("a" * 32)
    assert job is not None and job.callback is not None
    assert len(job.callback.attempts) == 2  # bounded: given up, and not tried when taken again
    assert "a" * 32 not in queue.due


async def test_a_stalling_resolver_holds_up_only_the_senders_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, store, queue, _ = await sender_with([200])
    monkeypatch.setattr(jobs_callbacks, "_RESOLVE_TIMEOUT_S", 0.3)
    real = socket.getaddrinfo

    def stalling(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)  # a nameserver that drops queries
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalling)
    first = await store.get("a" * 32)
    assert first is not None
    for n in range(1, 8):  # 8 webhooks due: more than the event loop's own 6 threads here
        await store.create(first.model_copy(update={"id": f"{n}" * 32}), "", deadline_s=60)
        queue.due[f"{n}" * 32] = 0
    stalled = asyncio.create_task(sender.send_due())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.to_thread(lambda: None)  # what the pipeline does (cgroups, archives)
    assert time.monotonic() - started < 0.2
    assert await stalled == 8
    for digit in "a1234567":
        job = await store.get(digit * 32)
        assert job is not None and job.callback is not None
        assert job.callback.attempts[0].error == "timeout"
