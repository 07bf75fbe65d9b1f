"""Scan results cached in Redis: findings (not verdicts, so a policy change applies at once)
keyed by what determines them. A Dockerfile's findings depend on its bytes and the scanner
version; an image's on the image id, the scanner version and the DB it was scanned with."""

from __future__ import annotations

from pydantic import TypeAdapter
from redis.asyncio import Redis

from dockguard.models import Finding

_FINDINGS = TypeAdapter(list[Finding])


class ScanCache:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def get(self, key: str) -> list[Finding] | None:
        if not self._ttl_s:
            return None
        raw = await self._redis.get(key)
        return None if raw is None else _FINDINGS.validate_json(raw)

    async def put(self, key: str, findings: list[Finding]) -> None:
        if self._ttl_s:
            await self._redis.set(key, _FINDINGS.dump_json(findings), ex=self._ttl_s)
