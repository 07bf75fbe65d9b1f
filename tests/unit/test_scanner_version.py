"""TrivyScanner's reading of `trivy version` (the DB's metadata): one read at a time however many
ask, trusted 30 s when there is a DB and 2 s when there is none (against a fake backend that
counts its runs; the real trivy: tests/e2e/test_scanning.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiodocker
import pytest

from dockguard.models import ScannerLimits
from dockguard.scanning import scanner as scanner_module
from dockguard.scanning.scanner import TrivyScanner
from dockguard.settings import Settings
from dockguard.store.scan_cache import ScanCache

DB = {"Version": 2, "UpdatedAt": datetime.now(UTC).isoformat()}


class CountingBackend:
    name = "local"

    def __init__(self) -> None:
        self.runs = 0
        self.db: dict[str, Any] | None = None

    async def verify(self) -> str | None:
        return None

    async def run(
        self,
        args: Sequence[str],
        *,
        work: Path | None = None,
        job_id: str | None = None,
        network: bool = False,
        timeout_s: float,
    ) -> bytes:
        assert list(args[:1]) == ["version"]
        self.runs += 1
        await asyncio.sleep(0.05)  # long enough for the others to ask meanwhile
        answer: dict[str, Any] = {"Version": "0.76.0"}
        if self.db is not None:
            answer["VulnerabilityDB"] = self.db
        return json.dumps(answer).encode()


def scanner(backend: CountingBackend) -> TrivyScanner:
    settings = Settings(_env_file=None)
    limits = ScannerLimits.from_settings(settings)
    no_docker = cast(aiodocker.Docker, None)  # the local backend's version read needs none
    return TrivyScanner(backend, settings, no_docker, cast(ScanCache, None), limits)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    # The scanner's own clock only: asyncio's must run on.
    monkeypatch.setattr(scanner_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


async def test_many_at_once_with_no_db_read_it_once(clock: Clock) -> None:
    backend = CountingBackend()
    trivy = scanner(backend)
    statuses = await asyncio.gather(*(trivy.status() for _ in range(50)))
    assert backend.runs == 1
    assert all(status.db is None and not status.db_usable for status in statuses)


async def test_a_missing_db_is_looked_for_again_after_2_s(clock: Clock) -> None:
    backend = CountingBackend()
    trivy = scanner(backend)
    assert (await trivy.status()).db is None
    backend.db = DB  # `scanner update-db`, elsewhere
    clock.now += 1.9
    assert (await trivy.status()).db is None and backend.runs == 1
    clock.now += 0.2
    assert (await trivy.status()).db_usable and backend.runs == 2


async def test_a_db_is_trusted_for_30_s(clock: Clock) -> None:
    backend = CountingBackend()
    backend.db = DB
    trivy = scanner(backend)
    assert (await trivy.status()).db_usable
    backend.db = None
    clock.now += 29.9
    assert (await trivy.status()).db_usable and backend.runs == 1
    clock.now += 0.2
    assert (await trivy.status()).db is None and backend.runs == 2
