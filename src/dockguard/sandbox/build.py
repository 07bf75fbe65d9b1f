"""Image builds through the Engine API's `POST /build`, streamed, limited and time-boxed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import tarfile
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiodocker

from dockguard.dockerfile import parse as parse_dockerfile
from dockguard.errors import ErrorCode, JobFailure
from dockguard.lines import LineSink, clean_line, split_lines
from dockguard.models import BuildLimits
from dockguard.sandbox import cgroups, egress, http, names
from dockguard.sandbox.cgroups import CgroupUnavailable

log = logging.getLogger(__name__)

_STEP = re.compile(r"^Step \d+/\d+ : (\w+)")
_RUN_EXIT = re.compile(r"returned a non-zero code: (\d+)")
_MISSING_BASE = re.compile(
    r"pull access denied|repository does not exist|manifest unknown", re.IGNORECASE
)
_INFRASTRUCTURE = re.compile(r"://|\b\d{1,3}(?:\.\d{1,3}){3}\b|dial tcp|lookup ")
_LINE_CAP = 1000
_STREAM_LINE_LIMIT = 1 << 20


class BuildFailure(JobFailure):
    """A failed or timed-out build, with what the build printed before it stopped."""

    def __init__(self, code: ErrorCode, message: str, log_tail: list[str]) -> None:
        super().__init__(code, message)
        self.log_tail = log_tail


@dataclass
class BuildOutcome:
    image_id: str
    duration_s: float
    log_tail: list[str]


@dataclass
class _Progress:
    """What the build stream told us so far: the log tail, the step, the image (from the
    engine's own `aux` message, never from what the build printed). Each line the build prints
    also goes to `sink`, the job's live log, as it arrives."""

    tail: deque[str]
    sink: LineSink | None = None
    image_id: str | None = None
    error: str | None = None
    step: str = ""
    _partial: str = ""  # the engine sends output in chunks that may end mid-line

    def feed(self, message: dict[str, object]) -> None:
        if isinstance(message.get("stream"), str):
            lines, self._partial = split_lines(self._partial + str(message["stream"]))
            self._partial = self._partial[-_STREAM_LINE_LIMIT:]
            for line in lines:
                self._line(line)
        aux = message.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            self.image_id = aux["ID"]
        if message.get("error"):
            self.fail(str(message["error"]))

    def finish(self) -> None:
        """The stream has ended (or was cut): its unfinished last line is a line too."""
        partial, self._partial = self._partial, ""
        self._line(partial)

    def fail(self, error: str) -> None:
        """The build failed with the engine's `error` (kept for the logs; the tail gets it only
        when it reveals nothing of the engine's host)."""
        self.finish()
        self.error = error
        self._emit(f"error: {_client_safe_error(error, self.step)}")

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        self._emit(line)
        if step := _STEP.match(line):  # for messages only: a RUN step can print anything
            self.step = step.group(1).upper()

    def _emit(self, line: str) -> None:
        self.tail.append(clean_line(line, _LINE_CAP))
        if self.sink is not None:
            self.sink.write(line)


class Builder:
    def __init__(self, docker: aiodocker.Docker, log_tail_lines: int) -> None:
        self._docker = docker
        self._log_tail_lines = log_tail_lines

    async def build(
        self,
        job_id: str,
        dockerfile: str,
        tag: str,
        limits: BuildLimits,
        *,
        context: bytes = b"",
        sink: LineSink | None = None,
    ) -> BuildOutcome:
        """Build `dockerfile` (with an optional extra tar `context`), tagged `tag`; each line it
        prints also goes to `sink` as it arrives.

        Every image the build makes, in every stage, whether it succeeds or not, carries the
        job's labels (see `labelled`): cleanup finds and removes them all by label.
        """
        started = time.monotonic()
        progress = _Progress(tail=deque(maxlen=max(self._log_tail_lines, 1)), sink=sink)
        params = build_params(job_id, tag, limits)
        body = _context_tar(labelled(dockerfile, job_id, limits.timeout_s), context)
        cgroup_name = f"{job_id}-{tag.rpartition(':')[2]}"
        try:
            # The cgroup outside the timeout: removing it after the build is not the build's time.
            async with (
                self._process_limit(cgroup_name, limits.pids) as cgroup_params,
                asyncio.timeout(limits.timeout_s),
            ):
                await self._stream(params | cgroup_params, body, progress)
        except TimeoutError as exc:
            # Leaving the request closes the connection, which makes the engine cancel the build.
            progress.finish()
            raise BuildFailure(
                ErrorCode.BUILD_TIMEOUT,
                f"the build did not finish within {limits.timeout_s:g} s",
                self._tail(progress),
            ) from exc
        except aiodocker.DockerError as exc:  # the engine refused the build outright
            progress.fail(exc.message)
        if progress.error is not None or not progress.image_id:
            log.info("build failed", extra={"engine_error": (progress.error or "")[:2000]})
            raise BuildFailure(
                ErrorCode.BUILD_FAILED,
                _build_error_message(progress.error or "", progress.step),
                self._tail(progress),
            )
        return BuildOutcome(
            image_id=progress.image_id,
            duration_s=round(time.monotonic() - started, 3),
            log_tail=self._tail(progress),
        )

    @asynccontextmanager
    async def _process_limit(self, name: str, pids: int) -> AsyncIterator[dict[str, str]]:
        """The build's `cgroupparent` parameter: a parent cgroup limiting its processes to
        `pids` for the time of the block (cgroups.py); none when `pids` is 0."""
        if not pids:
            yield {}
            return
        try:
            if not str(self._docker.docker_host).startswith("unix://"):
                # The parent cgroup must exist on the engine's host, not this one.
                raise CgroupUnavailable("the engine is not on this worker's host")
            async with cgroups.pids_limited(name, pids) as parent:
                yield {"cgroupparent": parent}
        except CgroupUnavailable as exc:
            log.error("build pids limit unavailable", extra={"why": str(exc)})
            raise BuildFailure(
                ErrorCode.INTERNAL_ERROR,
                "this worker cannot apply the build's process limit (see its logs; "
                "DOCKGUARD_BUILD_PIDS=0 builds without one)",
                [],
            ) from exc

    def _tail(self, progress: _Progress) -> list[str]:
        return list(progress.tail)[-self._log_tail_lines :] if self._log_tail_lines else []

    async def _stream(self, params: dict[str, str], body: bytes, progress: _Progress) -> None:
        async with http.stream(
            self._docker,
            "build",
            "POST",
            params=params,
            data=body,
            headers={"Content-Type": "application/x-tar"},
        ) as response:
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                if len(buffer) > _STREAM_LINE_LIMIT:
                    buffer = buffer[
                        -_STREAM_LINE_LIMIT:
                    ]  # a line this long is noise: drop its head
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        progress.feed(_decode(line))
            if buffer.strip():
                progress.feed(_decode(buffer))
            progress.finish()


def labelled(dockerfile: str, job_id: str, timeout_s: float) -> str:
    """The Dockerfile with the job's labels set right after each `FROM`. Labels pass from an
    image to the images built on it, so every intermediate image of every stage carries them —
    images of earlier stages and of failed steps too — and so does every step container the
    engine creates from them, with the build's deadline (`timeout_s` from now,
    names.container_labels). The final image has them from its stage's line: the engine's
    `labels` build parameter is not passed, it would only add one more step (~100 ms). The
    submission policy refuses labels in dockguard's namespace, so a Dockerfile cannot override
    them; the parser refuses a Dockerfile that ends inside a continued instruction, so the added
    line always stands alone."""
    parsed = parse_dockerfile(dockerfile.encode("utf-8"), max_bytes=1 << 30)
    found = names.container_labels(job_id, timeout_s)
    label = "LABEL " + " ".join(f'{key}="{value}"' for key, value in found.items())
    lines = dockerfile.split("\n")
    for instruction in reversed(parsed.instructions):
        if instruction.keyword == "FROM":
            lines.insert(instruction.end_line, label)
    return "\n".join(lines)


def build_params(job_id: str, tag: str, limits: BuildLimits) -> dict[str, str]:
    """`POST /build` query parameters: the build's sandbox. Client-supplied build args, remote
    contexts and pulls are never passed (with `egress`, the only build args are the engine's
    predefined proxy ones, naming the job's proxy); `nocache` keeps one job from reusing (or
    poisoning) another's layers; `forcerm` removes the containers of failed steps."""
    memory = str(limits.memory_mb * 1024 * 1024)
    period = 100_000
    network: str = limits.network
    proxy_args = {}
    if limits.network == "egress":  # the job's own network (set up by egress.Egress)
        network = egress.network_name(job_id)
        proxy_args = {"buildargs": json.dumps(egress.proxy_build_args())}
    return {
        "t": tag,
        "dockerfile": "Dockerfile",
        "rm": "1",
        "forcerm": "1",
        "pull": "0",
        "nocache": "1" if limits.nocache else "0",
        "memory": memory,
        "memswap": memory,
        "cpuperiod": str(period),
        "cpuquota": str(int(limits.cpus * period)),
        "shmsize": str(64 * 1024 * 1024),
        "networkmode": network,
        "ulimits": json.dumps(
            [
                _ulimit("nofile", limits.nofile),
                _ulimit("fsize", limits.file_size_mb * 1024 * 1024),
                _ulimit("core", 0),
            ]
        ),
        **proxy_args,
    }


def _ulimit(name: str, value: int) -> dict[str, object]:
    return {"Name": name, "Soft": value, "Hard": value}


def _decode(line: bytes) -> dict[str, object]:
    try:
        message = json.loads(line)
    except ValueError:
        return {"stream": line.decode("utf-8", "replace")}
    return message if isinstance(message, dict) else {}


def _context_tar(dockerfile: str, extra: bytes) -> bytes:
    """A build context holding the Dockerfile and, optionally, the members of `extra` (a tar)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = dockerfile.encode("utf-8")
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
        if extra:
            with tarfile.open(fileobj=io.BytesIO(extra), mode="r:") as source:
                for member in source.getmembers():
                    fileobj = source.extractfile(member) if member.isfile() else None
                    tar.addfile(member, fileobj)
    return buffer.getvalue()


def _build_error_message(error: str, step: str) -> str:
    """The job's error message: what failed, in our words."""
    if match := _RUN_EXIT.search(error):
        return f"a RUN instruction exited with status {match.group(1)} (see build.log_tail)"
    if step == "FROM" or _MISSING_BASE.search(error):
        return "a base image is not available on this engine and could not be pulled"
    if step in ("COPY", "ADD"):
        return (
            f"a {step} instruction failed: the build context holds only the Dockerfile "
            "(see build.log_tail)"
        )
    return "the build failed (see build.log_tail)"


def _client_safe_error(error: str, step: str) -> str:
    """The engine's error line for the log tail, unless it could reveal the engine host's
    infrastructure (registry lookups name resolvers, addresses and hosts)."""
    if step == "FROM" or _MISSING_BASE.search(error):
        return "the base image is not available on this engine and could not be pulled"
    if _INFRASTRUCTURE.search(error):
        return "the engine reported an error (details are in the service's logs)"
    return error[:_LINE_CAP]
