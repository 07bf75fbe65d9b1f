"""A parent cgroup with a process limit for one build's containers.

The Engine API's `POST /build` has no pids limit, and `RUN` steps run as root, for whom
RLIMIT_NPROC does not apply: a fork bomb in a `RUN` could take every PID of the host (32768 by
default). The build's `cgroupparent` parameter puts its containers under a cgroup we create with
`pids.max` set, so they share that limit. This needs write access to the engine host's cgroup
filesystem (a worker running as root on that host, or with /sys/fs/cgroup mounted) and the
cgroupfs driver; both cgroup v1 and v2 layouts are handled, and v1 beside v2's `unified`
hierarchy (systemd's hybrid layout), where the engine creates the parent too.

Each is removed after its build, again by the job's cleanup (`remove_job`: a build its worker
died in), and by the sweeper (`sweep`: whatever is left, once old enough)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
PARENT = "dockguard"


class CgroupUnavailable(Exception):
    pass


class BuildCgroup:
    def __init__(self, name: str, pids: int, root: Path = ROOT) -> None:
        self.name = name
        self._pids = pids
        self._root = root
        self._v2 = (root / "cgroup.controllers").exists()

    @property
    def parent(self) -> str:
        """The value of the build's `cgroupparent` parameter."""
        return f"/{PARENT}/{self.name}"

    def _dirs(self) -> list[Path]:
        """Every directory the engine may create for this parent, deepest last."""
        return [parent / self.name for parent in _parents(self._root)]

    def create(self) -> str:
        limit_dir = (
            self._root / PARENT / self.name
            if self._v2
            else self._root / "pids" / PARENT / self.name
        )
        try:
            if self._v2:  # the pids controller must be enabled down to our directory
                (self._root / PARENT).mkdir(exist_ok=True)
                for parent in (self._root, self._root / PARENT):
                    control = parent / "cgroup.subtree_control"
                    if "pids" not in control.read_text().split():
                        control.write_text("+pids")
            limit_dir.mkdir(parents=True, exist_ok=True)
            (limit_dir / "pids.max").write_text(str(self._pids))
        except OSError as exc:
            raise CgroupUnavailable(f"cannot set a pids limit under {limit_dir}: {exc}") from exc
        return self.parent

    def remove(self, wait_s: float = 5.0) -> None:
        """Remove the parent in every controller; the engine removes its containers' cgroups
        asynchronously, so an rmdir that finds them still there is retried briefly."""
        deadline = time.monotonic() + wait_s
        for directory in self._dirs():
            while directory.exists():
                for child in sorted(directory.glob("*/"), reverse=True):
                    with contextlib.suppress(OSError):
                        child.rmdir()
                try:
                    directory.rmdir()
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning(
                            "build cgroup left", extra={"dir": str(directory), "why": str(exc)}
                        )
                        break
                    time.sleep(0.05)


@contextlib.asynccontextmanager
async def pids_limited(name: str, pids: int, root: Path = ROOT) -> AsyncIterator[str]:
    """A parent cgroup of at most `pids` processes for the time of the block, removed after it
    (even when setting it up failed half-way); yields its `cgroupparent` value. Raises
    CgroupUnavailable when it cannot be set up."""
    cgroup = BuildCgroup(name, pids, root)
    try:
        yield await asyncio.to_thread(cgroup.create)
    finally:
        await asyncio.shield(asyncio.to_thread(cgroup.remove))


def _parents(root: Path) -> list[Path]:
    """dockguard's directory in every hierarchy under `root`: v2's one, or each v1 controller's
    and v2's `unified` beside them (any directory that is a cgroup: it has `cgroup.procs`)."""
    if (root / "cgroup.controllers").exists():
        return [root / PARENT]
    try:
        hierarchies = [c for c in root.iterdir() if (c / "cgroup.procs").exists()]
    except OSError:
        return []
    return [c / PARENT for c in hierarchies]


def _rmdir_tree(directory: Path) -> bool:
    """Remove an empty cgroup and its children (a cgroup with processes cannot be removed)."""
    for child in sorted(directory.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    return not directory.exists()


def remove_job(job_id: str, root: Path = ROOT) -> None:
    """Remove the job's build cgroups in every hierarchy, quietly (a worker without write access
    to the cgroup filesystem never made any)."""
    for parent in _parents(root):
        for directory in parent.glob(f"{job_id}-*"):
            _rmdir_tree(directory)


def sweep(older_than_s: float, root: Path = ROOT) -> int:
    """Remove every build cgroup (`<job id>-<stage>`) last changed more than `older_than_s` ago
    and holding no process; returns how many."""
    cutoff = time.time() - older_than_s
    removed = 0
    for parent in _parents(root):
        for directory in parent.glob("*-*"):
            with contextlib.suppress(OSError):
                if directory.is_dir() and directory.stat().st_mtime < cutoff:
                    removed += _rmdir_tree(directory)
    return removed
