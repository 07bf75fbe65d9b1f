"""`dockguard serve` whose API cannot start (here: its Redis refuses connections), black-box: a
real process, one or `--workers 2`. It exits 3, and its last line says why; uvicorn's
supervisor alone would have stopped with 0, as after a signal."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import _free_socket

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("processes", [1, 2])
async def test_an_api_that_cannot_start_exits_3_and_says_why(processes: int) -> None:
    with _free_socket() as sock:
        closed = sock.getsockname()[1]  # nothing listens on it once the socket is closed
    env = {
        **os.environ,
        "DOCKGUARD_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "DOCKGUARD_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dockguard", "serve", "--no-worker", "--workers", str(processes),
        "--port", "0", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            _, errors = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = errors.decode().splitlines()
    assert proc.returncode == 3, lines[-5:]
    assert lines[-1] == (
        "dockguard: the API did not start: ConnectionError: "
        f"Error 111 connecting to 127.0.0.1:{closed}. Connection refused."
    )
    # Its report went with it (another serve running may have a directory of its own).
    reports = Path(tempfile.gettempdir()).glob("dockguard-startup-*/failure")
    assert not [r for r in reports if f"127.0.0.1:{closed}." in r.read_text()]
