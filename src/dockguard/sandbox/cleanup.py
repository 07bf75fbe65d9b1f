"""The one routine that removes what dockguard created in the engine: a job's objects when it
ends (by its job label), a container the watchdog found alive past its deadline (by the id it
has just listed, sandbox/watchdog.py), and anything managed that outlived every job (the
sweeper, by age).
Containers go first (with their anonymous volumes), then networks, volumes, and images, each
before its parent, so that no image is still the parent of another when its turn comes. What
the engine refuses as still in use gets at most two more passes, a second apart; anything else
it refuses is logged and left to the next cleanup or the sweeper. A job's cleanup first waits
for the engine to end the job's build (`wait_for_build_end`): a build stopped mid-step may still
commit an image. Only objects the engine lists are ever removed, never ids read elsewhere."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import aiodocker
from aiodocker.networks import DockerNetwork
from aiodocker.volumes import DockerVolume

from dockguard.sandbox import names

log = logging.getLogger(__name__)

Filters = dict[str, list[str]]
_PASSES = 3
_PASS_DELAY_S = 1.0
_BUILD_POLL_S = 0.1
_MANAGED: Filters = {"label": [f"{names.MANAGED_LABEL}=true"]}


async def remove_objects(
    docker: aiodocker.Docker, filters: Filters, *, created_before: float | None = None
) -> int:
    """Remove every container, network, volume and image matching `filters` (and created before
    `created_before`, a Unix time, when given); returns how many were removed."""
    cutoff = time.time() + 1 if created_before is None else created_before
    removed = 0
    for attempt in range(_PASSES):
        if attempt:
            await asyncio.sleep(_PASS_DELAY_S)
        done, in_use = await _remove_pass(docker, filters, cutoff)
        removed += done
        if not in_use:
            break
    return removed


async def wait_for_build_end(
    docker: aiodocker.Docker, job_id: str, *, timeout_s: float, quiet_s: float = 0.0
) -> bool:
    """Wait until the engine has ended the job's build: none of its step containers is left, and
    none has appeared for `quiet_s`. Returns False when that did not happen within `timeout_s`.

    The engine keeps every step container of a build (each labelled, from the first `LABEL` on)
    until the build ends, then removes them itself, also when the build was cancelled. Until
    then the step in progress may still commit an image; removing what is listed before that
    would miss it. `quiet_s` covers a build stopped before its first step container exists."""
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while True:
        if await _step_containers(docker, job_id):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_BUILD_POLL_S)


async def _step_containers(docker: aiodocker.Docker, job_id: str) -> list[str]:
    """The ids of the job's containers that the engine's builder created: every container
    dockguard creates itself is named after the job (names.py); step containers are not."""
    ours = f"/{names.OBJECT_PREFIX}{job_id}-"
    return [
        container["Id"]
        for container in await docker.containers.list(all=True, filters=names.label_filter(job_id))
        if not any(name.startswith(ours) for name in container["Names"] or [])
    ]


async def sweep(docker: aiodocker.Docker, older_than_s: float, *, job_id: str | None = None) -> int:
    """Remove managed objects (of one job, if given) created more than `older_than_s` ago;
    returns how many."""
    filters = names.label_filter(job_id) if job_id else _MANAGED
    removed = await remove_objects(docker, filters, created_before=time.time() - older_than_s)
    if removed:
        log.warning("swept leftovers of interrupted jobs", extra={"removed": removed})
    return removed


async def _remove_pass(
    docker: aiodocker.Docker, filters: Filters, cutoff: float
) -> tuple[int, int]:
    """One pass over what matches: (how many were removed, how many are still in use)."""
    outcomes: list[str] = []
    for container in await docker.containers.list(all=True, filters=filters):
        if float(container["Created"]) < cutoff:
            outcomes.append(await _remove(container.delete(force=True, v=True)))
    for network in await docker.networks.list(filters=filters):
        if _timestamp(network.get("Created")) < cutoff:
            outcomes.append(await _remove(DockerNetwork(docker, network["Id"]).delete()))
    for volume in (await docker.volumes.list(filters=filters)).get("Volumes") or []:
        if _timestamp(volume.get("CreatedAt")) < cutoff:
            outcomes.append(await _remove(DockerVolume(docker, volume["Name"]).delete()))
    for image in children_first(await docker.images.list(all=True, filters=filters)):
        if float(image.get("Created", cutoff)) < cutoff:
            # Not forced: an image is removed only once nothing (no child) depends on it.
            outcomes.append(await _remove(docker.images.delete(image["Id"], force=False)))
    return outcomes.count(_REMOVED), outcomes.count(_IN_USE)


def children_first(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`images` (the engine's listing) ordered so that each comes before its parent (`ParentId`),
    newest first otherwise: `Created` is in whole seconds, and a job's images are often made
    within one, so it alone can put a parent first, which the engine refuses until its child is
    gone (a second pass, a second later)."""
    remaining = sorted(images, key=lambda image: int(image.get("Created", 0)), reverse=True)
    ordered: list[dict[str, Any]] = []
    while remaining:
        parents = {image.get("ParentId") for image in remaining}
        leaves = [image for image in remaining if image["Id"] not in parents]
        if not leaves:  # (no image is its own ancestor; kept safe all the same)
            return ordered + remaining
        ordered += leaves
        remaining = [image for image in remaining if image["Id"] in parents]
    return ordered


def _timestamp(value: str | None) -> float:
    try:
        return datetime.fromisoformat(value or "").timestamp()
    except ValueError:
        return time.time()  # unknown age: treated as new


async def remove_container(docker: aiodocker.Docker, container_id: str) -> bool:
    """Kill and remove one container (with its anonymous volumes); False when it could not be
    removed (gone already, or refused: logged, left to the next round)."""
    container = docker.containers.container(container_id)
    return await _remove(container.delete(force=True, v=True)) == _REMOVED


async def ignore_missing(call: Awaitable[object]) -> None:
    """Await a removal; an object that is already gone (404) is fine."""
    try:
        await call
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise


_REMOVED, _GONE, _IN_USE, _REFUSED = "removed", "gone", "in use", "refused"


async def _remove(call: Awaitable[Any]) -> str:
    try:
        await call
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return _GONE
        if exc.status == 409:
            return _IN_USE
        log.warning("could not remove an engine object", extra={"why": str(exc)[:200]})
        return _REFUSED
    return _REMOVED
