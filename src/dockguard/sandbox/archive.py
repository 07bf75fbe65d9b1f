"""Reading one file out of a container through the Engine's archive API, treating the container's
filesystem as hostile: the file's kind and size are checked before any byte is read, the tar is
streamed with a byte cap (never an unbounded archive in memory), and it must hold exactly one
regular file. `image_reader` gives a container of an image that is created and never started, to
read the image's own files (and `stat` their kind) before anything of it runs. Beside them, the
two bulk transfers the scanner needs: `put_archive` (its inputs) and `save_image` (the image)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import tarfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker

from dockguard.errors import ErrorCode, JobFailure
from dockguard.sandbox import hardening, http, names

log = logging.getLogger(__name__)

_READER_USER = "65534:65534"  # never started, but nobody all the same
_TAR_OVERHEAD = 16 * 1024
_SAVE_CHUNK = 1024 * 1024
_FILE_TYPE_BITS = {
    1 << 31: "a directory",
    1 << 27: "a symbolic link",
    1 << 26: "a device",
    1 << 25: "a named pipe",
    1 << 24: "a socket",
    1 << 21: "a character device",
    1 << 19: "not a regular file",
}  # Go's os.FileMode type bits, as the engine reports them


class ArchiveError(Exception):
    """The file cannot be read safely; `str()` is a client-safe explanation."""


class FileMissing(ArchiveError):
    pass


class NotRegularFile(ArchiveError):
    pass


class FileTooLarge(ArchiveError):
    pass


class UnreadableArchive(ArchiveError):
    pass


@asynccontextmanager
async def image_reader(
    docker: aiodocker.Docker, job_id: str, image: Mapping[str, Any]
) -> AsyncIterator[str]:
    """The id of a container of `image` (an image inspect) that is created and never started,
    removed on exit with its anonymous volumes. Its image VOLUMEs are masked like the run's, but
    for /data, whose own kind is what a reader asks about."""
    isolation = hardening.Isolation(
        memory_mb=16,
        pids=8,
        file_size_mb=1,
        nofile=16,
        masked=[path for path in hardening.image_volumes(image) if path != "/data"],
    )
    config = hardening.container_config(
        str(image["Id"]),
        user=_READER_USER,
        labels=names.labels(job_id),
        isolation=isolation,
        entrypoint=["/dockguard-never-started"],
        cmd=[],
    )
    try:
        container = await docker.containers.create(
            config, name=f"{names.container_name(job_id)}-reader"
        )
    except aiodocker.DockerError as exc:
        if exc.status in (404, 409):  # the job's own image or container name: ours
            raise
        log.warning("image reader container refused", extra={"why": str(exc)[:300]})
        raise JobFailure(
            ErrorCode.RUN_START_FAILED,
            "the engine cannot create a container of the image with its configuration "
            "(e.g. a VOLUME it refuses)",
        ) from exc
    try:
        yield container.id
    finally:
        await container.delete(force=True, v=True)  # v: an image VOLUME leaves an anonymous one


async def stat(
    docker: aiodocker.Docker, container_id: str, path: str, timeout_s: float = 30
) -> dict[str, Any] | None:
    """The engine's status of `path` in the container (`name`, `size`, `mode`, `linkTarget`; a
    final symlink is not followed), or None when nothing is there. A GET whose tar is never read,
    not a HEAD: aiodocker cannot read a HEAD's error status (its body is empty)."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            http.stream(
                docker, f"containers/{container_id}/archive", "GET", params={"path": path}
            ) as response,
        ):
            found = _stat(path, response.headers)
            response.close()  # drop the connection: the engine stops sending the tar
            return found
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise


def describe(stat: Mapping[str, Any]) -> str:
    """What a status is: `a regular file`, `a directory`, `a symbolic link to '/etc'`, …"""
    mode = int(stat.get("mode", 0))
    if stat.get("linkTarget") or mode & (1 << 27):
        return f"a symbolic link to {str(stat.get('linkTarget', ''))[:200]!r}"
    for bit, kind in _FILE_TYPE_BITS.items():
        if mode & bit:
            return kind
    return "a regular file"


async def read_file(
    docker: aiodocker.Docker, container_id: str, path: str, max_bytes: int, timeout_s: float = 30
) -> bytes:
    async with asyncio.timeout(timeout_s):
        archive = await _read_capped(docker, container_id, path, max_bytes)
    return _single_regular_file(path, archive, max_bytes)


async def _read_capped(
    docker: aiodocker.Docker, container_id: str, path: str, max_bytes: int
) -> bytes:
    """The engine sends the file's status in a header before the tar: judge it, then stream."""
    cap = max_bytes + _TAR_OVERHEAD
    chunks: list[bytes] = []
    size = 0
    try:
        async with http.stream(
            docker, f"containers/{container_id}/archive", "GET", params={"path": path}
        ) as response:
            _check_stat(path, _stat(path, response.headers), max_bytes)
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > cap:
                    raise FileTooLarge(f"{path} is larger than {max_bytes} bytes")
                chunks.append(chunk)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            raise FileMissing(f"{path} does not exist") from exc
        raise
    return b"".join(chunks)


def _stat(path: str, headers: Mapping[str, str]) -> dict[str, Any]:
    try:
        stat = json.loads(base64.b64decode(headers.get("X-Docker-Container-Path-Stat", "")))
    except ValueError as exc:
        raise UnreadableArchive(f"the status of {path} could not be read") from exc
    if not isinstance(stat, dict):
        raise UnreadableArchive(f"the status of {path} could not be read")
    return stat


def _check_stat(path: str, stat: dict[str, Any], max_bytes: int) -> None:
    mode = int(stat.get("mode", 0))
    if stat.get("linkTarget"):
        mode |= 1 << 27
    for bit, kind in _FILE_TYPE_BITS.items():
        if mode & bit:
            raise NotRegularFile(f"{path} is {kind}, not a regular file")
    if int(stat.get("size", 0)) > max_bytes:
        raise FileTooLarge(f"{path} is larger than {max_bytes} bytes")


def _single_regular_file(path: str, archive: bytes, max_bytes: int) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) != 1 or not members[0].isreg():
                raise NotRegularFile(f"{path} is not a single regular file")
            if members[0].size > max_bytes:
                raise FileTooLarge(f"{path} is larger than {max_bytes} bytes")
            extracted = tar.extractfile(members[0])
            data = extracted.read(max_bytes + 1) if extracted else b""
    except tarfile.TarError as exc:
        raise UnreadableArchive(f"{path} could not be read") from exc
    if len(data) > max_bytes:
        raise FileTooLarge(f"{path} is larger than {max_bytes} bytes")
    return data


async def put_archive(
    docker: aiodocker.Docker, container_id: str, path: str, tar: AsyncIterator[bytes]
) -> None:
    """Unpack `tar`, streamed, at `path` in a container that has not started."""
    async with http.stream(
        docker,
        f"containers/{container_id}/archive",
        "PUT",
        params={"path": path},
        data=tar,
        headers={"Content-Type": "application/x-tar"},
    ):
        pass


async def save_image(docker: aiodocker.Docker, image_id: str, target: Path, max_bytes: int) -> None:
    """`docker save` of the image into the file `target`, streamed; FileTooLarge past
    `max_bytes`. The caller bounds the time (an image can be gigabytes)."""
    size = 0
    async with http.stream(docker, f"images/{image_id}/get", "GET", params={}) as response:
        with target.open("wb") as out:
            async for chunk in response.content.iter_chunked(_SAVE_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"the image is larger than {max_bytes >> 20} MiB")
                await asyncio.to_thread(out.write, chunk)
