"""The start-time check of DOCKGUARD_RUNTIME against what the engine's `docker info` lists: an
unknown runtime, and a gVisor runtime with too few DOCKGUARD_RUN_PIDS for gVisor's own threads,
stop the start; an engine that does not answer does not. (tests/e2e/test_gvisor.py runs the CLI
against the real engine.)"""

from __future__ import annotations

import logging
from typing import Any, cast

import aiodocker
import pytest

from dockguard.services import GVISOR_MIN_RUN_PIDS, RuntimeUnavailable, check_runtime, is_gvisor

RUNTIMES = {
    "runc": {"path": "runc"},
    "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]},
    "sandboxed": {"path": "/opt/gvisor/runsc-2024"},  # gVisor under another name
    "kata": {"path": "/usr/bin/kata-runtime"},
}


class _System:
    def __init__(self, info: dict[str, Any] | Exception) -> None:
        self._info = info

    async def info(self) -> dict[str, Any]:
        if isinstance(self._info, Exception):
            raise self._info
        return self._info


class FakeEngine:
    """Only `docker.system.info()`, which is all the check asks."""

    def __init__(self, info: dict[str, Any] | Exception) -> None:
        self.system = _System(info)


def engine(info: dict[str, Any] | Exception) -> aiodocker.Docker:
    return cast(aiodocker.Docker, FakeEngine(info))


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [("runc", False), ("runsc", True), ("sandboxed", True), ("kata", False)],
)
def test_gvisor_is_known_by_its_binary(runtime: str, expected: bool) -> None:
    assert is_gvisor(runtime, RUNTIMES[runtime]) is expected


def test_a_runtime_entry_without_a_path_is_known_by_its_name() -> None:
    assert is_gvisor("runsc", {}) is True
    assert is_gvisor("runc", None) is False


async def test_no_runtime_and_a_runc_default_take_any_pids_limit() -> None:
    await check_runtime(None, engine({"Runtimes": RUNTIMES, "DefaultRuntime": "runc"}), run_pids=8)


async def test_an_engine_whose_default_is_gvisor_needs_the_floor_too() -> None:
    docker = engine({"Runtimes": RUNTIMES, "DefaultRuntime": "runsc"})
    with pytest.raises(RuntimeUnavailable) as raised:
        await check_runtime(None, docker, run_pids=64)
    assert (
        "DOCKGUARD_RUN_PIDS=64 is too few under gVisor (the engine's default runtime, runsc)"
        in (str(raised.value))
    )
    await check_runtime(None, docker, run_pids=GVISOR_MIN_RUN_PIDS)
    await check_runtime("runc", docker, run_pids=8)  # runs asked under runc: no floor


async def test_runs_under_gvisor_with_builds_under_runc_are_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    docker = engine({"Runtimes": RUNTIMES, "DefaultRuntime": "runc"})
    with caplog.at_level(logging.WARNING, logger="dockguard"):
        await check_runtime("runsc", docker, run_pids=128)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "builds take the engine's default runtime, runc" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dockguard"):
        await check_runtime("runsc", docker, run_pids=128, warn=False)  # the CLI's pre-check
        gvisor_default = {"Runtimes": RUNTIMES, "DefaultRuntime": "runsc"}
        await check_runtime("runsc", engine(gvisor_default), run_pids=128)  # builds in gVisor
        await check_runtime(None, engine(gvisor_default), run_pids=128)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_an_unknown_runtime_is_refused_with_what_the_engine_has() -> None:
    with pytest.raises(RuntimeUnavailable) as raised:
        await check_runtime("nope", engine({"Runtimes": RUNTIMES}), run_pids=128)
    message = str(raised.value)
    assert "DOCKGUARD_RUNTIME=nope is not a runtime of the Docker Engine" in message
    assert "(it has: kata, runc, runsc, sandboxed)" in message


@pytest.mark.parametrize("runtime", ["runsc", "sandboxed"])
async def test_gvisor_needs_room_for_its_own_threads(runtime: str) -> None:
    docker = engine({"Runtimes": RUNTIMES})
    with pytest.raises(RuntimeUnavailable) as raised:
        await check_runtime(runtime, docker, run_pids=GVISOR_MIN_RUN_PIDS - 1)
    assert f"DOCKGUARD_RUN_PIDS={GVISOR_MIN_RUN_PIDS - 1} is too few under gVisor" in str(
        raised.value
    )
    assert f"set it to {GVISOR_MIN_RUN_PIDS} or more" in str(raised.value)
    await check_runtime(runtime, docker, run_pids=GVISOR_MIN_RUN_PIDS)  # the floor itself is fine


async def test_other_runtimes_take_any_pids_limit() -> None:
    await check_runtime("kata", engine({"Runtimes": RUNTIMES}), run_pids=8)
    await check_runtime("runc", engine({"Runtimes": RUNTIMES}), run_pids=8)


async def test_an_engine_that_does_not_answer_is_no_reason_to_refuse() -> None:
    await check_runtime("runsc", engine(aiodocker.DockerError(500, "down")), run_pids=8)
    await check_runtime("runsc", engine(TimeoutError()), run_pids=8)
