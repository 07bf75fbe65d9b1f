"""The one routine that removes what dockguard created in the engine: a job's objects when it
ends (by its job label), and anything managed that outlived every job (the sweeper, by age).
Containers go first (with their anonymous volumes), then networks, volumes, and images newest
first, so that no image is still the parent of another when its turn comes. Nothing is retried:
an object the engine will not remove now is logged, and the next pass or the sweeper gets it."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import aiodocker
from aiodocker.networks import DockerNetwork
from aiodocker.volumes import DockerVolume

log = logging.getLogger(__name__)

Filters = dict[str, list[str]]


async def remove_objects(
    docker: aiodocker.Docker, filters: Filters, *, created_before: float | None = None
) -> int:
    """Remove every container, network, volume and image matching `filters` (and created before
    `created_before`, a Unix time, when given); returns how many were removed."""
    cutoff = time.time() + 1 if created_before is None else created_before
    removed = 0
    for container in await docker.containers.list(all=True, filters=filters):
        if float(container["Created"]) < cutoff:
            removed += await _remove(container.delete(force=True, v=True))
    for network in await docker.networks.list(filters=filters):
        if _timestamp(network.get("Created")) < cutoff:
            removed += await _remove(DockerNetwork(docker, network["Id"]).delete())
    for volume in (await docker.volumes.list(filters=filters)).get("Volumes") or []:
        if _timestamp(volume.get("CreatedAt")) < cutoff:
            removed += await _remove(DockerVolume(docker, volume["Name"]).delete())
    images = await docker.images.list(all=True, filters=filters)
    for image in sorted(images, key=lambda image: int(image.get("Created", 0)), reverse=True):
        if float(image.get("Created", cutoff)) < cutoff:
            # Not forced: an image is removed only once nothing (no child) depends on it.
            removed += await _remove(docker.images.delete(image["Id"], force=False))
    return removed


def _timestamp(value: str | None) -> float:
    try:
        return datetime.fromisoformat(value or "").timestamp()
    except ValueError:
        return time.time()  # unknown age: treated as new


async def ignore_missing(call: Awaitable[object]) -> None:
    """Await a removal; an object that is already gone (404) is fine."""
    try:
        await call
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise


async def _remove(call: Awaitable[Any]) -> int:
    try:
        await call
    except aiodocker.DockerError as exc:
        if exc.status not in (404, 409):  # gone already, or still in use (next pass)
            log.warning("could not remove an engine object", extra={"why": str(exc)[:200]})
        return 0
    return 1
