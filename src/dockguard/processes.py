"""Running a trusted helper program (trivy, iptables) as a subprocess: no stdin, output
captured, a hard timeout after which it is killed (with its whole process group when it was
started in a session of its own, so that nothing it started outlives it)."""

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
    own_session: bool = False,
) -> Finished:
    """Run `args` to its end. Raises OSError when it cannot start, TimeoutError (once it has
    been killed and reaped) when it runs longer than `timeout_s`."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=own_session,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            if own_session:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        await process.wait()
        raise
    code = process.returncode
    return Finished(returncode=-1 if code is None else code, stdout=out, stderr=err)
