"""The unit tier: pure logic, no Redis, no Docker Engine, no network. The end-to-end fixtures live
in tests/e2e/conftest.py, which pytest never loads for these tests; the guard below makes any
attempt to connect somewhere fail the test that made it, so the tier stays that way."""

from __future__ import annotations

import socket
from typing import NoReturn

import pytest


def _refuse(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError(f"a unit test tried to connect to {args[1:]!r}: move it to tests/e2e")


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
