"""Helper programs (trivy, iptables) run with a hard timeout: killed, with what they started."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from dockguard.processes import run_process


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
        await run_process(["sh", "-c", script], timeout_s=0.5, own_session=True)
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
