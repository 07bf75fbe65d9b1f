"""`dockguard serve` that cannot start, black-box: a real process, one or `--workers 2`.
- Its API cannot start (its Redis refuses connections): it exits 3, and its last line says why
  (uvicorn's supervisor alone would have stopped with 0, as after a signal).
- A port of its is taken (the API's, the metrics port): it is refused before anything starts,
  exit 2, naming the setting."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import _free_socket

ROOT = Path(__file__).resolve().parents[2]


async def serve_ended(processes: int, port: int, settings: dict[str, str]) -> tuple[int, list[str]]:
    """`dockguard serve --no-worker --workers <processes> --port <port>` run to its end: its
    exit status and its stderr lines."""
    env = {**os.environ, "DOCKGUARD_LOG_FORMAT": "json", **settings}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dockguard", "serve", "--no-worker", "--workers", str(processes),
        "--port", str(port), env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            _, errors = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, errors.decode().splitlines()


@pytest.mark.parametrize("processes", [1, 2])
async def test_an_api_that_cannot_start_exits_3_and_says_why(processes: int) -> None:
    with _free_socket() as sock:
        closed = sock.getsockname()[1]  # nothing listens on it once the socket is closed
    redis_url = f"redis://127.0.0.1:{closed}/0"
    code, lines = await serve_ended(processes, 0, {"DOCKGUARD_REDIS_URL": redis_url})
    assert code == 3, lines[-5:]
    assert lines[-1] == (
        "dockguard: the API did not start: ConnectionError: "
        f"Error 111 connecting to 127.0.0.1:{closed}. Connection refused."
    )
    # Its report went with it (another serve running may have a directory of its own).
    reports = Path(tempfile.gettempdir()).glob("dockguard-startup-*/failure")
    assert not [r for r in reports if f"127.0.0.1:{closed}." in r.read_text()]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("which", ["DOCKGUARD_PORT", "DOCKGUARD_API_METRICS_PORT"])
async def test_a_port_in_use_is_refused_at_once(
    processes: int, which: str, redis_port: int
) -> None:
    settings = {"DOCKGUARD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    with _free_socket() as held:
        held.listen()
        port = held.getsockname()[1]
        if which == "DOCKGUARD_PORT":
            code, lines = await serve_ended(processes, port, settings)
        else:
            settings["DOCKGUARD_API_METRICS_PORT"] = str(port)
            code, lines = await serve_ended(processes, 0, settings)
    setting = "DOCKGUARD_PORT or --port" if which == "DOCKGUARD_PORT" else which
    assert (code, lines) == (
        2,
        [
            f"dockguard: cannot listen on 127.0.0.1:{port} (Address already in use); set "
            f"{setting} to a free port"
        ],
    )
