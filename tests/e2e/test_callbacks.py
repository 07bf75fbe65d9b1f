"""Webhooks (`callback_url`), through HTTP against the real Redis and engine, received by a real
HTTP server on loopback: the final job arrives signed, a failing receiver is tried again with
backoff (each attempt on the job), the number of attempts is bounded, a cancel calls back too,
and a submission may only name a host the operator allows (never loopback through a wildcard)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from dockguard import callbacks
from tests.e2e.conftest import Dockguard, Instances

SECRET = "webhook-test-secret"
FAST: dict[str, Any] = {"run_timeout_s": 30, "build_timeout_s": 60, "build_network": "none"}
WRITE_PERF = ["sh", "-c", "echo '{\"perf\": 7}' > /data/perf.json"]
HAPPY = f"FROM busybox:latest\nUSER 1000\nCMD {json.dumps(WRITE_PERF)}\n"
SLEEPY = 'FROM busybox:latest\nUSER 1000\nCMD ["sleep", "60"]\n'


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 answering each call with the next scripted status."""

    url: str
    statuses: list[int] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(Call(dict(request.headers), await request.read(), time.monotonic()))
        self.arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    async def wait_calls(self, count: int, timeout_s: float = 60) -> list[Call]:
        async with asyncio.timeout(timeout_s):
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.calls


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver(url="")
    app = web.Application()
    app.router.add_post("/hooks/dockguard", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}/hooks/dockguard?source=test"
    yield found
    await runner.cleanup()


@pytest_asyncio.fixture
async def hooked(instances: Instances) -> Dockguard:
    return await instances.get(
        callback_allowed_hosts=["127.0.0.1"],
        callback_secret=SECRET,
        callback_backoff_s=0.3,
        callback_max_attempts=3,
        **FAST,
    )


async def submit(dg: Dockguard, dockerfile: str, callback_url: str) -> dict[str, Any]:
    body = json.dumps({"dockerfile": dockerfile, "callback_url": callback_url})
    response = await dg.submit(body, "application/json")
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert job["callback"] == {"url": callback_url, "delivered": False, "attempts": []}
    return job


async def settled(dg: Dockguard, job_id: str, attempts: int) -> dict[str, Any]:
    """The job once `attempts` webhook attempts are recorded on it."""
    deadline = time.monotonic() + 30
    while True:
        job = (await dg.client.get(f"/v1/jobs/{job_id}")).json()
        if len(job["callback"]["attempts"]) >= attempts:
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, job["callback"]
        await asyncio.sleep(0.05)


async def test_the_final_job_is_posted_signed_and_a_5xx_is_tried_again(
    hooked: Dockguard, receiver: Receiver
) -> None:
    receiver.statuses = [503]
    job = await submit(hooked, HAPPY, receiver.url)
    first, second = await receiver.wait_calls(2)
    for call in (first, second):
        signature = call.headers[callbacks.SIGNATURE_HEADER]
        assert callbacks.verify(SECRET.encode(), signature, call.body)
        assert not callbacks.verify(b"another secret", signature, call.body)
        assert not callbacks.verify(SECRET.encode(), signature, call.body + b" ")
        assert call.headers["Content-Type"] == "application/json"
        assert call.headers["Host"] == receiver.url.split("/")[2]
        assert call.headers["X-Request-ID"] == job["request_id"]  # the submission's
        sent = json.loads(call.body)
        assert (sent["id"], sent["status"], sent["result"]["perf"]) == (job["id"], "succeeded", 7)
    assert second.at - first.at >= 0.25  # the backoff, not at once
    final = await settled(hooked, job["id"], 2)
    assert final["callback"]["delivered"] is True
    attempts = final["callback"]["attempts"]
    assert [(a["status_code"], a["error"]) for a in attempts] == [(503, "http_status"), (200, None)]
    await asyncio.sleep(1)
    assert len(receiver.calls) == 2  # nothing after the delivery


async def test_attempts_are_bounded_and_a_4xx_is_final(
    hooked: Dockguard, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500, 500, 500]
    job = await submit(hooked, HAPPY, receiver.url)
    final = await settled(hooked, job["id"], 3)
    await asyncio.sleep(1.5)  # more than the next backoff (1.2 s): no fourth attempt
    assert len(receiver.calls) == 3
    assert final["callback"]["delivered"] is False
    receiver.statuses = [404]
    job = await submit(hooked, HAPPY, receiver.url)
    final = await settled(hooked, job["id"], 1)
    await asyncio.sleep(0.8)
    assert len(receiver.calls) == 4  # 404: not tried again
    assert final["callback"]["attempts"][0]["error"] == "http_status"


