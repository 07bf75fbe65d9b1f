"""Which uid:gid a job's container runs as. Always numeric and never root: the image's USER
resolved through the image's own /etc/passwd and /etc/group (read as hostile files, from the
never-started reader container of `archive.image_reader`), nobody when the image names no user or
root, and a group of nobody instead of gid 0. A USER the sandbox cannot use is `user_invalid`."""

from __future__ import annotations

import logging
import re

import aiodocker

from dockguard.errors import ErrorCode, JobFailure
from dockguard.sandbox import archive

log = logging.getLogger(__name__)

NOBODY = 65534
# The engine refuses ids past 2^31 - 1 only when the container starts ("uids and gids must be in
# range 0-2147483647"); no real account is that large, so the sandbox stops one short of it.
MAX_ID = 2**31 - 2
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_NUMBER = re.compile(r"^[0-9]{1,20}\Z")  # ASCII only: int() also takes other scripts' digits
_ACCOUNTS_MAX_BYTES = 1024 * 1024


def _failure(user: str, why: str) -> JobFailure:
    return JobFailure(ErrorCode.USER_INVALID, f"the image's USER {user[:100]!r} {why}")


async def resolve_run_user(
    docker: aiodocker.Docker, reader_id: str, image: dict[str, object]
) -> str:
    """`uid:gid` for the image (an image inspect); `reader_id` is a never-started container of
    it, read only when the USER names a user or group instead of numbers."""
    config = image.get("Config")
    spec = str((config or {}).get("User") or "").strip() if isinstance(config, dict) else ""
    if not spec:
        return f"{NOBODY}:{NOBODY}"
    user, _, group = spec.partition(":")
    if not _NAME.match(user) or (group and not _NAME.match(group)):
        raise _failure(spec, "is not a valid user name or number")
    needs_passwd = not _is_number(user) or not group
    needs_group = bool(group) and not _is_number(group)
    passwd = group_file = ""
    if needs_passwd or needs_group:
        passwd = await _read_text(docker, reader_id, "/etc/passwd")
        group_file = await _read_text(docker, reader_id, "/etc/group") if needs_group else ""
    uid, primary_gid = _lookup_user(spec, user, passwd)
    gid = _lookup_group(spec, group, group_file) if group else primary_gid
    if uid > MAX_ID or gid > MAX_ID:
        raise _failure(spec, f"is out of range: the sandbox uses uids and gids up to {MAX_ID}")
    if uid == 0:
        return f"{NOBODY}:{NOBODY}"
    return f"{uid}:{NOBODY if gid == 0 else gid}"


def _lookup_user(spec: str, user: str, passwd: str) -> tuple[int, int]:
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not _is_number(fields[2]) or not _is_number(fields[3]):
            continue
        if fields[0] == user or (_is_number(user) and int(fields[2]) == int(user)):
            return int(fields[2]), int(fields[3])
    if _is_number(user):
        return int(user), int(user)  # not in /etc/passwd: its own number as group, never root's
    raise _failure(spec, "is not defined in the image's /etc/passwd")


def _lookup_group(spec: str, group: str, group_file: str) -> int:
    if _is_number(group):
        return int(group)
    for line in group_file.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == group and _is_number(fields[2]):
            return int(fields[2])
    raise _failure(spec, "names a group that is not defined in the image's /etc/group")


def _is_number(text: str) -> bool:
    return bool(_NUMBER.match(text))


async def _read_text(docker: aiodocker.Docker, container_id: str, path: str) -> str:
    try:
        raw = await archive.read_file(docker, container_id, path, _ACCOUNTS_MAX_BYTES)
    except archive.ArchiveError as exc:
        log.info("image account file unusable", extra={"path": path, "why": str(exc)})
        return ""
    return raw.decode("utf-8", "replace")
