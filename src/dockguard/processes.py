"""Running a trusted helper program (trivy, iptables) as a subprocess: no stdin, output
captured, in a session of its own, and a hard timeout after which (or on cancellation) its
whole process group is killed, so that nothing it started outlives it (or holds its output
pipes open, which would keep asyncio waiting for it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run_process(
    args: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Finished:
    """Run `args` to its end. Raises TimeoutError (once it has been killed and reaped) when it
    runs longer than `timeout_s`, and another OSError when it cannot start. (TimeoutError is an
    OSError: callers catch it first.)"""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except BaseException:  # the timeout, or the job's cancellation: nothing may outlive it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.shield(process.wait())
        raise
    code = process.returncode
    return Finished(returncode=-1 if code is None else code, stdout=out, stderr=err)
