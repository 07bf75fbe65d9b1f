"""The result parser: strict JSON objects only, within the size and depth caps."""

from __future__ import annotations

import json

import pytest

from dockguard.errors import ErrorCode, JobFailure
from dockguard.sandbox import parse_result


@pytest.mark.parametrize(
    ("raw", "perf"),
    [(b'{"perf": 1}', 1.0), (b'{"perf": -0.5, "x": [1, {"y": null}]}', -0.5), (b"{}", None)],
)
def test_result_accepts_strict_objects(raw: bytes, perf: float | None) -> None:
    result = parse_result(raw)
    assert result.perf == perf
    assert result.data == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"perf": NaN}',
        b'{"perf": Infinity}',
        b'{"perf": 1e999}',
        b'{"perf": "0.9"}',
        b'{"perf": true}',
        b'{"perf": ' + b"9" * 400 + b"}",  # an integer too large for a float
        b'{"n": ' + b"1" * 100_000 + b"}",  # beyond Python's int digit limit
        b"[1, 2]",
        b"0.9",
        b"\xff\xfe{}",
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
        b'{"a": ' * 40 + b"1" + b"}" * 40,  # deeper than MAX_DEPTH
        b'{"perf": 1',
    ],
)
def test_result_rejects_everything_else(raw: bytes) -> None:
    with pytest.raises(JobFailure) as caught:
        parse_result(raw)
    assert caught.value.code == ErrorCode.RESULT_INVALID
