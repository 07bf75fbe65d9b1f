"""Idempotency-Key records: a client's key → the fingerprint of the submission it came with and
the job that submission made, expiring with the job (the job TTL).

A submission claims its key only once its job is stored, and with SET NX: of two concurrent
submissions with one key exactly one claim is recorded, and the other answers with that job
(its own, never queued, is deleted). A claim is released (compare-and-delete, so never someone
else's) when its job could not be queued, or has expired before the claim."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from redis.asyncio import Redis

from dockguard.store.keys import idempotency_key

# Deletes the key only if it still holds this very claim.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    fingerprint: str  # sha256 of what was submitted (see api/submissions.fingerprint)
    job_id: str

    def dump(self) -> str:
        return json.dumps({"fingerprint": self.fingerprint, "job_id": self.job_id})

    @classmethod
    def load(cls, raw: bytes | str) -> Claim:
        data = json.loads(raw)
        return cls(fingerprint=str(data["fingerprint"]), job_id=str(data["job_id"]))


class IdempotencyKeys:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._release = redis.register_script(_RELEASE)

    async def get(self, key: str) -> Claim | None:
        raw = await self._redis.get(_key(key))
        return None if raw is None else Claim.load(raw)

    async def claim(self, key: str, claim: Claim) -> Claim | None:
        """Record `claim` unless `key` holds one already; returns that earlier one, or None
        when `claim` was recorded."""
        while True:
            if await self._redis.set(_key(key), claim.dump(), nx=True, ex=self._ttl_s):
                return None
            earlier = await self.get(key)
            if earlier is not None:  # else it expired or was released in between: try again
                return earlier

    async def release(self, key: str, claim: Claim) -> None:
        await self._release(keys=[_key(key)], args=[claim.dump()])


def _key(key: str) -> str:
    return idempotency_key(hashlib.sha256(key.encode()).hexdigest())
