"""Where Trivy runs: `local` (the `trivy` binary as a subprocess) or `container` (a container of
an image pinned by digest, started through the Engine API, with no network, a read-only root
filesystem and the DB mounted read-only). Both take the same trivy arguments, with `{work}`
(a directory holding the scan's inputs), `{out}` (the report file trivy writes), `{cache}` (the
DB cache directory) and `{tmp}` (scratch space) filled in for where they really are."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiodocker
import aiohttp
from aiodocker.volumes import DockerVolume

from dockguard.errors import ErrorCode, JobFailure
from dockguard.models import ScannerLimits
from dockguard.processes import run_process
from dockguard.sandbox import archive, hardening, names
from dockguard.scanning.report import scanner_failed

log = logging.getLogger(__name__)

REPORT_MAX_BYTES = 64 * 1024 * 1024
_SCANNER_UID = 65534
_STDERR_TAIL = 2000
_NO_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)


class TrivyBackend(Protocol):
    name: str

    async def verify(self) -> str | None:
        """Check the scanner can be trusted; returns the image id it runs (container) or None."""

    async def run(
        self,
        args: Sequence[str],
        *,
        work: Path | None = None,
        job_id: str | None = None,
        network: bool = False,
        timeout_s: float,
    ) -> bytes:
        """Run trivy; returns the file written at `{out}`, or stdout when args have no `{out}`."""


def _fill(args: Sequence[str], work: str, cache: str, tmp: str) -> list[str]:
    places = {"{work}": work, "{out}": f"{work}/out/report.json", "{cache}": cache, "{tmp}": tmp}
    filled = []
    for arg in args:
        for placeholder, value in places.items():
            arg = arg.replace(placeholder, value)
        filled.append(arg)
    return filled


def find_trivy(configured: str | None) -> str:
    if configured:
        return configured
    beside_python = Path(sys.executable).parent / "trivy"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("trivy") or "trivy"


class LocalTrivy:
    name = "local"

    def __init__(self, binary: str, cache_dir: str) -> None:
        self._binary = binary
        self._cache_dir = cache_dir

    async def verify(self) -> str | None:
        return None

    async def run(
        self,
        args: Sequence[str],
        *,
        work: Path | None = None,
        job_id: str | None = None,
        network: bool = False,
        timeout_s: float,
    ) -> bytes:
        with tempfile.TemporaryDirectory(prefix="dockguard-trivy-") as home:
            workdir = str(work or home)
            Path(workdir, "out").mkdir(exist_ok=True)
            filled = _fill(args, workdir, self._cache_dir, home)
            stdout = await self._exec(filled, home, timeout_s)
            if "{out}" not in args:
                return stdout
            report = Path(workdir, "out", "report.json")
            if report.stat().st_size > REPORT_MAX_BYTES:
                raise scanner_failed("the scanner's report is unreasonably large")
            return report.read_bytes()

    async def _exec(self, args: list[str], home: str, timeout_s: float) -> bytes:
        """Run trivy with a clean environment (no dockguard secrets) and a hard timeout."""
        env = {"HOME": home, "PATH": os.defpath, "TMPDIR": home, "TRIVY_NO_PROGRESS": "true"}
        try:
            done = await run_process([self._binary, *args], timeout_s=timeout_s, env=env, cwd=home)
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise scanner_failed(f"the scanner did not finish within {timeout_s:g} s") from exc
        except OSError as exc:
            raise scanner_failed(f"starting the scanner: {exc.strerror}") from exc
        if done.returncode != 0:
            stderr = done.stderr[-_STDERR_TAIL:].decode("utf-8", "replace")
            log.warning("trivy failed", extra={"rc": done.returncode, "stderr": stderr})
            raise scanner_failed(f"the scanner exited with status {done.returncode}")
        return done.stdout


class ContainerTrivy:
    """Trivy in a container of `image` (`ref@sha256:digest`). The digest must be the local
    image's id or one of its registry digests, checked once; scans then run the image by id, so
    a tag moved afterwards changes nothing."""

    name = "container"

    def __init__(
        self,
        docker: aiodocker.Docker,
        image: str,
        cache: str,
        limits: ScannerLimits,
        runtime: str | None = None,
    ) -> None:
        self._docker = docker
        # The scans' OCI runtime (DOCKGUARD_RUNTIME). Not the DB download's: it needs a network,
        # and gVisor registered as dockguard asks (`--network=none`) has none.
        self._runtime = runtime
        self._ref, _, digest = image.partition("@")
        self._digest = digest
        self._cache = cache
        self._limits = limits
        self._image_id: str | None = None
        self._lock = asyncio.Lock()

    async def verify(self) -> str:
        async with self._lock:
            if self._image_id is None:
                self._image_id = await self._verified_id()
                log.info("scanner image verified", extra={"image": self._image_id})
        return self._image_id

    async def _verified_id(self) -> str:
        """Look the image up by the pinned digest itself (as an image id, or as the repository's
        registry digest), then by the reference; whatever is found must carry the digest."""
        repository = (
            self._ref.rsplit(":", 1)[0] if ":" in self._ref.rsplit("/", 1)[-1] else self._ref
        )
        image = None
        for candidate in (self._digest, f"{repository}@{self._digest}", self._ref):
            try:
                image = await self._docker.images.inspect(candidate)
                break
            except aiodocker.DockerError:
                continue
        if image is None:
            raise _untrusted(f"the scanner image {self._ref} is not on the engine")
        digests = [d.rpartition("@")[2] for d in image.get("RepoDigests") or []]
        if self._digest not in (image["Id"], *digests):
            log.error(
                "scanner image does not match its pin",
                extra={"ref": self._ref, "pin": self._digest, "id": image["Id"]},
            )
            raise _untrusted(f"the scanner image {self._ref} does not match its pinned digest")
        return str(image["Id"])

    async def run(
        self,
        args: Sequence[str],
        *,
        work: Path | None = None,
        job_id: str | None = None,
        network: bool = False,
        timeout_s: float,
    ) -> bytes:
        image_id = await self.verify()
        scan_id = uuid.uuid4().hex[:12]
        labels = names.labels(job_id) if job_id else {names.MANAGED_LABEL: "true"}
        volume = f"dockguard-scan-{scan_id}"
        await self._docker.volumes.create({"Name": volume, "Labels": labels})
        container = None
        try:
            config = self._config(image_id, args, volume, labels, network)
            async with asyncio.timeout(timeout_s):
                container = await self._docker.containers.create(
                    config, name=f"dockguard-scan-{scan_id}"
                )
                status = await self._upload_and_wait(container, work)
            return await self._collect(container, status, "{out}" in args)
        except TimeoutError as exc:
            raise scanner_failed(f"the scanner did not finish within {timeout_s:g} s") from exc
        except archive.ArchiveError as exc:
            raise scanner_failed(f"reading the scanner's report: {exc}") from exc
        except aiodocker.DockerError as exc:
            log.warning("scanner container failed", extra={"why": str(exc)[:300]})
            raise scanner_failed("the scanner container could not run") from exc
        finally:
            await asyncio.shield(self._remove(container, volume))

    async def _upload_and_wait(
        self, container: aiodocker.docker.DockerContainer, work: Path | None
    ) -> int | None:
        """Put the scan's inputs in /work, start trivy and wait for it; its exit status."""
        await archive.put_archive(self._docker, container.id, "/work", _work_tar(work))
        await container.start()
        status = await container.wait(timeout=_NO_READ_TIMEOUT)  # bounded by the caller
        code = status.get("StatusCode")
        return code if isinstance(code, int) else None

    async def _collect(
        self, container: aiodocker.docker.DockerContainer, status: int | None, to_file: bool
    ) -> bytes:
        """The report trivy wrote at `{out}` (or its stdout), once it exited with 0."""
        if status != 0:
            logs = await container.log(stdout=False, stderr=True, tail=20)
            log.warning("trivy failed", extra={"stderr": "".join(logs)[-_STDERR_TAIL:]})
            raise scanner_failed(f"the scanner exited with status {status}")
        if not to_file:
            return "".join(await container.log(stdout=True, stderr=False)).encode()
        return await archive.read_file(
            self._docker, container.id, "/work/out/report.json", REPORT_MAX_BYTES
        )

    def _config(
        self,
        image_id: str,
        args: Sequence[str],
        volume: str,
        labels: dict[str, str],
        network: bool,
    ) -> dict[str, Any]:
        cache_mount: dict[str, object] = {
            "Type": "bind" if self._cache.startswith("/") else "volume",
            "Source": self._cache,
            "Target": "/cache",
            "ReadOnly": not network,  # only a DB download (which needs the network) writes
        }
        limits = self._limits
        isolation = hardening.Isolation(
            memory_mb=limits.memory_mb,
            pids=limits.pids,
            network="bridge" if network else "none",
            file_size_mb=limits.file_size_mb,
            nofile=limits.nofile,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs_mb}m"},
            mounts=[{"Type": "volume", "Source": volume, "Target": "/work"}, cache_mount],
            runtime=None if network else self._runtime,
            log_max_size="8m",
        )
        return hardening.container_config(
            image_id,
            # Scans run as nobody. A DB download (network on, nothing scanned) runs as root with
            # no capabilities, to write into a cache that a fresh volume makes root's.
            user="0:0" if network else f"{_SCANNER_UID}:{_SCANNER_UID}",
            labels=labels,
            isolation=isolation,
            cmd=_fill(args, "/work", "/cache", "/tmp"),
            env=["HOME=/tmp", "TMPDIR=/tmp", "TRIVY_NO_PROGRESS=true"],
        )

    async def _remove(
        self, container: aiodocker.docker.DockerContainer | None, volume: str
    ) -> None:
        try:
            if container is not None:
                await container.delete(force=True, v=True)
            await DockerVolume(self._docker, volume).delete()
        except aiodocker.DockerError as exc:
            log.warning("scanner cleanup incomplete", extra={"why": str(exc)[:300]})


def _untrusted(message: str) -> JobFailure:
    return JobFailure(ErrorCode.SCANNER_UNTRUSTED, message)


async def _work_tar(work: Path | None) -> AsyncIterator[bytes]:
    """A tar of `work`'s files plus an `out/` directory the scanner's user can write, streamed
    file by file (an image tar can be gigabytes)."""
    out = tarfile.TarInfo("out")
    out.type, out.mode, out.uid, out.gid = tarfile.DIRTYPE, 0o755, _SCANNER_UID, _SCANNER_UID
    yield out.tobuf(format=tarfile.GNU_FORMAT)
    for path in sorted(work.iterdir()) if work else []:
        info = tarfile.TarInfo(path.name)
        info.size, info.mode = path.stat().st_size, 0o444
        yield info.tobuf(format=tarfile.GNU_FORMAT)
        with path.open("rb") as source:
            while chunk := await asyncio.to_thread(source.read, 1024 * 1024):
                yield chunk
        if padding := -info.size % tarfile.BLOCKSIZE:
            yield b"\0" * padding
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
