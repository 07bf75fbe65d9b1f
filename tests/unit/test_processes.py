"""Helper programs (trivy, iptables) run with a hard timeout: killed, with what they started."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from dockguard.errors import ErrorCode, JobFailure
from dockguard.processes import run_process
from dockguard.sandbox import egress
from dockguard.scanning import LocalTrivy


async def test_a_finished_program_gives_its_status_and_output() -> None:
    done = await run_process(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


async def test_environment_and_directory_are_only_what_is_given(tmp_path: Path) -> None:
    done = await run_process(
        ["/bin/sh", "-c", 'echo "$HOME:$SECRET"; pwd'],
        timeout_s=10,
        env={"HOME": "/nowhere"},
        cwd=str(tmp_path),
    )
    assert done.stdout.decode().splitlines() == ["/nowhere:", str(tmp_path)]


async def test_a_program_past_its_timeout_is_killed_with_its_process_group(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; sleep 30"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_process(["sh", "-c", script], timeout_s=0.5)
    assert time.monotonic() - started < 5
    child = int(pids.read_text())
    for _ in range(100):  # the orphan is reaped by init shortly after the kill
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        await asyncio.sleep(0.05)
    else:
        os.kill(child, 9)
        raise AssertionError("the program's child outlived the timeout")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (FileNotFoundError, IndexError):
        return "Z"


async def test_a_program_that_cannot_start_raises_oserror() -> None:
    with pytest.raises(OSError):
        await run_process(["/nonexistent/trivy"], timeout_s=1)


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tool"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_a_hung_scanner_is_a_scanner_timeout_not_a_start_failure(tmp_path: Path) -> None:
    trivy = LocalTrivy(_script(tmp_path, "exec sleep 30"), str(tmp_path))
    with pytest.raises(JobFailure) as failure:
        await trivy.run(["version"], timeout_s=0.3)
    assert failure.value.code == ErrorCode.SCANNER_FAILED
    assert failure.value.message == "the scanner did not finish within 0.3 s"


async def test_a_scanner_that_cannot_start_says_so(tmp_path: Path) -> None:
    trivy = LocalTrivy(str(tmp_path / "missing"), str(tmp_path))
    with pytest.raises(JobFailure, match="starting the scanner: No such file"):
        await trivy.run(["version"], timeout_s=5)


async def test_a_hung_firewall_tool_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(egress, "_IPTABLES_TIMEOUT_S", 0.3)
    with pytest.raises(egress.EgressUnavailable, match=r"did not answer within 0\.3 s"):
        await egress._iptables(_script(tmp_path, "sleep 30"), ["-S", "INPUT"])  # a child too


async def test_a_cancelled_program_is_killed_with_its_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    task = asyncio.create_task(
        run_process(["sh", "-c", f"echo $$ > {pids}; sleep 30"], timeout_s=60)
    )
    for _ in range(500):  # the shell has started once it has written its pid
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    shell = int(pids.read_text())
    assert not Path(f"/proc/{shell}").exists() or _state(shell) == "Z"
