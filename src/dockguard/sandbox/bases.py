"""Before a build: every image it starts from must be on the engine already (or be pulled by
dockguard, when the operator allows it), and none may carry ONBUILD triggers. See
base_images.py for how the references are resolved."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiodocker

from dockguard.base_images import BaseImage, matches_any
from dockguard.errors import ErrorCode, JobFailure
from dockguard.sandbox import names

log = logging.getLogger(__name__)


async def check_bases(
    docker: aiodocker.Docker,
    bases: tuple[BaseImage, ...],
    *,
    pull_allow: tuple[str, ...],
    pull_timeout_s: float,
) -> None:
    """Raise `build_failed` for a base that is not on the engine (and may not be pulled), and
    `base_image_forbidden` for one whose ONBUILD triggers would run in this build."""
    for base in bases:
        image = await _inspect(docker, base.reference)
        if image is None and matches_any(base.reference, pull_allow):
            await _pull(docker, base, pull_timeout_s)
            image = await _inspect(docker, base.reference)
        if image is None:
            raise JobFailure(
                ErrorCode.BUILD_FAILED,
                f"line {base.line}: base image {base.reference!r} is not on this engine, and "
                "dockguard never lets the engine pull one that is not allowed "
                "(DOCKGUARD_BUILD_PULL_ALLOW)",
            )
        what = f"line {base.line}: base image {base.reference!r}"
        if names.JOB_LABEL in ((image.get("Config") or {}).get("Labels") or {}):
            raise JobFailure(
                ErrorCode.BASE_IMAGE_FORBIDDEN,
                f"{what} is another job's image, which no job may read",
                rejected=True,
            )
        refuse_onbuild(image, what)


def refuse_onbuild(image: dict[str, Any], what: str) -> None:
    """An image's ONBUILD triggers run in every build on top of it, after every scan."""
    config = image.get("Config") or {}
    if config.get("OnBuild"):
        raise JobFailure(
            ErrorCode.BASE_IMAGE_FORBIDDEN,
            f"{what} has ONBUILD triggers, which would run in this build unchecked",
            rejected=True,
        )


async def _inspect(docker: aiodocker.Docker, reference: str) -> dict[str, Any] | None:
    try:
        image: dict[str, Any] = await docker.images.inspect(reference)
    except aiodocker.DockerError as exc:
        if exc.status in (400, 404):  # not there, or not a reference the engine can hold
            return None
        raise
    return image


async def _pull(docker: aiodocker.Docker, base: BaseImage, timeout_s: float) -> None:
    log.info("pulling an allowed base image", extra={"image": base.reference})
    try:
        async with asyncio.timeout(timeout_s):
            await docker.images.pull(base.reference)
    except (aiodocker.DockerError, TimeoutError) as exc:
        log.warning("base image pull failed", extra={"image": base.reference, "why": str(exc)})
        raise JobFailure(
            ErrorCode.BUILD_FAILED,
            f"line {base.line}: base image {base.reference!r} could not be pulled",
        ) from exc
