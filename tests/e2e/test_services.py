"""The composition root: services built from the settings alone must honour every setting that
protects data, whichever object writes it (issue 8: no store may be built without its key)."""

from __future__ import annotations

import uuid

from cryptography.fernet import Fernet
from redis.asyncio import Redis

from dockguard.models import Job
from dockguard.services import Services
from dockguard.settings import Settings
from dockguard.store.keys import dockerfile_key, job_key
from tests.e2e.conftest import SCRATCH_DB

TEXT = "FROM busybox:latest\nRUN echo the-clients-secret-build-step\n"


async def test_services_from_settings_with_a_key_store_only_ciphertext(
    redis: Redis, redis_port: int
) -> None:
    settings = Settings(
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{redis_port}/{SCRATCH_DB}",
        encryption_key=Fernet.generate_key().decode(),
        build_network="none",
    )
    services = await Services.open(settings)
    try:
        job = Job(id=uuid.uuid4().hex, dockerfile_sha256="0" * 64, dockerfile_bytes=len(TEXT))
        await services.store.create(job, TEXT, deadline_s=60)  # the API's way in
        raw = await redis.get(dockerfile_key(job.id))
        assert raw is not None and raw.startswith(b"fernet:")
        assert b"the-clients-secret" not in raw and b"FROM" not in raw
        assert await redis.exists(job_key(job.id))
        assert await services.dockerfiles.get(job.id) == TEXT  # the worker's way back
        await services.dockerfiles.put(job.id, TEXT)  # and any other write: ciphertext too
        rewritten = await redis.get(dockerfile_key(job.id))
        assert rewritten is not None and rewritten.startswith(b"fernet:") and rewritten != raw
    finally:
        await services.close()
