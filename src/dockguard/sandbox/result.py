"""Reading `/data/perf.json` out of a stopped container, treating every byte as hostile.

The file is fetched through the archive API with a byte cap while streaming (never an unbounded
tar in memory), must be exactly one regular file, and must be strict JSON: UTF-8, an object,
finite numbers, bounded depth. Pure parsing lives in `parse_result` for unit tests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import tarfile
from typing import Any

import aiodocker
import aiohttp

from dockguard.errors import ErrorCode, JobFailure
from dockguard.models import JobResult

RESULT_PATH = "/data/perf.json"
MAX_DEPTH = 32
_TAR_OVERHEAD = 16 * 1024
_FILE_TYPE_BITS = {
    1 << 31: "a directory",
    1 << 27: "a symbolic link",
    1 << 26: "a device",
    1 << 25: "a named pipe",
    1 << 24: "a socket",
    1 << 21: "a character device",
    1 << 19: "not a regular file",
}  # Go's os.FileMode type bits, as the engine reports them


def _fail(code: ErrorCode, message: str) -> JobFailure:
    return JobFailure(code, message)


async def fetch_result(
    docker: aiodocker.Docker, container_id: str, max_bytes: int, timeout_s: float = 30
) -> bytes:
    """The raw bytes of perf.json in the stopped container, after every check on its kind/size."""
    async with asyncio.timeout(timeout_s):
        stat = await _stat(docker, container_id)
        if stat is None:
            raise _fail(ErrorCode.RESULT_MISSING, f"the job did not write {RESULT_PATH}")
        _check_stat(stat, max_bytes)
        archive = await _read_capped(docker, container_id, max_bytes + _TAR_OVERHEAD)
    return _single_regular_file(archive, max_bytes)


async def _stat(docker: aiodocker.Docker, container_id: str) -> dict[str, Any] | None:
    try:
        async with docker._query(
            f"containers/{container_id}/archive", "HEAD", params={"path": RESULT_PATH}
        ) as response:
            header = response.headers.get("X-Docker-Container-Path-Stat", "")
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise
    try:
        stat = json.loads(base64.b64decode(header))
    except ValueError as exc:
        raise _fail(ErrorCode.INTERNAL_ERROR, "reading the result's file status failed") from exc
    return stat if isinstance(stat, dict) else None


def _check_stat(stat: dict[str, Any], max_bytes: int) -> None:
    mode = int(stat.get("mode", 0))
    if stat.get("linkTarget"):
        mode |= 1 << 27
    for bit, kind in _FILE_TYPE_BITS.items():
        if mode & bit:
            raise _fail(
                ErrorCode.RESULT_NOT_REGULAR_FILE, f"{RESULT_PATH} is {kind}, not a regular file"
            )
    if int(stat.get("size", 0)) > max_bytes:
        raise _too_large(max_bytes)


def _too_large(max_bytes: int) -> JobFailure:
    return _fail(ErrorCode.RESULT_TOO_LARGE, f"{RESULT_PATH} is larger than {max_bytes} bytes")


async def _read_capped(docker: aiodocker.Docker, container_id: str, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async with docker._query(
        f"containers/{container_id}/archive",
        "GET",
        params={"path": RESULT_PATH},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
    ) as response:
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise _too_large(cap - _TAR_OVERHEAD)
            chunks.append(chunk)
    return b"".join(chunks)


def _single_regular_file(archive: bytes, max_bytes: int) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) != 1:
                raise _fail(ErrorCode.RESULT_NOT_REGULAR_FILE, f"{RESULT_PATH} is not one file")
            member = members[0]
            if not member.isreg():
                raise _fail(
                    ErrorCode.RESULT_NOT_REGULAR_FILE, f"{RESULT_PATH} is not a regular file"
                )
            if member.size > max_bytes:
                raise _too_large(max_bytes)
            extracted = tar.extractfile(member)
            data = extracted.read(max_bytes + 1) if extracted else b""
    except tarfile.TarError as exc:
        raise _fail(ErrorCode.RESULT_INVALID, f"{RESULT_PATH} could not be read") from exc
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def parse_result(raw: bytes) -> JobResult:
    """Strict JSON → JobResult, or a `result_invalid` JobFailure that says what is wrong."""
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise _invalid("it is not UTF-8") from exc
    except RecursionError as exc:
        raise _invalid("it is nested too deeply") from exc
    except ValueError as exc:
        # Also catches integers longer than Python's int max str digits.
        raise _invalid("it is not strict JSON with finite numbers") from exc
    if not isinstance(data, dict):
        raise _invalid("it must be a JSON object")
    if _depth(data) > MAX_DEPTH:
        raise _invalid(f"it is nested deeper than {MAX_DEPTH} levels")
    perf = data.get("perf")
    if perf is not None and (isinstance(perf, bool) or not isinstance(perf, int | float)):
        raise _invalid("its `perf` member must be a number")
    try:
        value = None if perf is None else float(perf)
    except OverflowError as exc:
        raise _invalid("its `perf` member is out of range") from exc
    return JobResult(perf=value, data=data)


def _invalid(why: str) -> JobFailure:
    return _fail(ErrorCode.RESULT_INVALID, f"{RESULT_PATH} is invalid: {why}")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a deep document must not exhaust the stack here either)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest
