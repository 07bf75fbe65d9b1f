"""api/startup.py: what an API process whose startup failed tells the `serve` that started it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from dockguard.api import startup


def test_the_latest_failure_is_reported_on_one_line() -> None:
    with startup.reporting() as reason:
        assert reason() is None
        startup.failed(RuntimeError("an earlier one"))
        startup.failed(ConnectionError("Error 111 connecting\nto 127.0.0.1:1."))
        assert reason() == "ConnectionError: Error 111 connecting to 127.0.0.1:1."
        directory = Path(os.environ[startup.REPORT_ENV])
        assert directory.stat().st_mode & 0o077 == 0  # this user's only
        assert [p.name for p in directory.iterdir()] == ["failure"]  # no temporary file left
    assert startup.REPORT_ENV not in os.environ
    assert not directory.exists()


def test_a_long_or_empty_reason_is_bounded_or_named() -> None:
    with startup.reporting() as reason:
        startup.failed(ValueError("x" * 10_000))
        found = reason()
        assert found is not None and len(found) == 500 and found.startswith("ValueError: xxx")
    with startup.reporting() as reason:
        startup.failed(TimeoutError())
        assert reason() == "TimeoutError"


def test_without_a_serve_listening_nothing_is_written() -> None:
    assert startup.REPORT_ENV not in os.environ
    startup.failed(RuntimeError("nobody asked"))  # no error, nowhere to write


def test_with_no_temporary_directory_nothing_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "not-there"))
    with startup.reporting() as reason:
        assert startup.REPORT_ENV not in os.environ
        startup.failed(RuntimeError("nowhere to say it"))
        assert reason() is None
