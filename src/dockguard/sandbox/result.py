"""The job's result: `/data/perf.json` read from the stopped container (see archive.py for how a
file is read safely), then parsed as strict JSON: UTF-8, an object, finite numbers, bounded
depth. Pure parsing lives in `parse_result` for unit tests."""

from __future__ import annotations

import json
import math
from typing import Any

import aiodocker

from dockguard.errors import ErrorCode, JobFailure
from dockguard.models import JobResult
from dockguard.sandbox import archive

RESULT_PATH = "/data/perf.json"
MAX_DEPTH = 32
MAX_MEMBERS = 1000  # object members and array items, all levels together

_CODES = {
    archive.FileMissing: ErrorCode.RESULT_MISSING,
    archive.NotRegularFile: ErrorCode.RESULT_NOT_REGULAR_FILE,
    archive.FileTooLarge: ErrorCode.RESULT_TOO_LARGE,
    archive.UnreadableArchive: ErrorCode.RESULT_INVALID,
}


async def fetch_result(docker: aiodocker.Docker, container_id: str, max_bytes: int) -> bytes:
    """The raw bytes of perf.json in the stopped container, after every check on its kind/size."""
    try:
        return await archive.read_file(docker, container_id, RESULT_PATH, max_bytes)
    except archive.FileMissing as exc:
        raise JobFailure(ErrorCode.RESULT_MISSING, f"the job did not write {RESULT_PATH}") from exc
    except archive.ArchiveError as exc:
        raise JobFailure(_CODES[type(exc)], str(exc)) from exc


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
        if "integer string conversion" in str(exc):  # Python's int max str digits limit
            raise _invalid("it holds an integer with too many digits") from exc
        raise _invalid("it is not strict JSON with finite numbers") from exc
    if not isinstance(data, dict):
        raise _invalid("it must be a JSON object")
    if _has_lone_surrogate(text):
        # `"\ud800"` parses, but is no Unicode text: the result could never be stored.
        raise _invalid("it holds a \\u escape of a lone UTF-16 surrogate, which is not text")
    depth, members = _shape(data)
    if depth > MAX_DEPTH:
        raise _invalid(f"it is nested deeper than {MAX_DEPTH} levels")
    if members > MAX_MEMBERS:
        raise _invalid(f"it has more than {MAX_MEMBERS} members and items")
    perf = data.get("perf")
    if perf is not None and (isinstance(perf, bool) or not isinstance(perf, int | float)):
        raise _invalid("its `perf` member must be a number")
    try:
        value = None if perf is None else float(perf)
    except OverflowError as exc:
        raise _invalid("its `perf` member is out of range") from exc
    return JobResult(perf=value, data=data)


def _has_lone_surrogate(text: str) -> bool:
    """Whether the parsed document holds a code point that cannot be encoded as UTF-8 (JSON's
    `\\uD800` to `\\uDFFF` escapes, unpaired); decoding the document found no raw surrogates."""
    if "\\u" not in text and "\\U" not in text:
        return False
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _invalid(why: str) -> JobFailure:
    return JobFailure(ErrorCode.RESULT_INVALID, f"{RESULT_PATH} is invalid: {why}")


def _shape(value: Any) -> tuple[int, int]:
    """Nesting depth and number of members, iteratively (a deep document must not exhaust the
    stack here either)."""
    deepest = members = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        for child in children:
            members += 1
            stack.append((child, depth + 1))
    return deepest, members
