"""The webhook sender: runs beside each worker, claims the jobs whose webhook is due (see
store/callbacks.py) and POSTs each final job to its `callback_url`, signed (callbacks.py).

Each attempt is recorded on the job (`callback.attempts`). A connection failure, a timeout, a
5xx, 408 or 429 is tried again after `DOCKGUARD_CALLBACK_BACKOFF_S`, doubled after each failure
(at most `_MAX_BACKOFF_S`, or the setting when it is larger), up to
`DOCKGUARD_CALLBACK_MAX_ATTEMPTS` attempts in all; any other answer is final (2xx:
`callback.delivered`). The name is resolved at each attempt (in threads of the sender's own), every
address it resolves to is checked (no loopback, link-local or metadata address unless the
allowlist names it), and the connection goes to the checked address itself (Host and TLS name
kept), so a DNS answer that changes between the check and the connection cannot redirect it.
Redirects are not followed, proxies from the environment are not used, and the receiver's body
is never read (so the connection is closed, never reused for another receiver)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from dockguard import __version__, callbacks
from dockguard.errors import SubmissionError
from dockguard.models import CallbackAttempt, Job, utcnow
from dockguard.ports import CallbackQueue, JobStore
from dockguard.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often the sender looks for due webhooks
_CONCURRENCY = 16  # webhooks one sender has in flight at most
_RESOLVERS = 4  # threads for name lookups; more lookups wait their turn (within the timeout)
_MAX_BACKOFF_S = 300.0
_RESOLVE_TIMEOUT_S = 5.0
_RETRIED_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class _Outcome:
    attempt: CallbackAttempt
    retry: bool


def _failed_attempt() -> CallbackAttempt:
    return CallbackAttempt(at=utcnow(), error="connection_failed", duration_s=0.0)


class CallbackSender:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        outbox: CallbackQueue,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._outbox = outbox
        self._allowlist = callbacks.parse_allowlist(settings.callback_allowed_hosts)
        secret = settings.callback_secret
        self._secret = None if secret is None else secret.get_secret_value().encode()
        self._client = httpx.AsyncClient(
            transport=transport, trust_env=False, follow_redirects=False
        )
        # Name lookups block a thread each, for as long as a slow resolver takes (the timeout
        # only stops the wait): in a pool of their own, never the one the pipeline uses.
        self._resolver = ThreadPoolExecutor(_RESOLVERS, thread_name_prefix="callback-dns")
        # Claimed for at most one attempt's time, and a margin: then another sender may take it.
        self._lease_s = settings.callback_timeout_s + _RESOLVE_TIMEOUT_S + 30

    async def run(self) -> None:
        """Send due webhooks until cancelled, up to `_CONCURRENCY` at a time: a slot is taken
        again as soon as its attempt ends, so a slow receiver holds up one slot, not a batch."""
        if self._allowlist and self._secret is None:
            log.warning(
                "webhooks are sent unsigned: set DOCKGUARD_CALLBACK_SECRET so receivers can "
                "check that a call comes from this service"
            )
        sending: set[asyncio.Task[None]] = set()
        try:
            while True:
                for job_id in await self._claim(_CONCURRENCY - len(sending)):
                    task = asyncio.create_task(self._deliver_logged(job_id))
                    sending.add(task)
                    task.add_done_callback(sending.discard)
                await asyncio.sleep(POLL_S)
        finally:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
            await self._client.aclose()
            self._resolver.shutdown(wait=False, cancel_futures=True)

    async def send_due(self) -> int:
        """One attempt for each webhook due now (up to `_CONCURRENCY`), all awaited; how many."""
        due = await self._claim(_CONCURRENCY)
        await asyncio.gather(*(self._deliver_logged(job_id) for job_id in due))
        return len(due)

    async def _claim(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        try:
            return await self._outbox.claim(lease_s=self._lease_s, limit=limit)
        except Exception:  # a hiccup (Redis down) must not stop the sender
            log.exception("webhook sender cannot read its queue; going on")
            return []

    async def _deliver_logged(self, job_id: str) -> None:
        """`deliver`, its failure (Redis) logged: the claim then runs out and it is tried again."""
        try:
            await self.deliver(job_id)
        except Exception:
            log.exception("webhook attempt failed", extra={"job_id": job_id})

    async def deliver(self, job_id: str) -> None:
        """One attempt for the job's webhook, recorded on the job, then retried later or done."""
        job = await self._store.get(job_id)
        if job is None or job.callback is None or job.callback.delivered:
            await self._outbox.done(job_id)
            return
        if len(job.callback.attempts) >= self._settings.callback_max_attempts:
            await self._outbox.done(job_id)  # a claim taken again after the last attempt
            return
        try:
            outcome = await self._attempt(job)
        except Exception:  # a bug here must still count as an attempt, so attempts stay bounded
            log.exception("webhook attempt failed unexpectedly", extra={"job_id": job_id})
            outcome = _Outcome(_failed_attempt(), retry=True)
        attempt = outcome.attempt

        def record(stored: Job) -> None:
            if stored.callback is not None:
                stored.callback.attempts.append(attempt)
                stored.callback.delivered = attempt.error is None

        recorded = await self._store.update(job_id, record)
        tries = len(job.callback.attempts) + 1
        extra = {
            "job_id": job_id,
            "request_id": job.request_id,
            "attempt": tries,
            "status_code": attempt.status_code,
        }
        if recorded is not None and outcome.retry and tries < self._settings.callback_max_attempts:
            backoff_s = self._settings.callback_backoff_s
            delay_s = min(backoff_s * 2 ** (tries - 1), max(_MAX_BACKOFF_S, backoff_s))
            log.info("webhook failed; will try again", extra={**extra, "error": attempt.error})
            await self._outbox.retry_at(job_id, time.time() + delay_s)
            return
        if attempt.error is None:
            log.info("webhook delivered", extra=extra)
        else:
            log.warning("webhook given up", extra={**extra, "error": attempt.error})
        await self._outbox.done(job_id)

    async def _attempt(self, job: Job) -> _Outcome:
        assert job.callback is not None
        started = time.monotonic()
        at = utcnow()

        def outcome(
            error: str | None, *, retry: bool = False, status_code: int | None = None
        ) -> _Outcome:
            attempt = CallbackAttempt.model_validate(
                {
                    "at": at,
                    "status_code": status_code,
                    "error": error,
                    "duration_s": round(time.monotonic() - started, 3),
                }
            )
            return _Outcome(attempt, retry)

        try:
            target = callbacks.check_url(job.callback.url, self._allowlist)
            address = await self._resolve(target)
        except SubmissionError:  # the allowlist changed since submission, or the name's answer
            return outcome("address_not_allowed")
        except TimeoutError:
            return outcome("timeout", retry=True)
        except OSError:
            return outcome("connection_failed", retry=True)
        except ValueError:  # a name the resolver refuses (an IDNA error): it never will resolve
            return outcome("address_not_allowed")
        try:
            status = await self._post(target, address, job)
        except (httpx.TimeoutException, TimeoutError):
            return outcome("timeout", retry=True)
        except httpx.HTTPError:
            return outcome("connection_failed", retry=True)
        if 200 <= status < 300:
            return outcome(None, status_code=status)
        retry = status >= 500 or status in _RETRIED_STATUSES
        return outcome("http_status", retry=retry, status_code=status)

    async def _resolve(self, target: callbacks.Target) -> callbacks.IPAddress:
        """The address to connect to; SubmissionError when any address the name has is one
        webhooks never go to (a name that points at loopback is refused, not skipped)."""
        loop = asyncio.get_running_loop()
        lookup = functools.partial(
            socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM
        )
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):  # the thread may go on: it is ours
            infos = await loop.run_in_executor(self._resolver, lookup)
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        refused = [a for a in addresses if not callbacks.address_allowed(a, target.patterns)]
        if not addresses or refused:
            raise callbacks.never_to(refused[0] if refused else target.host)
        return addresses[0]

    async def _post(self, target: callbacks.Target, address: callbacks.IPAddress, job: Job) -> int:
        body = job.model_dump_json().encode()
        host = f"[{address}]" if address.version == 6 else str(address)
        default_port = 443 if target.scheme == "https" else 80
        authority = target.host if target.port == default_port else f"{target.host}:{target.port}"
        if ":" in target.host:  # an IPv6 literal
            authority = authority.replace(target.host, f"[{target.host}]", 1)
        headers = {
            "Host": authority,
            "Content-Type": "application/json",
            "User-Agent": f"dockguard/{__version__}",
            "X-Dockguard-Job-Id": job.id,
        }
        if job.request_id is not None:  # the submission's, to follow it into the receiver
            headers["X-Request-ID"] = job.request_id
        if self._secret is not None:
            headers[callbacks.SIGNATURE_HEADER] = callbacks.sign(self._secret, body)
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request(
            "POST",
            f"{target.scheme}://{host}:{target.port}{target.path}",
            content=body,
            headers=headers,
            extensions=extensions,
            timeout=self._settings.callback_timeout_s,
        )
        async with asyncio.timeout(self._settings.callback_timeout_s + 1):
            response = await self._client.send(request, stream=True)
            with contextlib.suppress(httpx.HTTPError):
                await response.aclose()  # the body is never read
        return response.status_code
