"""The HTTP parser's own refusals are problem documents too (api/server.py)."""

from __future__ import annotations

import json

from dockguard.api.server import malformed_request_answer


def test_a_malformed_request_gets_a_problem_document_with_the_security_headers() -> None:
    answer = malformed_request_answer("r" * 32)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/problem+json"
    assert int(headers["content-length"]) == len(body)
    assert headers["x-request-id"] == "r" * 32
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["code"] == "request_invalid" and problem["status"] == 400
    assert problem["request_id"] == "r" * 32
