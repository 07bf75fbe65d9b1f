"""The submitted Dockerfile at rest: under its own key, in the main Redis or its own
(`DOCKGUARD_DOCKERFILE_REDIS_URL`), encrypted when `DOCKGUARD_ENCRYPTION_KEY` is set, and gone
when its job ends unless `DOCKGUARD_KEEP_DOCKERFILE_S` keeps it a while for reproducing a bug.

Stored values say how they were written: `plain:<utf-8 text>` or `fernet:<Fernet token>`. A
plain value is still read when a key is configured (it was written before encryption was turned
on); an encrypted value that no configured key opens is never returned as text: reading it
raises `DockerfileUnreadable`, which fails the job with `internal_error`.

Fernet authenticates as well as encrypts, but encryption here protects confidentiality only:
whoever can write to Redis can replace the job queue itself, so keep Redis private either way.

Rotating the key. `DOCKGUARD_ENCRYPTION_KEY` takes a comma-separated list of Fernet keys; the
first encrypts every new Dockerfile, all of them decrypt. Make a key with
    python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
1. Add the new key after the old one everywhere (`DOCKGUARD_ENCRYPTION_KEY=old,new`) and restart
   every API and worker process, so that every process can read the new key before any writes
   with it; then put it first everywhere (`new,old`) and restart again.
2. Wait until every Dockerfile written with the old key is gone: at most DOCKGUARD_JOB_TTL_S
   after the last write with it, plus DOCKGUARD_KEEP_DOCKERFILE_S when that keeps Dockerfiles
   after their job ends.
3. Drop the old key: `DOCKGUARD_ENCRYPTION_KEY=new`, and restart again.
A job whose Dockerfile was written with a key dropped too early fails with `internal_error`
("the job's Dockerfile could not be decrypted"); nothing else is affected.
"""

from __future__ import annotations

import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from dockguard.errors import ErrorCode, JobFailure
from dockguard.store.keys import dockerfile_key

log = logging.getLogger(__name__)

_PLAIN = b"plain:"
_FERNET = b"fernet:"


class DockerfileUnreadable(JobFailure):
    """The stored Dockerfile cannot be turned back into text (no configured key opens it)."""

    def __init__(self, why: str) -> None:
        super().__init__(
            ErrorCode.INTERNAL_ERROR, f"the job's Dockerfile could not be decrypted: {why}"
        )


def cipher(keys: SecretStr | None) -> MultiFernet | None:
    """The comma-separated Fernet keys of DOCKGUARD_ENCRYPTION_KEY; the first one encrypts."""
    if keys is None:
        return None
    fernets = [Fernet(key.strip()) for key in keys.get_secret_value().split(",") if key.strip()]
    return MultiFernet(fernets) if fernets else None


def seal(text: str, fernet: MultiFernet | None) -> bytes:
    data = text.encode("utf-8")
    return _PLAIN + data if fernet is None else _FERNET + fernet.encrypt(data)


def unseal(raw: bytes, fernet: MultiFernet | None) -> str:
    if raw.startswith(_PLAIN):
        return raw[len(_PLAIN) :].decode("utf-8")
    if not raw.startswith(_FERNET):
        raise DockerfileUnreadable("the stored value is in an unknown format")
    if fernet is None:
        raise DockerfileUnreadable("it is encrypted and DOCKGUARD_ENCRYPTION_KEY is not set")
    try:
        return fernet.decrypt(raw[len(_FERNET) :]).decode("utf-8")
    except InvalidToken:
        raise DockerfileUnreadable(
            "none of the keys in DOCKGUARD_ENCRYPTION_KEY opens it (was its key dropped before "
            "the Dockerfiles written with it expired?)"
        ) from None


class RedisDockerfileStore:
    """`ports.DockerfileStore` in Redis. `fernet` has no default: a store that writes plain
    text is always asked for (`cipher(None)`), never made by accident."""

    def __init__(
        self,
        redis: Redis,
        ttl_s: int,
        *,
        fernet: MultiFernet | None,
        keep_s: int = 0,
    ) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._keep_s = keep_s
        self._fernet = fernet

    async def put(self, job_id: str, text: str) -> None:
        """Store the Dockerfile for at most the job TTL (a job that never ends cannot keep it)."""
        await self._redis.set(dockerfile_key(job_id), seal(text, self._fernet), ex=self._ttl_s)

    async def get(self, job_id: str) -> str | None:
        """The Dockerfile, or None once it has expired. Raises DockerfileUnreadable."""
        raw = await self._redis.get(dockerfile_key(job_id))
        if raw is None:
            return None
        try:
            return unseal(raw, self._fernet)
        except DockerfileUnreadable as exc:
            log.error("stored Dockerfile is unreadable", extra={"why": exc.message})
            raise

    async def delete(self, job_id: str) -> None:
        await self._redis.delete(dockerfile_key(job_id))

    async def release(self, job_id: str) -> None:
        """The job has ended: delete its Dockerfile, or keep it DOCKGUARD_KEEP_DOCKERFILE_S more.

        Never raises: the verdict is already written, and the key expires with the job TTL."""
        try:
            if self._keep_s > 0:
                await self._redis.expire(dockerfile_key(job_id), self._keep_s)
            else:
                await self.delete(job_id)
        except RedisError as exc:
            log.warning(
                "could not release the Dockerfile; it expires with the job TTL",
                extra={"why": repr(exc)[:300]},
            )
