"""The one place where a container's isolation is decided. Every container dockguard creates (the
job's run and its /data holder, the scanner, the never-started readers of an image's files, the
build egress proxy) gets its create config from `container_config`, so a hardening fix lands
once. SECURITY.md's checklist explains each field."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Isolation:
    """What differs between dockguard's containers; everything else is the same for all."""

    memory_mb: int
    pids: int
    cpus: float = 1.0
    network: str = "none"
    file_size_mb: int = 256
    nofile: int = 1024
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[Mapping[str, object]] = ()
    # Paths hidden under an empty, read-only tmpfs: the image's VOLUMEs, which the engine would
    # otherwise turn into anonymous volumes on its disk (filled with image content, writable by
    # whoever owns that directory in the image, and not covered by any size limit).
    masked: Sequence[str] = ()
    runtime: str | None = None
    log_max_size: str = "1m"


def container_config(
    image: str,
    *,
    user: str,
    labels: Mapping[str, str],
    isolation: Isolation,
    cmd: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
) -> dict[str, Any]:
    """An Engine API `POST /containers/create` body: read-only root, no capabilities,
    no-new-privileges, no devices, private IPC and PID namespaces, memory = memory+swap, CPU,
    pids, file size, open files and core-dump limits, bounded logs, never restarted, and the
    `masked` paths empty and read-only."""
    config: dict[str, Any] = {
        "Image": image,
        "User": user,
        "Labels": dict(labels),
        "Env": list(env),
        "NetworkDisabled": isolation.network == "none",
        "AttachStdin": False,
        "OpenStdin": False,
        "Tty": False,
        "HostConfig": _host_config(isolation),
    }
    if cmd is not None:
        config["Cmd"] = list(cmd)
    if entrypoint is not None:
        config["Entrypoint"] = list(entrypoint)
    return config


def _host_config(isolation: Isolation) -> dict[str, Any]:
    """The body's `HostConfig`, where most of the isolation is. Private: a container gets it only
    with the rest of the body, through `container_config`."""
    memory = isolation.memory_mb * _MIB
    return {
        "NetworkMode": isolation.network,
        "ReadonlyRootfs": True,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "Privileged": False,
        "Memory": memory,
        "MemorySwap": memory,  # equal to Memory: no swap
        "NanoCpus": int(isolation.cpus * 1e9),
        "PidsLimit": isolation.pids,
        "Tmpfs": dict(isolation.tmpfs),
        "Mounts": _mounts(isolation),
        "LogConfig": {
            "Type": "json-file",
            "Config": {"max-size": isolation.log_max_size, "max-file": "1"},
        },
        "RestartPolicy": {"Name": "no"},
        "Ulimits": _ulimits(isolation),
        "IpcMode": "private",
        "PidMode": "",  # a private PID namespace
        "Devices": [],
        "AutoRemove": False,  # removal is cleanup's job, after anything is read back
        **({"Runtime": isolation.runtime} if isolation.runtime else {}),
    }


def _mounts(isolation: Isolation) -> list[dict[str, object]]:
    """The container's own mounts, then an empty read-only tmpfs on each `masked` path."""
    # A masked path the container already mounts something at (its /tmp, its /data) needs no
    # mask, and the engine refuses two mounts at one place.
    covered = {*isolation.tmpfs, *(str(mount.get("Target")) for mount in isolation.mounts)}
    return [
        *(dict(mount) for mount in isolation.mounts),
        *(_masked(path) for path in isolation.masked if path not in covered),
    ]


def _ulimits(isolation: Isolation) -> list[dict[str, object]]:
    """No core dumps, bounded open files, and no file written past the size cap."""
    file_size = isolation.file_size_mb * _MIB
    return [
        {"Name": "core", "Soft": 0, "Hard": 0},
        {"Name": "nofile", "Soft": isolation.nofile, "Hard": isolation.nofile},
        {"Name": "fsize", "Soft": file_size, "Hard": file_size},
    ]


def _masked(path: str) -> dict[str, object]:
    return {
        "Type": "tmpfs",
        "Target": path,
        "ReadOnly": True,
        "TmpfsOptions": {"SizeBytes": 4096, "Mode": 0o555},
    }


def image_volumes(image: Mapping[str, Any]) -> tuple[str, ...]:
    """The paths of an image's VOLUME instructions (from `GET /images/{id}/json`), normalized, for
    `Isolation.masked`."""
    config = image.get("Config")
    volumes = config.get("Volumes") if isinstance(config, Mapping) else None
    if not isinstance(volumes, Mapping):
        return ()
    return tuple(sorted({posixpath.normpath(str(path)) for path in volumes}))