async def test_a_cancelled_job_calls_back(hooked: Dockguard, receiver: Receiver) -> None:
    job = await submit(hooked, SLEEPY, receiver.url)
    cancelled = await hooked.client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 202
    (call,) = await receiver.wait_calls(1)
    sent = json.loads(call.body)
    assert (sent["status"], sent["error"]["code"]) == ("cancelled", "job_cancelled")
    await hooked.wait(job["id"])


async def test_a_refused_receiver_is_tried_again_then_given_up(hooked: Dockguard) -> None:
    closed = "http://127.0.0.1:9/never"  # discard port: nothing listens
    job = await submit(hooked, HAPPY, closed)
    final = await settled(hooked, job["id"], 3)
    assert {a["error"] for a in final["callback"]["attempts"]} == {"connection_failed"}
    assert final["callback"]["delivered"] is False


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://198.51.100.7/hook", "not in this service's allowlist"),
        ("http://localhost:8080/hook", "not in this service's allowlist"),
        ("http://127.0.0.1.nip.io/hook", "not in this service's allowlist"),
    ],
)
async def test_only_allowed_hosts(hooked: Dockguard, url: str, why: str) -> None:
    body = json.dumps({"dockerfile": HAPPY, "callback_url": url})
    response = await hooked.submit(body, "application/json")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "callback_not_allowed"
    assert why in response.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/hook",
        "http://user:pass@127.0.0.1/hook",
        "http://127.0.0.1/hook#frag",
        "/relative/hook",
        "http://127.0.0.1:99999/hook",
    ],
)
async def test_a_malformed_callback_url_is_422(hooked: Dockguard, url: str) -> None:
    body = json.dumps({"dockerfile": HAPPY, "callback_url": url})
    response = await hooked.submit(body, "application/json")
    assert (response.status_code, response.json()["code"]) == (422, "request_invalid")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/hook",
        "http://[64:ff9b::7f00:1]/hook",
    ],
)
async def test_a_wildcard_never_allows_loopback_link_local_or_metadata(
    instances: Instances, url: str
) -> None:
    anywhere = await instances.get(callback_allowed_hosts=["*"], **FAST)
    body = json.dumps({"dockerfile": HAPPY, "callback_url": url})
    response = await anywhere.submit(body, "application/json")
    assert (response.status_code, response.json()["code"]) == (400, "callback_not_allowed")


async def test_a_name_that_resolves_to_loopback_is_never_called(
    instances: Instances, receiver: Receiver
) -> None:
    anywhere = await instances.get(callback_allowed_hosts=["*"], **FAST)
    url = receiver.url.replace("127.0.0.1", "localhost")  # allowed by "*", resolves to loopback
    job = await submit(anywhere, HAPPY, url)
    final = await settled(anywhere, job["id"], 1)
    assert final["callback"]["attempts"][0]["error"] == "address_not_allowed"
    await asyncio.sleep(0.5)
    assert receiver.calls == []


async def test_webhooks_are_off_without_an_allowlist(dockguard: Dockguard) -> None:
    body = json.dumps({"dockerfile": HAPPY, "callback_url": "http://198.51.100.7/hook"})
    response = await dockguard.submit(body, "application/json")
    assert (response.status_code, response.json()["code"]) == (400, "callback_not_allowed")
    assert "webhooks are off" in response.json()["detail"]


async def test_a_form_submission_takes_a_callback_url(
    hooked: Dockguard, receiver: Receiver
) -> None:
    response = await hooked.client.post(
        "/v1/jobs",
        files={"dockerfile": ("Dockerfile", HAPPY.encode())},
        data={"callback_url": receiver.url},
    )
    assert response.status_code == 202, response.text
    hooked.submitted.append(response.json()["id"])
    (call,) = await receiver.wait_calls(1)
    assert json.loads(call.body)["id"] == response.json()["id"]
    assert callbacks.verify(SECRET.encode(), call.headers[callbacks.SIGNATURE_HEADER], call.body)
