"""The pure parts of `POST /v1/jobs` beyond the Dockerfile: the Idempotency-Key header, the
submission fingerprint, and the multipart reader fed a body in chunks (no server, no socket:
the end-to-end tier sends the same through HTTP)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from starlette.requests import Request
from starlette.types import Message

from dockguard.api import multipart
from dockguard.api.submissions import check_idempotency_key, fingerprint
from dockguard.errors import ErrorCode, SubmissionError
from dockguard.models import RequestedLimits

BOUNDARY = "dgboundary"
DOCKERFILE = b'FROM busybox:latest\nCMD ["true"]\n'


@pytest.mark.parametrize("value", ["a", "k" * 200, "nightly 2027-01-15 #3", "~!@{}\"'"])
def test_good_idempotency_keys(value: str) -> None:
    assert check_idempotency_key([value]) == value


def test_no_idempotency_key() -> None:
    assert check_idempotency_key([]) is None


@pytest.mark.parametrize("values", [[""], ["k" * 201], ["tab\there"], ["é"], ["\x7f"], ["a", "b"]])
def test_bad_idempotency_keys(values: list[str]) -> None:
    with pytest.raises(SubmissionError) as caught:
        check_idempotency_key(values)
    assert (caught.value.code, caught.value.http_status) == (ErrorCode.REQUEST_INVALID, 400)


def test_fingerprint_is_the_dockerfile_and_the_limits() -> None:
    assert fingerprint("a" * 64) == fingerprint("a" * 64)
    assert fingerprint("a" * 64) != fingerprint("b" * 64)
    assert len(fingerprint("a" * 64)) == 64
    five = RequestedLimits(run_timeout_s=5)
    assert fingerprint("a" * 64, five) == fingerprint("a" * 64, RequestedLimits(run_timeout_s=5.0))
    assert fingerprint("a" * 64, five) != fingerprint("a" * 64)
    assert fingerprint("a" * 64, five) != fingerprint("a" * 64, RequestedLimits(run_timeout_s=6))


def part(name: str, data: bytes, filename: str | None = "Dockerfile", extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n"
    return head.encode() + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request(chunks: Iterable[bytes], content_type: str | None = None, **headers: str) -> Request:
    """A Starlette request whose body arrives in `chunks`; it records how many were read."""
    pending = list(chunks)
    raw_headers = [
        (b"content-type", (content_type or f"multipart/form-data; boundary={BOUNDARY}").encode())
    ] + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": raw_headers}
    read = []

    async def receive() -> Message:
        chunk = pending.pop(0) if pending else b""
        read.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    req = Request(scope, receive)
    req.state.read = read
    return req


async def read(req: Request, limit: int = 1024) -> bytes:
    return await multipart.read_dockerfile(req, limit)


async def refused(req: Request, code: ErrorCode, status: int, limit: int = 1024) -> str:
    with pytest.raises(SubmissionError) as caught:
        await read(req, limit)
    assert (caught.value.code, caught.value.http_status) == (code, status)
    return caught.value.message


async def test_file_field_byte_by_byte() -> None:
    body = form(part("dockerfile", DOCKERFILE, extra="Content-Type: application/octet-stream\r\n"))
    assert await read(request([body[i : i + 1] for i in range(len(body))])) == DOCKERFILE


async def test_plain_field() -> None:
    assert await read(request([form(part("dockerfile", DOCKERFILE, filename=None))])) == DOCKERFILE


async def test_exactly_at_the_limit() -> None:
    data = b"x" * 1024
    assert await read(request([form(part("dockerfile", data))])) == data


async def test_field_over_the_limit_is_refused_before_the_rest_is_read() -> None:
    head = part("dockerfile", b"")[:-2]  # headers, and the data starts
    chunks = [head, b"x" * 600, b"x" * 600] + [b"x" * 600] * 50 + [b"\r\n--" + BOUNDARY.encode()]
    req = request(chunks)
    message = await refused(req, ErrorCode.DOCKERFILE_TOO_LARGE, 413)
    assert "1024-byte limit" in message
    assert len(req.state.read) == 3  # the part passed the limit in the third chunk: no further


async def test_declared_body_over_the_bound_is_refused_unread() -> None:
    req = request([b"never read"], content_length=str(1024 + multipart.FRAMING_BYTES + 1))
    await refused(req, ErrorCode.DOCKERFILE_TOO_LARGE, 413)
    assert req.state.read == []


async def test_body_over_the_bound_is_refused() -> None:
    # Large headers are not the Dockerfile, but the body as a whole is still bounded.
    filler = part("dockerfile", b"FROM x\n", extra="X-Pad: " + "p" * 4000 + "\r\n")
    chunks = [filler[:100]] + [filler[100:]] * 5
    await refused(request(chunks), ErrorCode.DOCKERFILE_TOO_LARGE, 413, limit=100)


@pytest.mark.parametrize(
    "body",
    [
        form(part("other", DOCKERFILE)),  # no dockerfile
        form(part("dockerfile", DOCKERFILE), part("extra", b"1")),
        form(part("extra", b"1"), part("dockerfile", DOCKERFILE)),
        form(part("dockerfile", DOCKERFILE), part("dockerfile", DOCKERFILE)),
        form(part("dockerfile", DOCKERFILE, extra="Content-Transfer-Encoding: base64\r\n")),
        form(),  # no part at all
        form(part("dockerfile", DOCKERFILE))[:-8],  # no closing boundary
        b"this is not multipart at all",
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nFROM x\r\n--{BOUNDARY}--\r\n".encode(),
        b"",
    ],
)
async def test_anything_but_one_dockerfile_field_is_invalid(body: bytes) -> None:
    await refused(request([body]), ErrorCode.REQUEST_INVALID, 400)


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "b" * 100,
    ],
)
async def test_bad_boundaries(content_type: str) -> None:
    body = form(part("dockerfile", DOCKERFILE))
    await refused(request([body], content_type), ErrorCode.REQUEST_INVALID, 400)
