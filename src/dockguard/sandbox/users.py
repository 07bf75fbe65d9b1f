"""Which uid:gid a job's container runs as. Always numeric and never root: the image's USER
resolved through the image's own /etc/passwd and /etc/group (read as hostile files), nobody when
the image names no user or root, and a group of nobody instead of gid 0."""

from __future__ import annotations

import logging
import re

import aiodocker

from dockguard.errors import ErrorCode, JobFailure
from dockguard.sandbox import archive, names

log = logging.getLogger(__name__)

NOBODY = 65534
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_ACCOUNTS_MAX_BYTES = 1024 * 1024


def _failure(user: str, why: str) -> JobFailure:
    return JobFailure(ErrorCode.BUILD_FAILED, f"the image's USER {user!r} {why}")


async def resolve_run_user(docker: aiodocker.Docker, job_id: str, image: dict[str, object]) -> str:
    config = image.get("Config")
    spec = str((config or {}).get("User") or "").strip() if isinstance(config, dict) else ""
    if not spec:
        return f"{NOBODY}:{NOBODY}"
    user, _, group = spec.partition(":")
    if not _NAME.match(user) or (group and not _NAME.match(group)):
        raise _failure(spec, "is not a valid user name")
    needs_passwd = not user.isdigit() or not group
    needs_group = bool(group) and not group.isdigit()
    passwd = group_file = ""
    if needs_passwd or needs_group:
        passwd, group_file = await _account_files(docker, job_id, str(image["Id"]))
    uid, primary_gid = _lookup_user(spec, user, passwd)
    gid = _lookup_group(spec, group, group_file) if group else primary_gid
    if uid == 0:
        return f"{NOBODY}:{NOBODY}"
    return f"{uid}:{NOBODY if gid == 0 else gid}"


def _lookup_user(spec: str, user: str, passwd: str) -> tuple[int, int]:
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[2].isdigit() or not fields[3].isdigit():
            continue
        if fields[0] == user or (user.isdigit() and fields[2] == user):
            return int(fields[2]), int(fields[3])
    if user.isdigit():
        return int(user), int(user)  # not in /etc/passwd: its own number as group, never root's
    raise _failure(spec, "is not defined in the image's /etc/passwd")


def _lookup_group(spec: str, group: str, group_file: str) -> int:
    if group.isdigit():
        return int(group)
    for line in group_file.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
            return int(fields[2])
    raise _failure(spec, "names a group that is not defined in the image's /etc/group")


async def _account_files(docker: aiodocker.Docker, job_id: str, image_id: str) -> tuple[str, str]:
    """/etc/passwd and /etc/group of the image, from a container that is created, never started."""
    container = await docker.containers.create(
        {
            "Image": image_id,
            "Entrypoint": ["/dockguard-never-started"],
            "Cmd": [],
            "Labels": names.labels(job_id),
            "NetworkDisabled": True,
            "HostConfig": {"NetworkMode": "none"},
        },
        name=f"{names.container_name(job_id)}-accounts",
    )
    try:
        return (
            await _read_text(docker, container.id, "/etc/passwd"),
            await _read_text(docker, container.id, "/etc/group"),
        )
    finally:
        await container.delete(force=True)


async def _read_text(docker: aiodocker.Docker, container_id: str, path: str) -> str:
    try:
        raw = await archive.read_file(docker, container_id, path, _ACCOUNTS_MAX_BYTES)
    except archive.ArchiveError as exc:
        log.info("image account file unusable", extra={"path": path, "why": str(exc)})
        return ""
    return raw.decode("utf-8", "replace")
